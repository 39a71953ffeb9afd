"""Time get_coreset.py on a synthetic ImageNet-1K-sized history and report its peak RSS.

    python benchmarks/bench_get_coreset.py [--n 1281167] [--epochs 30] [--window 10]

Writes N x K float32 .npy epoch files (NaN for the drop-last remainder, as produce mode
does) and an N-line file list to a temporary folder, then:
  1. runs get_coreset.py in a child process: wall time and the child's peak RSS;
  2. in this process: the time to read the K files alone, and to read + score;
  3. with --txt: the time to read one epoch in the paper's text format.
Nothing is asserted; the figures are printed.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pruning.dynamic_uncertainty import dynamic_uncertainty_scores, select_coreset  # noqa: E402
from pruning.history import load_epoch_prob  # noqa: E402


def make_history(hdir, n, epochs, world_size, batch, seed):
    """Random probabilities with a per-sample drift; each epoch leaves the drop-last
    remainder of a seeded permutation unseen (NaN), as produce mode records it."""
    os.makedirs(hdir)
    rng = np.random.default_rng(seed)
    base = rng.random(n, dtype=np.float32)
    drift = (rng.random(n, dtype=np.float32) - 0.5) * 0.05
    per_rank = n // world_size
    used = (per_rank // batch) * batch
    for k in range(epochs):
        prob = np.clip(base + k * drift + rng.normal(0, 0.1, n).astype(np.float32), 0, 1)
        perm = np.random.default_rng(42 + k).permutation(n)
        seen = np.zeros(n, dtype=bool)
        for r in range(world_size):
            seen[perm[r * per_rank: r * per_rank + used]] = True
        prob[~seen] = np.nan
        np.save(os.path.join(hdir, f"prob_{k}.npy"), prob)


def make_list(path, n):
    with open(path, "w") as f:
        f.writelines(f"/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG {i % 1000}\n" for i in range(n))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.75)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunk-rows", type=int, nargs="*", default=[1 << 12, 1 << 14, 1 << 16, 1 << 18])
    ap.add_argument("--txt", action="store_true", help="also time reading one epoch in the paper's text format")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_coreset_") as tmp:
        hdir = os.path.join(tmp, "run", "pred_prob_history")
        flist = os.path.join(tmp, "train.txt")
        t = time.perf_counter()
        make_history(hdir, args.n, args.epochs, args.world_size, args.batch, seed=0)
        make_list(flist, args.n)
        print(f"history: N={args.n:,} x K={args.epochs} float32 .npy "
              f"({sum(os.path.getsize(os.path.join(hdir, f)) for f in os.listdir(hdir)) / 2**20:.0f} MiB), "
              f"window {args.window}, made in {time.perf_counter() - t:.1f}s")

        # 1. The command line, in a child process (its peak RSS is its own).
        out = os.path.join(tmp, "core.txt")
        cmd = [sys.executable, os.path.join(ROOT, "get_coreset.py"), "--input", os.path.join(tmp, "run"),
               "--dataset_file_list", flist, "--fraction", str(args.fraction), "--window", str(args.window),
               "--output", out]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"get_coreset.py failed:\n{proc.stderr}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"get_coreset.py (child): wall {wall:.2f}s (incl. interpreter start), peak RSS {peak_mib:.0f} MiB")
        print("  " + proc.stderr.strip().replace("\n", "\n  "))
        print("  " + proc.stdout.strip())
        buffer_mib = args.n * args.window * 8 / 2**20
        print(f"  for scale: the (N, J) float64 buffer is {buffer_mib:.0f} MiB; "
              f"one epoch float32 {args.n * 4 / 2**20:.0f} MiB; all epochs float64 would be "
              f"{args.n * args.epochs * 8 / 2**20:.0f} MiB")

        # 2. In process: reading alone, then reading + scoring, per chunk size.
        paths = [os.path.join(hdir, f"prob_{k}.npy") for k in range(args.epochs)]
        t = time.perf_counter()
        for p in paths:
            load_epoch_prob(p, expected_len=args.n)
        read_s = time.perf_counter() - t
        print(f"reading {args.epochs} epoch files alone: {read_s:.2f}s")
        for chunk in args.chunk_rows:
            t = time.perf_counter()
            scores = dynamic_uncertainty_scores((load_epoch_prob(p, args.n) for p in paths), args.n,
                                                args.window, chunk_rows=chunk)
            score_s = time.perf_counter() - t
            t = time.perf_counter()
            select_coreset(scores, args.fraction)
            select_s = time.perf_counter() - t
            print(f"chunk_rows={chunk:>7}: read+score {score_s:.2f}s "
                  f"({(score_s - read_s) / args.epochs * 1000:.0f} ms/epoch scoring), select {select_s:.2f}s")

        # 3. The paper's text format, one epoch.
        if args.txt:
            col = np.load(paths[0])
            col[np.isnan(col)] = 0
            txt = os.path.join(tmp, "prob_0.txt")
            t = time.perf_counter()
            np.savetxt(txt, col)
            write_s = time.perf_counter() - t
            t = time.perf_counter()
            load_epoch_prob(txt, expected_len=args.n)
            print(f"text format, one epoch ({os.path.getsize(txt) / 2**20:.0f} MiB): "
                  f"np.savetxt {write_s:.2f}s, read {time.perf_counter() - t:.2f}s")


if __name__ == "__main__":
    main()
