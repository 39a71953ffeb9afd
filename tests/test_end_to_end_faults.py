"""Faults with real processes (torchrun, 2 CPU processes, the tiny tree of
test_end_to_end.py): a worker killed under an elastic torchrun, two runs on one output
folder, a write error at a checkpoint, a loss that diverges."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT
from test_end_to_end import (EPOCHS, assert_same_embeddings, data, history, kill_tree, metrics,  # noqa: F401
                             produced, run, torchrun, worker_pid)

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def produce_cmd(out, opts, *launcher_flags, extra=()):
    cmd = torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts", *opts,
                   *extra)
    return cmd[:3] + list(launcher_flags) + cmd[3:]


def wait_for(condition, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_same_history(out, reference):
    for epoch in range(EPOCHS):
        # Same kernels, same machine, same data order: bit-for-bit up to the last ulp.
        np.testing.assert_allclose(history(out, epoch), history(reference, epoch), rtol=0, atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(history(out, epoch, "correct"), history(reference, epoch, "correct"))
    assert [r["epoch"] for r in metrics(out)] == list(range(EPOCHS))
    assert not [n for n in os.listdir(os.path.join(out, "pred_prob_history")) if n.endswith(".tmp") or ".part" in n]
    assert_same_embeddings(out, reference)


def test_elastic_restart_after_a_killed_worker_resumes_to_the_same_history(data, produced):
    """torchrun --max-restarts 1; rank 1 alone is SIGKILLed mid-epoch: torchrun restarts
    the group, which resumes from the last checkpoint (its own lock is gone with rank 0)."""
    root, opts = data
    out = str(root / "elastic")
    proc = subprocess.Popen(produce_cmd(out, opts, "--max-restarts", "1"), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(out, "ckpts", "ckpt_epoch_1.pth")), proc, "epoch 1's checkpoint")
        victim = worker_pid(proc.pid, 1)
        assert victim is not None, "rank 1's process not found under torchrun"
        os.kill(victim, signal.SIGKILL)  # epoch 2 has begun or is about to
        assert not os.path.exists(os.path.join(out, "pred_prob_history", f"prob_{EPOCHS - 1}.npy"))
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, output[-4000:]
    with open(os.path.join(out, "log_rank0.txt")) as f:
        log = f.read()
    assert "ckpt_epoch_1.pth (epoch 1)" in log, "the restarted group did not resume from epoch 1's checkpoint"
    assert_same_history(out, produced)


def test_second_run_on_a_live_output_is_refused_and_a_stale_lock_is_not(data):
    root, opts = data
    out = str(root / "shared_output")
    first = subprocess.Popen(produce_cmd(out, opts, extra=("TRAIN.EPOCHS", "100")), cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        log = os.path.join(out, "log_rank0.txt")
        wait_for(lambda: os.path.exists(os.path.join(out, "metrics.jsonl")), first, "the first epoch")
        holder = worker_pid(first.pid, 0)
        second = subprocess.run([sys.executable, "main.py", "--config", "configs/demo-mnist.yaml", "--output", out,
                                 "--opts", *opts], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"main.py: error: output folder {out} is in use by another run (pid {holder} "
                                        f"on host")
        with open(log) as f:
            assert "train on 1 process" not in f.read(), "the refused run wrote into the folder"
        assert first.poll() is None, "the refusal disturbed the live run"
    finally:
        kill_tree(first)  # SIGKILL, no clean-up: the lock file stays behind
    # The killed run's lock file is still there, its lock is not: a new run proceeds.
    assert os.path.exists(os.path.join(out, ".run.lock"))
    run([sys.executable, "main.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--throughput",
         "--opts", *opts])


def test_checkpoint_write_error_stops_the_run_and_resume_continues(data, produced):
    """A directory squats on ckpt_epoch_1.pth, so renaming the finished checkpoint onto it
    fails (EISDIR), as a full disk or a failing device would fail the write."""
    root, opts = data
    out = str(root / "write_error")
    blocker = os.path.join(out, "ckpts", "ckpt_epoch_1.pth")
    os.makedirs(blocker)
    failed = subprocess.run(produce_cmd(out, opts), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0
    assert f"cannot write {blocker}" in failed.stdout + failed.stderr
    # Epochs 0 and 1 were recorded before the checkpoint: intact and readable.
    for epoch in (0, 1):
        np.testing.assert_allclose(history(out, epoch), history(produced, epoch), rtol=0, atol=1e-6, equal_nan=True)
    assert not os.path.exists(os.path.join(out, "pred_prob_history", "prob_2.npy"))
    assert [r["epoch"] for r in metrics(out)] == [0, 1]
    assert sorted(os.listdir(os.path.join(out, "ckpts"))) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    os.rmdir(blocker)  # the disk has room again
    run(produce_cmd(out, opts))  # auto-resume from epoch 0's checkpoint
    assert_same_history(out, produced)


def test_diverged_training_stops_naming_epoch_and_step_and_records_nothing(data):
    root, opts = data
    out = str(root / "diverged")
    # SGD at lr 1e38: the first update sends the weights past float32's range.
    proc = subprocess.run(produce_cmd(out, opts, extra=("TRAIN.BASE_LR", "1e38", "TRAIN.WARMUP_EPOCHS", "0")),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "training diverged: the loss is" in text and "at epoch 0, step 2 of 4" in text, text[-4000:]
    assert not os.path.exists(os.path.join(out, "pred_prob_history", "prob_0.npy"))
    assert not os.path.exists(os.path.join(out, "ckpts"))
    assert not os.path.exists(os.path.join(out, "metrics.jsonl")) or metrics(out) == []
