"""PRODUCE.STOP_WHEN_STABLE that cannot stop before the last epoch is refused at start (the
demo config's TRACK_WINDOW 10 and PATIENCE 3 in 12 epochs); the README's CPU-sized example
can stop; a history without embeddings because its run stopped early says so instead of
blaming PRODUCE.EMBED_DIM."""
import json
import os
import re

import numpy as np
import pytest

from conftest import ROOT, run_main
from dynunc.history import HistoryError, STOPPED_KEY, load_embeddings, write_epoch
from dynunc.training.stability import check_stop_fits, earliest_stop
from main import cli
from utils.config import load_config

pytestmark = pytest.mark.usefixtures("restore_root_logging")
CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
STOP = ["PRODUCE.STOP_WHEN_STABLE.ENABLE", "True"]


@pytest.mark.parametrize("opts, first, fits", [
    ([], 13, False),  # the demo: window 10 + delta 1 + patience 3 - 1
    (["PRODUCE.TRACK_WINDOW", "8"], 11, False),  # stops after the last epoch at the earliest: saves nothing
    (["PRODUCE.TRACK_WINDOW", "7"], 10, True),
    (["PRODUCE.TRACK_WINDOW", "4", "PRODUCE.STOP_WHEN_STABLE.PATIENCE", "2"], 6, True),
    (["TRAIN.EPOCHS", "3"], 5, False),  # the window is cut to 2 epochs
    (["PRODUCE.TRACK_FRACTIONS", "[]", "PRODUCE.STOP_WHEN_STABLE.FRACTION", "0.5"], None, False),
])
def test_earliest_stop_and_whether_it_fits(opts, first, fits):
    config = load_config(CONFIG, STOP + opts)
    assert earliest_stop(config.PRODUCE, config.TRAIN.EPOCHS) == first
    assert (check_stop_fits(config) == []) == fits


def test_a_rule_that_cannot_stop_is_refused_at_start_in_one_line(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_main(lambda a: cli(a, produce=True),
                                    ["--config", CONFIG, "--output", out, "--opts", *STOP])
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stdout + stderr
    assert stderr == (
        "main_and_produce.py: error: PRODUCE.STOP_WHEN_STABLE cannot stop this run before its last epoch: the window "
        "10 (PRODUCE.TRACK_WINDOW 10), TRACK_DELTA 1 and PATIENCE 3 allow a stop after epoch 13 at the earliest, and "
        "TRAIN.EPOCHS 12 ends after epoch 11; set PRODUCE.TRACK_WINDOW 7 (and get_coreset.py --window 7), or "
        "TRAIN.EPOCHS 15 or more, or a lower PATIENCE\n")
    assert not out.exists()


def test_main_py_does_not_read_the_rule(tmp_path):
    """main.py ignores PRODUCE.*: the same settings are not its problem (it fails later, on the empty data paths)."""
    code, _, stderr = run_main(cli, ["--config", CONFIG, "--output", tmp_path / "out", "--opts", *STOP])
    assert code == 2 and "STOP_WHEN_STABLE" not in stderr


def test_the_readme_example_can_stop():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = [c for c in re.findall(r"```\n(.*?)```", readme, re.S)
                if "PRODUCE.STOP_WHEN_STABLE.ENABLE True" in c and "main_and_produce.py" in c]
    assert commands, "README: no example command with PRODUCE.STOP_WHEN_STABLE.ENABLE True"
    command = [c for c in commands[0].replace("\\\n", " ").splitlines() if "main_and_produce.py" in c][0]
    words = command.split()
    given = words[words.index("--opts") + 1:]
    assert len(given) % 2 == 0, given
    opts = [w for k, v in zip(given[0::2], given[1::2]) if not k.startswith("DATA.DATA_PATH") for w in (k, v)]
    config = load_config(os.path.join(ROOT, words[words.index("--config") + 1]), opts)
    assert config.PRODUCE.STOP_WHEN_STABLE.ENABLE and check_stop_fits(config) == []


def test_missing_embeddings_of_a_run_that_stopped_early_are_not_blamed_on_embed_dim(tmp_path):
    hdir = tmp_path / "run" / "pred_prob_history"
    for epoch in range(3):
        write_epoch(str(hdir), epoch, np.full(4, 0.5, dtype=np.float32), np.ones(4, dtype=np.int8))
    records = [{"epoch": 0}, {"epoch": 1}, {"epoch": 2, STOPPED_KEY: True}]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(HistoryError) as e:
        load_embeddings(str(hdir), 4)
    assert "stopped when stable after epoch 2, before the epochs PRODUCE.EMBED_EPOCHS asks for" in str(e.value)
    assert "PRODUCE.EMBED_DIM" not in str(e.value)
    os.remove(tmp_path / "run" / "metrics.jsonl")  # not stopped: the config keys are named
    with pytest.raises(HistoryError, match=r"PRODUCE.EMBED_DIM > 0"):
        load_embeddings(str(hdir), 4)
