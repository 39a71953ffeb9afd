"""Interrupting get_coreset.py (SIGINT, SIGKILL) at any point leaves the old outputs as
they were, and the next run leaves no temporary file behind. Real subprocesses.

Deterministic kill points: an epoch file replaced by a named pipe blocks the child in
the middle of reading the history until the test lets it go; the write phase is caught
by watching for the temporary files it creates."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from dynunc.io import AtomicGroup, atomic_group, remove_stale_temporaries

METHODS = ["dynunc", "confidence", "variability", "random"]


def write_history(hdir, n, k, seed=0):
    os.makedirs(hdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for epoch in range(k):
        np.save(os.path.join(hdir, f"prob_{epoch}.npy"), rng.random(n, dtype=np.float32))


def write_list(path, n):
    with open(path, "w") as f:
        f.writelines(f"/n{i % 10:08d}/img_{i:07d}.JPEG {i % 10}\n" for i in range(n))


def command(tmp, fraction):
    return [sys.executable, os.path.join(ROOT, "get_coreset.py"), "--input", str(tmp / "hist"),
            "--dataset_file_list", str(tmp / "train.txt"), "--method", *METHODS, "--window", "2",
            "--fraction", fraction, "--output", str(tmp / "out" / "{method}.txt")]


def run_ok(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def setup_run(tmp, n, k):
    write_history(str(tmp / "hist"), n, k)
    write_list(tmp / "train.txt", n)
    run_ok(command(tmp, "0.75"))  # the previous outputs
    old = snapshot(tmp / "out")
    assert len(old) == 2 * len(METHODS)
    return old


def open_fifo_writer(path, proc, timeout=120.0):
    """Open the pipe for writing once the child has opened it for reading (then the child
    is blocked reading that epoch)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
    raise AssertionError("the child never reached the blocked epoch")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("blocked_epoch", [0, 2])
def test_interrupted_while_reading_the_history(tmp_path, sig, blocked_epoch):
    old = setup_run(tmp_path, 2000, 4)
    fifo = tmp_path / "hist" / f"prob_{blocked_epoch}.npy"
    saved = fifo.read_bytes()
    os.remove(fifo)
    os.mkfifo(fifo)
    proc = subprocess.Popen(command(tmp_path, "0.5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fd = open_fifo_writer(str(fifo), proc)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted; no output was replaced" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert snapshot(tmp_path / "out") == old
    os.remove(fifo)
    fifo.write_bytes(saved)
    run_ok(command(tmp_path, "0.5"))
    new = snapshot(tmp_path / "out")
    assert not temporaries(tmp_path / "out")
    assert new.keys() == old.keys() and new["dynunc.txt"] != old["dynunc.txt"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_while_writing(tmp_path, sig):
    """Signalled as soon as the first temporary output appears. The outputs are then
    either all old or all new (they replace their targets together); SIGINT removes its
    temporaries itself, SIGKILL's are removed by the next run."""
    old = setup_run(tmp_path, 400_000, 3)
    out = tmp_path / "out"
    proc = subprocess.Popen(command(tmp_path, "0.5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    caught = []
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        caught = temporaries(out)
        if caught:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    proc.communicate(timeout=120)
    after = snapshot(out)
    outputs = {name: data for name, data in after.items() if not name.endswith(".tmp")}
    assert outputs.keys() == old.keys()
    unchanged = [name for name in old if outputs[name] == old[name]]
    assert len(unchanged) in (0, len(old)), "some outputs were replaced and others not"
    left = temporaries(out)
    if caught and proc.returncode == -signal.SIGKILL:
        assert left, "killed while writing, yet no temporary file was left"
    if sig == signal.SIGINT:
        assert not left
    run_ok(command(tmp_path, "0.5"))
    assert not temporaries(out)


def test_stale_temporaries_only_ours_are_removed(tmp_path):
    target = tmp_path / "core.txt"
    ours = [".core.txt.ab12_xyz.tmp", ".core.txt.q1w2e3r4.tmp"]
    foreign = [".core.txt.scores.npy.ab12xyz9.tmp", "core.txt.tmp", ".core.txt.tmp", ".core.txtx.ab12xyz9.tmp",
               ".other.txt.ab12xyz9.tmp", "notes.tmp"]
    for name in ours + foreign:
        (tmp_path / name).write_text("x")
    assert sorted(remove_stale_temporaries(target)) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(foreign)
    assert remove_stale_temporaries(tmp_path / "missing" / "x.txt") == []


def test_atomic_group_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.npy"
    a.write_text("old a")
    with pytest.raises(RuntimeError):
        with atomic_group() as group:
            with group.open(a) as f:
                f.write("new a")
            raise RuntimeError("between the two outputs")
    assert a.read_text() == "old a" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    with atomic_group() as group:
        with group.open(a) as f:
            f.write("new a")
        group.save_npy(b, np.arange(3))
        assert a.read_text() == "old a"  # nothing replaced before the block ends
    assert a.read_text() == "new a" and np.load(b).tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.npy"]


def test_sigint_during_commit_is_delivered_after_it(tmp_path):
    """SIGINT arriving while the outputs are being renamed is held back until every
    rename is done."""
    group = AtomicGroup()
    for i in range(3):
        with group.open(tmp_path / f"f{i}.txt") as f:
            f.write(str(i))
    original = os.replace
    raised = []

    def replace_and_signal(src, dst):
        original(src, dst)
        if not raised:
            raised.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    os.replace = replace_and_signal
    try:
        with pytest.raises(KeyboardInterrupt):
            group.commit()
    finally:
        os.replace = original
    assert sorted(os.listdir(tmp_path)) == ["f0.txt", "f1.txt", "f2.txt"]
