"""Time get_coreset.py with every method and several fractions in one call against
dynunc alone, on a synthetic full history (prob, correct, margin, el2n).

    python benchmarks/bench_coreset_methods.py [--n 1281167] [--epochs 30] [--window 10] [--repeat 2]

Each command runs in a child process (wall time includes interpreter start-up and
reading the file list); the best of --repeat runs is reported, with the ratio
all-methods / dynunc-only. Nothing is asserted; the figures are printed.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402
from dynunc.lists.index import open_index  # noqa: E402
from dynunc.history import write_epoch, write_fingerprint  # noqa: E402
from dynunc.scoring.methods import METHODS  # noqa: E402


def make_history(hdir, list_path, n, epochs, world_size, batch, seed):
    """Drifting probabilities and records derived from them; each epoch leaves the
    drop-last remainder of a seeded permutation unseen, as produce mode does."""
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
        correct = np.where(seen, prob > 0.5, -1).astype(np.int8)
        margin = (8 * (prob - 0.5)).astype(np.float32)
        el2n = (1.2 * (1 - prob)).astype(np.float32)
        for values in (prob, margin, el2n):
            values[~seen] = np.nan
        write_epoch(hdir, k, prob, correct, margin=margin, el2n=el2n)
    write_fingerprint(hdir, open_index(list_path).fingerprint())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--fractions", nargs="+", default=["0.5", "0.7", "0.9"])
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", help="keep the history here (made if missing) instead of a temporary folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_methods_") as tmp:
        work = args.dir or tmp
        hdir = os.path.join(work, "run", "pred_prob_history")
        flist = os.path.join(work, "train.txt")
        if not os.path.exists(os.path.join(hdir, f"prob_{args.epochs - 1}.npy")):
            os.makedirs(hdir, exist_ok=True)
            with open(flist, "w") as f:
                f.writelines(f"/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG {i % 1000}\n" for i in range(args.n))
            t = time.perf_counter()
            make_history(hdir, flist, args.n, args.epochs, args.world_size, args.batch, seed=0)
            print(f"history made in {time.perf_counter() - t:.1f}s")
        size = sum(os.path.getsize(os.path.join(hdir, f)) for f in os.listdir(hdir)) / 2**20
        print(f"history: N={args.n:,} x K={args.epochs} ({size:.0f} MiB, prob/correct/margin/el2n), "
              f"window {args.window}")
        common = [sys.executable, os.path.join(ROOT, "get_coreset.py"), "--input", os.path.join(work, "run"),
                  "--dataset_file_list", flist, "--window", str(args.window)]
        runs = {
            "dynunc, 1 fraction": common + ["--fraction", args.fractions[0], "--output",
                                            os.path.join(work, "out", "dynunc_only.txt")],
            f"{len(METHODS)} methods, {len(args.fractions)} fractions": common + [
                "--method", *METHODS, "--fraction", *args.fractions, "--output",
                os.path.join(work, "out", "{method}_{fraction}.txt")],
        }
        best = {}
        for name, cmd in runs.items():
            done = [run_child(cmd) for _ in range(args.repeat)]
            best[name] = min(done, key=lambda r: r.wall_s)
            print(f"{name}: best {best[name].summary()}; walls {', '.join(f'{r.wall_s:.2f}' for r in done)}\n  "
                  f"{best[name].stderr.strip().splitlines()[-1]}")
        a, b = (r.wall_s for r in best.values())
        print(f"ratio all-methods / dynunc-only: {b / a:.2f}")


if __name__ == "__main__":
    main()
