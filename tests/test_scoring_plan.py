"""dynunc/scoring/plan.py: the flags get_coreset.py and report.py share (both spellings,
the --window rule, method flags given to methods not asked for), and a method with a
flag of its own added as one row of the method table, through both commands."""
import json
import os

import numpy as np
import pytest

import get_coreset
from conftest import make_image_tree, run_main, write_full_history
from dynunc.report import page as report
from dynunc.scoring.methods import METHODS, Method, MethodFlag, SeenMean

N = 40


@pytest.fixture
def s(tmp_path):
    data = tmp_path / "data"
    make_image_tree(str(data), num_classes=4, per_class=N // 4, size=(12, 10))
    listing = data / "file_list.txt"
    rng = np.random.default_rng(2)
    short = write_full_history(listing, tmp_path / "short", rng.random(N), 8, rng)
    long = write_full_history(listing, tmp_path / "long", rng.random(N), 11, rng)
    return dict(tmp=tmp_path, list=listing, short=tmp_path / "short", long=tmp_path / "long", long_hdir=long,
                short_hdir=short)


def coreset(s, run, output, *extra, spelling="--dataset_file_list"):
    return run_main(get_coreset.main, ["--input", run, spelling, s["list"], "--output", output, *extra])


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_window_defaults_to_the_papers_10_from_11_epochs(s):
    code, _, err = coreset(s, s["long"], s["tmp"] / "default.txt", "--fraction", "0.5")
    assert code == 0, err
    assert "(dynunc; window 10)" in err
    code, _, err = coreset(s, s["long"], s["tmp"] / "ten.txt", "--fraction", "0.5", "--window", "10")
    assert code == 0, err
    for suffix in ("", ".scores.npy"):
        assert read(f"{s['tmp']}/default.txt{suffix}") == read(f"{s['tmp']}/ten.txt{suffix}")


def test_window_refused_not_dropped_below_11_epochs(s):
    for cli, extra in ((get_coreset.main, ["--output", s["tmp"] / "c.txt", "--fraction", "0.5"]),
                       (report.main, ["--output", s["tmp"] / "report"])):
        code, out, err = run_main(cli, ["--input", s["short"], "--dataset_file_list", s["list"], *extra])
        assert code == 2, (out, err)
        assert f"--window is required by method dynunc: {s['short_hdir']} holds 8 epochs, too few for the " \
               "paper's window of 10" in err and "2 <= J <= 7" in err
    assert sorted(os.listdir(s["tmp"])) == ["data", "long", "short"]
    # with --include-last-window the 10-epoch window ending at the last epoch counts
    code, _, err = coreset(s, s["short"], s["tmp"] / "c.txt", "--fraction", "0.5", "--include-last-window")
    assert code == 2 and "2 <= J <= 8" in err


def test_window_help_gives_the_papers_value():
    text = get_coreset.build_parser().format_help() + report.build_parser().format_help()
    assert text.count("the paper's: 10") == 2


def test_both_spellings(s):
    for spelling in ("--dataset_file_list", "--dataset-file-list"):
        code, _, err = coreset(s, s["long"], s["tmp"] / f"{spelling}.txt", "--fraction", "0.5", spelling=spelling)
        assert code == 0, err
    assert read(s["tmp"] / "--dataset_file_list.txt") == read(s["tmp"] / "--dataset-file-list.txt")
    for spelling in ("--data_root", "--data-root"):
        out = s["tmp"] / spelling
        code, _, err = run_main(report.main, ["--input", s["long"], "--dataset-file-list", s["list"], "--output", out,
                                              "--method", "random", spelling, s["list"].parent])
        assert code == 0, err
    assert read(s["tmp"] / "--data_root" / "report.json") == read(s["tmp"] / "--data-root" / "report.json")


def test_flag_of_a_method_not_asked_for_is_ignored_with_a_warning(s):
    code, _, err = coreset(s, s["short"], s["tmp"] / "a.txt", "--method", "aum", "--fraction", "0.5",
                           "--window", "1", "--include-last-window")
    assert code == 0, err
    assert "--window is used by method dynunc only; ignored" in err
    assert "--include-last-window is used by method dynunc only; ignored" in err


# -----------------------------------------------------------------------------
# A new method with a flag of its own: one row (here added by the test), nothing else.
# -----------------------------------------------------------------------------
def _one_epoch(value, given, num_epochs, where):
    if value is None or not 0 <= value < num_epochs:
        raise ValueError(f"--toy-epoch must be one of the {num_epochs} recorded epochs in {where}, got {value}")
    return value


TOY = Method(("prob",), "p(true label) in the epoch --toy-epoch", "a toy for the tests", "p(true label) (0 to 1)",
             make=lambda n, p, k: SeenMean(n, "prob", [p.toy_epoch]), epochs=lambda p, k: [p.toy_epoch],
             flags=(MethodFlag("--toy-epoch", "toy_epoch", "toy: the epoch scored", _one_epoch, {"type": int}),))


def test_a_new_method_with_its_own_flag_is_one_row(s, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", TOY)
    out = s["tmp"] / "toy.txt"
    code, _, err = coreset(s, s["long"], out, "--method", "toy", "--toy-epoch", "4", "--fraction", "0.5")
    assert code == 0, err
    assert "(toy; toy-epoch 4)" in err
    expected = np.load(os.path.join(s["long_hdir"], "prob_4.npy")).astype(np.float64)
    np.testing.assert_array_equal(np.load(str(out) + ".scores.npy"), expected)

    code, _, err = coreset(s, s["long"], out, "--method", "toy", "--toy-epoch", "11", "--fraction", "0.5")
    assert code == 2 and f"--toy-epoch must be one of the 11 recorded epochs in {s['long_hdir']}, got 11" in err

    code, _, err = run_main(report.main, ["--input", s["long"], "--dataset_file_list", s["list"],
                                          "--output", s["tmp"] / "report", "--method", "toy", "random",
                                          "--toy-epoch", "4"])
    assert code == 0, err
    numbers = json.loads((s["tmp"] / "report" / "report.json").read_text())
    assert numbers["methods"] == ["toy", "random"] and numbers["params"] == {"toy_epoch": 4, "seed": 0}
