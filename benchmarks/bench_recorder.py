"""What the recorder costs a training loop.

    python benchmarks/bench_recorder.py [--n 1281167] [--batch 128] [--classes 1000 21841] [--device cpu] [--threads 1]
    python benchmarks/bench_recorder.py --against a9cdf1f [--n 1281167] [--batch 128] [--classes 1000]

1. per batch: the recorder's statistics from the logits (dynunc/training/recorder.py:
   batch_records, four rows) against prob and correct alone (the two rows recorded
   before), same logits;
2. per epoch: the gather and the files: end_epoch at world size 1 (four rows, four
   files) against writing prob and correct alone; and the bytes added.
3. with --against REV: dynunc.Recorder in a user's loop against the recorder of commit
   REV (PredictionRecorder, extracted with git archive and run in its own process),
   same N, batch, logits and indices: per step (`update`, or `record` through a model
   that returns the same logits), per epoch (`end_epoch` after a full epoch of steps,
   the files written), and per step beside a small training step (an MLP on the same
   batch) to put the step's cost in proportion.
Nothing is asserted; the figures are printed.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from engine import seconds_per_call  # noqa: E402
from dynunc.history import history_dir, write_epoch  # noqa: E402
from dynunc.training.recorder import ROWS, Recorder, batch_records  # noqa: E402


def prob_and_correct(logits, labels):
    """The two rows recorded before margin and EL2N were added."""
    logits = logits.float()
    prob = torch.softmax(logits, dim=-1).gather(1, labels.view(-1, 1)).view(-1)
    return torch.stack([prob, (logits.argmax(dim=-1) == labels).float()])


def per_call_us(fn, device):
    return seconds_per_call(fn, device, warmup=10, iters=200) * 1e6


# Run in the tree of either version (cwd = that tree): the same steps through its recorder.
IN_A_LOOP = r"""
import json, sys, tempfile, time
import torch
from torch import nn
n, batch, classes, threads = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(0)
logits = torch.randn(batch, classes) * 3
labels = torch.randint(0, classes, (batch,))
perm = torch.randperm(n)
steps = n // batch
tmp = tempfile.mkdtemp(prefix="bench_recorder_loop_")
try:
    from dynunc.training.recorder import Recorder
    rec = Recorder(tmp, n, device=torch.device("cpu"))
    step = lambda idx: rec.update(idx, logits, labels)
    end = rec.end_epoch
    version = "dynunc.Recorder"
except ImportError:
    from dynunc.training.recorder import PredictionRecorder

    class Same(nn.Module):  # the logits as a model gives them (no BatchNorm: no mode switch)
        def forward(self, x):
            return x

    rec = PredictionRecorder(n, tmp, torch.device("cpu"), True)
    rec.start_epoch()
    same = Same()
    step = lambda idx: rec.record(same, logits, labels, idx)
    end = rec.end_epoch
    version = "PredictionRecorder"
warm = 20  # the first batches of the epoch warm up; the rest are timed (each sample once per epoch)
for s in range(warm):
    step(perm[s * batch:(s + 1) * batch])
start = time.perf_counter()
for s in range(warm, steps):
    step(perm[s * batch:(s + 1) * batch])
per_step = (time.perf_counter() - start) / (steps - warm)
t = time.perf_counter()
end(0)
per_epoch = time.perf_counter() - t
mlp = nn.Sequential(nn.Linear(classes, 256), nn.ReLU(), nn.Linear(256, classes))
opt = torch.optim.SGD(mlp.parameters(), lr=0.01)
x = torch.randn(batch, classes)
def train_step():
    loss = nn.functional.cross_entropy(mlp(x), labels)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(10):
    train_step()
start = time.perf_counter()
for _ in range(100):
    train_step()
train = (time.perf_counter() - start) / 100
print(json.dumps({"version": version, "per_step_us": per_step * 1e6, "per_epoch_s": per_epoch, "steps": steps,
                  "train_step_us": train * 1e6}))
"""


def in_a_loop(tree: str, n: int, batch: int, classes: int, threads: int) -> dict:
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", IN_A_LOOP, str(n), str(batch), str(classes), str(threads)],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the measurement in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def against(rev: str, n: int, batch: int, classes: int, threads: int, repeats: int) -> None:
    """Section 3 of the module docstring: each version `repeats` times, alternating; the
    median of each figure."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench_recorder_rev_") as old_tree:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        runs = {"old": [], "new": []}
        for _ in range(repeats):
            runs["old"].append(in_a_loop(old_tree, n, batch, classes, threads))
            runs["new"].append(in_a_loop(ROOT, n, batch, classes, threads))
    print(f"in a loop (N = {n:,}, batch {batch} x {classes} classes, CPU, {threads} thread(s), median of {repeats}):")
    for name, label in (("old", f"{rev} PredictionRecorder"), ("new", "dynunc.Recorder")):
        figures = {k: float(np.median([r[k] for r in runs[name]])) for k in ("per_step_us", "per_epoch_s",
                                                                           "train_step_us")}
        step, train = figures["per_step_us"], figures["train_step_us"]
        print(f"  {label}: {step:.0f} us per step ({step / train:.1%} of an MLP training step of {train:.0f} us), "
              f"end_epoch {figures['per_epoch_s']:.2f} s after {runs[name][0]['steps']:,} steps")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, nargs="+", default=[1000, 21841])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady figures on a busy machine)")
    ap.add_argument("--against", metavar="REV", help="section 3: against the recorder of this git revision")
    ap.add_argument("--repeats", type=int, default=3, help="--against: runs of each version")
    args = ap.parse_args()
    if args.against:
        against(args.against, args.n, args.batch, args.classes[0], args.threads, args.repeats)
        return
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    for classes in args.classes:
        logits = torch.randn(args.batch, classes, device=device) * 3
        labels = torch.randint(0, classes, (args.batch,), device=device)
        old = per_call_us(lambda: prob_and_correct(logits, labels), device)
        new = per_call_us(lambda: batch_records(logits, labels), device)
        print(f"per batch ({args.batch} x {classes} logits, {device}): prob+correct {old:.0f} us, "
              f"all {len(ROWS)} rows {new:.0f} us (+{new - old:.0f} us per batch)")

    n = args.n
    with tempfile.TemporaryDirectory(prefix="bench_recorder_") as tmp:
        recorder = Recorder(tmp, n, device=device)
        idx = torch.randperm(n, device=device)[: n - 100]  # a drop-last remainder stays unseen
        recorder.records[:len(ROWS), idx] = torch.rand(len(ROWS), len(idx), device=device)
        t = time.perf_counter()
        recorder.end_epoch(0)
        new = time.perf_counter() - t
        prob = np.random.default_rng(0).random(n, dtype=np.float32)
        t = time.perf_counter()
        write_epoch(history_dir(os.path.join(tmp, "old")), 0, prob, (prob > 0.5).astype(np.int8))
        old = time.perf_counter() - t
    print(f"per epoch (N = {n:,}): end_epoch with {len(ROWS)} rows {new:.2f}s; writing prob+correct alone "
          f"{old:.2f}s. Added bytes per epoch: all-reduce {2 * 4 * n / 2**20:.1f} MiB, files "
          f"{2 * 4 * n / 2**20:.1f} MiB (margin and el2n, float32)")


if __name__ == "__main__":
    main()
