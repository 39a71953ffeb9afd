"""What recording margin and EL2N beside prob and correct costs produce mode.

    python benchmarks/bench_recorder.py [--n 1281167] [--batch 128] [--classes 1000 21841] [--device cpu] [--threads 1]

1. per batch: the recorder's statistics from the logits (dynunc/training/recorder.py:
   batch_records, four rows) against prob and correct alone (the two rows recorded
   before), same logits;
2. per epoch: the gather and the files: end_epoch at world size 1 (four rows, four
   files) against writing prob and correct alone; and the bytes added.
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
from dynunc.training.recorder import ROWS, PredictionRecorder, batch_records  # noqa: E402


def prob_and_correct(logits, labels):
    """The two rows recorded before margin and EL2N were added."""
    logits = logits.float()
    prob = torch.softmax(logits, dim=-1).gather(1, labels.view(-1, 1)).view(-1)
    return torch.stack([prob, (logits.argmax(dim=-1) == labels).float()])


def per_call_us(fn, device):
    return seconds_per_call(fn, device, warmup=10, iters=200) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, nargs="+", default=[1000, 21841])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady figures on a busy machine)")
    args = ap.parse_args()
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
        recorder = PredictionRecorder(n, tmp, device, is_primary=True)
        recorder.start_epoch()
        idx = torch.randperm(n, device=device)[: n - 100]  # a drop-last remainder stays unseen
        recorder.records[:, idx] = torch.rand(len(ROWS), len(idx), device=device)
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
