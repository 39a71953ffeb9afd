"""Docs from one source: `make help` lists every Makefile target; get_coreset.py's docstring
says how ties are broken as the code does; the README's list of keys that may change on a
resume is the code's; the README's demo figures are those of the committed run record
(docs/demo_record.json, written by scripts/demo.py) and its run-time figures say "about"."""
import json
import os
import re
import shutil
import subprocess

import pytest

import get_coreset
from conftest import ROOT
from utils.run_identity import MAY_CHANGE

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def makefile_targets():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return [m.group(1) for line in f if (m := re.match(r"^([A-Za-z][\w-]*):(?!=)", line))]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_lists_every_target():
    targets = makefile_targets()
    assert {"demo", "test", "help", "clean"} <= set(targets)
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = [line.split()[1] for line in shown.splitlines() if line.strip().startswith("make ")]
    assert sorted(listed) == sorted(targets), shown
    assert all(len(line.split()) > 2 for line in shown.splitlines()), shown  # each with its description


def test_get_coreset_docstring_says_ties_are_drawn_from_the_seed():
    from dynunc.scoring import cli  # get_coreset.py's implementation, documented there

    doc = " ".join(cli.__doc__.split())
    assert "lower line index" not in doc
    assert "tied at the cut are drawn at random from --seed" in doc


def test_readme_lists_the_keys_that_may_change_on_a_resume():
    start = README.index("**A run folder belongs to one run.**")
    paragraph = README[start:README.index("\n\n", start)]
    listed = set(re.findall(r"`([A-Z][A-Z_.]+)`", paragraph.split("The keys that may\nchange on a resume")[1]))
    assert listed - {"MAY_CHANGE"} == set(MAY_CHANGE)


RECORD = os.path.join(ROOT, "docs", "demo_record.json")


def test_readme_demo_figures_are_the_committed_records():
    with open(RECORD, encoding="utf-8") as f:
        record = json.load(f)
    table = README[README.index("| training data | images | top-1 (%) | top-5 (%) |"):]
    rows = [line for line in table.split("\n\n")[0].splitlines()[2:]]
    assert len(rows) == len(record["table"])
    for line, row in zip(rows, record["table"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == [row["training data"], str(row["images"]), f"{row['top1']:.2f}", f"{row['top5']:.2f}"]
    names = {"forgetting": "forgetting", "el2n": "EL2N", "aum": "AUM", "variability": "variability",
             "confidence": "confidence", "random": "random"}
    shares = ", ".join(f"{names[m]} {v:.0%}" for m, v in record["shared_with_dynunc"].items())
    assert shares in " ".join(README.split())
    assert f"produce-mode epoch time / plain epoch time {record['produce_over_plain_epoch_time']:.2f}" in \
        " ".join(README.split())
    ties = record["forgetting_ties"]
    whole = ties["lower_index_rule_whole_classes"]
    text = " ".join(README.split())
    assert (f"in the demo {ties['zero_scores']:,} of {ties['lines']:,} forgetting scores were 0" in text)
    assert (f"classes {whole[0]}-{whole[-1]} whole and class {ties['lower_index_rule_least_kept_class']} at "
            f"{100 * ties['lower_index_rule_least_kept_share']:.1f}%" in text)


def test_run_time_figures_in_the_readme_say_about():
    text = " ".join(README.split())
    for stale in ("~6 min", "9.0 min", "788 ran", "~2-4 min", "3,128 of 4,000"):
        assert stale not in text
    assert "make test # the tests (about 10 min" in text
