"""What coreset stability tracking costs produce mode per epoch (dynunc/training/stability.py).

    python benchmarks/bench_stability.py [--n 1281167] [--window 10] [--epochs 14] [--threads T]

Rank 0's end of epoch feeds the tracker the epoch's p(true label): the streamed window
update (dynunc.uncertainty.WindowScores), then, once a score exists, the scores, their
average ranks (Spearman), the kept set at each fraction (dynunc.ranking.top, get_coreset's tie
rule) and the comparison with the previous epoch. Synthetic probabilities (a per-sample
level plus noise, 100 samples unseen per epoch, float32 as produce mode writes them).
Prints, per epoch, the seconds of `push`, and the median over the epochs that compare;
with peak RSS. Nothing is asserted.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import this_process  # noqa: E402
from dynunc.uncertainty import default_threads  # noqa: E402
from dynunc.training.stability import VS_EPOCH_KEY, StabilityTracker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167, help="samples (ImageNet-1K's training set by default)")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--delta", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores, at most 8")
    args = ap.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    level = rng.random(args.n, dtype=np.float32)
    tracker = StabilityTracker(args.n, args.window, args.fractions, args.delta, threads=args.threads)
    compared = []
    try:
        for epoch in range(args.epochs):
            prob = np.clip(level + rng.normal(0, 0.1, args.n).astype(np.float32), 0, 1)
            prob[rng.choice(args.n, 100, replace=False)] = np.nan  # the drop-last remainder
            t = time.perf_counter()
            metrics = tracker.push(epoch, prob)
            seconds = time.perf_counter() - t
            print(f"epoch {epoch}: {seconds:.3f} s" + (f" (compared with epoch {metrics[VS_EPOCH_KEY]})"
                                                        if metrics else ""))
            if metrics:
                compared.append(seconds)
    finally:
        tracker.close()
    run = this_process(start)
    threads = args.threads or default_threads()
    print(f"N = {args.n:,}, window {args.window}, fractions {args.fractions}, delta {args.delta}, {threads} threads: "
          f"median {np.median(compared):.3f} s, max {max(compared):.3f} s per compared epoch "
          f"({len(compared)} epochs); whole run {run.summary()}")


if __name__ == "__main__":
    main()
