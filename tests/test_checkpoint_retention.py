"""TRAIN.KEEP_CHECKPOINTS with main.py: 0 (the default) keeps every checkpoint, N keeps the
newest N; a process SIGKILLed between writing a checkpoint and deleting older ones loses
nothing, and auto-resume continues from the newest."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_main
from main import cli
from test_main_modes import CONFIG, opts_for
from utils.checkpoint import checkpoint_dir, load_checkpoint

pytestmark = pytest.mark.usefixtures("restore_root_logging")


def ckpts(out):
    return sorted(os.listdir(checkpoint_dir(out)))


def epochs_logged(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f]


def test_default_keeps_all_and_n_keeps_the_newest(image_tree, tmp_path):
    out_all, out_two = str(tmp_path / "all"), str(tmp_path / "two")
    assert run_main(cli, ["--config", CONFIG, "--output", out_all, *opts_for(image_tree, "TRAIN.EPOCHS", "4")])[0] == 0
    assert ckpts(out_all) == [f"ckpt_epoch_{e}.pth" for e in range(4)]
    assert run_main(cli, ["--config", CONFIG, "--output", out_two,
                          *opts_for(image_tree, "TRAIN.EPOCHS", "4", "TRAIN.KEEP_CHECKPOINTS", "2")])[0] == 0
    assert ckpts(out_two) == ["ckpt_epoch_2.pth", "ckpt_epoch_3.pth"]
    # The kept ones are the same files an unpruned run writes.
    for epoch in (2, 3):
        kept, full = (load_checkpoint(os.path.join(checkpoint_dir(o), f"ckpt_epoch_{epoch}.pth"))
                      for o in (out_two, out_all))
        assert kept["epoch"] == full["epoch"] == epoch
        assert kept["lr_scheduler"] == full["lr_scheduler"]


# Runs main.py's command with the deletion of an old checkpoint replaced by a SIGKILL of
# the process itself: the kill lands after the new checkpoint is written and checked.
KILLED_AT_DELETE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import utils.checkpoint
utils.checkpoint._delete = lambda path: os.kill(os.getpid(), signal.SIGKILL)
from main import cli
sys.exit(cli({args!r}))
"""


def test_killed_between_write_and_delete_loses_nothing_and_resumes(image_tree, tmp_path):
    out = str(tmp_path / "killed")
    args = ["--config", CONFIG, "--output", out, *opts_for(image_tree, "TRAIN.EPOCHS", "3",
                                                          "TRAIN.KEEP_CHECKPOINTS", "1")]
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_DELETE.format(root=ROOT, args=args)], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-4000:]
    # Killed at the first deletion, after epoch 1: its checkpoint is complete and loads,
    # and epoch 0's, which it was about to delete, is still there.
    assert ckpts(out) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert load_checkpoint(os.path.join(checkpoint_dir(out), "ckpt_epoch_1.pth"))["epoch"] == 1
    assert epochs_logged(out) == [0, 1]
    # Auto-resume continues from the newest, and the next save deletes what was left.
    assert run_main(cli, args)[0] == 0
    with open(os.path.join(out, "log_rank0.txt")) as f:
        log = f.read()
    assert f"resumed from {os.path.join(checkpoint_dir(out), 'ckpt_epoch_1.pth')} (epoch 1)" in log
    assert ckpts(out) == ["ckpt_epoch_2.pth"]
    assert epochs_logged(out) == [0, 1, 2]
    final = torch.load(os.path.join(checkpoint_dir(out), "ckpt_epoch_2.pth"), weights_only=True)
    assert final["epoch"] == 2 and final["lr_scheduler"]["num_updates"] == 3 * 7
