"""Faults in one process: a disk that fills up mid-write, a loss that diverges, an output
folder held by another live process. (The same faults with torchrun are in
test_end_to_end_faults.py.)"""
import errno
import json
import os
import socket
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from engine import StepContext, TrainingDiverged, train_one_epoch
from utils.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dynunc.io import atomic_save_npy, atomic_write_text
from dynunc.metrics_log import MetricsLog
from utils.output_lock import LOCK_NAME, OutputInUseError, OutputLock, lock_output


# -----------------------------------------------------------------------------
# Disk full
# -----------------------------------------------------------------------------
class _FullDiskFile:
    """A file on a disk with `room` bytes left: the write that crosses it stores what
    fits and fails with ENOSPC, as write(2) does."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def disk_full(monkeypatch):
    """disk_full(room): from now on, every file opened by dynunc.io.atomic_open can take
    only `room` more bytes."""
    real_fdopen = os.fdopen

    def fill(room: int):
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k), room))

    return fill


def tiny_state(epoch: int) -> dict:
    return {"model": {"w": torch.full((1000,), float(epoch))}, "epoch": epoch, "config": "MODEL: {}\n"}


def test_checkpoint_on_a_full_disk_names_the_file_and_keeps_earlier_ones(tmp_path, disk_full):
    ckpts = tmp_path / "ckpts"
    save_checkpoint(str(ckpts / "ckpt_epoch_0.pth"), tiny_state(0))
    save_checkpoint(str(ckpts / "ckpt_epoch_1.pth"), tiny_state(1))
    disk_full(1500)  # the state is ~5 kB: the write fails half-way
    target = str(ckpts / "ckpt_epoch_1.pth")
    with pytest.raises(OSError) as info:
        save_checkpoint(target, tiny_state(2))
    assert info.value.errno == errno.ENOSPC and target in str(info.value)
    with pytest.raises(OSError, match="ckpt_epoch_2.pth"):
        save_checkpoint(str(ckpts / "ckpt_epoch_2.pth"), tiny_state(2))
    # No temporary files, the overwritten checkpoint intact, resume picks epoch 1.
    assert sorted(os.listdir(ckpts)) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert load_checkpoint(target)["epoch"] == 1
    path, state = latest_checkpoint(str(tmp_path))
    assert path == target and torch.equal(state["model"]["w"], torch.full((1000,), 1.0))


def test_history_file_on_a_full_disk_names_the_file_and_keeps_earlier_epochs(tmp_path, disk_full):
    first = tmp_path / "prob_0.npy"
    atomic_save_npy(first, np.arange(100, dtype=np.float32))
    disk_full(200)
    with pytest.raises(OSError, match="prob_1.npy") as info:
        atomic_save_npy(tmp_path / "prob_1.npy", np.arange(1000, dtype=np.float32))
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["prob_0.npy"]
    np.testing.assert_array_equal(np.load(first), np.arange(100, dtype=np.float32))


def test_metrics_log_on_a_full_disk_keeps_every_line(tmp_path, disk_full):
    log = MetricsLog(str(tmp_path))
    for epoch in range(3):
        log.append({"epoch": epoch, "acc1": 10.0 * epoch})
    before = (tmp_path / "metrics.jsonl").read_text()
    disk_full(len(before) + 5)  # room for the old lines and part of the new one
    with pytest.raises(OSError, match="metrics.jsonl"):
        log.append({"epoch": 3, "acc1": 30.0})
    assert (tmp_path / "metrics.jsonl").read_text() == before  # no torn last line
    assert [r["epoch"] for r in log.truncate_from(3)] == [0, 1, 2]


def test_torn_metrics_line_is_an_error_naming_the_line(tmp_path):
    atomic_write_text(tmp_path / "metrics.jsonl", json.dumps({"epoch": 0}) + "\n" + '{"epoch": 1, "ac')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        MetricsLog(str(tmp_path)).truncate_from(1)


# -----------------------------------------------------------------------------
# Diverged training
# -----------------------------------------------------------------------------
class _ConstantScheduler:
    def step(self) -> None:
        pass


class _Loader:
    """`steps` batches whose loss is finite except at the steps in `bad` ({step: the
    value the inputs are multiplied by: NaN or inf})."""

    def __init__(self, bad, steps=6):
        self.bad, self.steps = bad, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        for step in range(self.steps):
            images = torch.ones(2, 3) * self.bad.get(step, 1.0)
            yield {"images": images, "labels": torch.zeros(2, dtype=torch.long)}


def _ctx(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return StepContext(optimizer, _ConstantScheduler(), nn.CrossEntropyLoss(), None, nullcontext)


def _model():
    """logits (-x0, x0) with label 0: a huge finite x0 gives a loss of 2 * x0, infinite in
    float32; a NaN x0 a NaN loss."""
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]]))
    return model


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (3e38, "infinite")])
def test_non_finite_loss_stops_the_epoch_naming_epoch_and_step(value, kind):
    model = _model()
    # Bad at step index 2 (the 3rd step); print_freq 4: detected at the read-back after step 4.
    with pytest.raises(TrainingDiverged, match=rf"loss is {kind} at epoch 5, step 3 of 6"):
        train_one_epoch(model, _Loader({2: value}), _ctx(model), 5, torch.device("cpu"), print_freq=4)


def test_finite_losses_do_not_stop():
    model = _model()
    stats = train_one_epoch(model, _Loader({}), _ctx(model), 0, torch.device("cpu"), print_freq=4)
    assert np.isfinite(stats["train_loss"])


def test_divergence_at_the_last_step_is_caught_before_the_epoch_returns():
    model = _model()
    with pytest.raises(TrainingDiverged, match="step 6 of 6"):
        train_one_epoch(model, _Loader({5: float("nan")}), _ctx(model), 0, torch.device("cpu"), print_freq=100)


# -----------------------------------------------------------------------------
# One live run per output folder
# -----------------------------------------------------------------------------
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from utils.output_lock import OutputLock
OutputLock({out!r}).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _hold_lock(out):
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, out=str(out))], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_folder_is_refused_naming_folder_and_holder(tmp_path):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputInUseError) as info:
            lock_output(str(out), rank=0)
        message = str(info.value)
        assert str(out) in message and f"pid {holder.pid}" in message and socket.gethostname() in message
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed (SIGKILL): its lock went with it, the stale file does not block.
    assert (out / LOCK_NAME).exists()
    lock = lock_output(str(out), rank=0)
    assert f"pid {os.getpid()}" in (out / LOCK_NAME).read_text()
    lock.release()


def test_other_ranks_do_not_touch_the_lock(tmp_path):
    lock = lock_output(str(tmp_path / "out"), rank=1)  # single process: nothing to learn from rank 0
    assert not (tmp_path / "out").exists()
    lock.release()


def test_release_frees_the_folder_for_another_process(tmp_path):
    lock = OutputLock(str(tmp_path))
    lock.acquire()
    lock.release()
    holder = _hold_lock(tmp_path)  # would fail to print "locked" if we still held it
    holder.kill()
    holder.wait()
