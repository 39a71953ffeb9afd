"""Time report.py (every method, the default fractions, --flipped) on a synthetic full
history, and its peak memory.

    python benchmarks/bench_report.py [--n 1281167] [--epochs 30] [--classes 1000] [--window 10] [--dir DIR]

The history is bench_coreset_methods.py's (prob, correct, margin, el2n, with each epoch's
drop-last remainder unseen); the list has --classes classes whose lines all point to one
small JPEG per class folder, so the image grids read real files without a real dataset.
report.py runs in a child process under /usr/bin/time when present; wall time and the
child's peak RSS are printed. Nothing is asserted.
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

from benchmarks.bench_coreset_methods import make_history  # noqa: E402
from benchmarks.measure import run_child  # noqa: E402

def make_images_and_list(work: str, n: int, classes: int) -> str:
    """One 32x32 JPEG per class folder, and a list of n lines spread over the classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = os.path.join(work, "data", f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        pixels = np.clip(rng.integers(0, 256, 3) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, "img.JPEG"))
    flist = os.path.join(work, "data", "train.txt")
    with open(flist, "w") as f:
        f.writelines(f"/n{i % classes:08d}/img.JPEG {i % classes}\n" for i in range(n))
    return flist


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--dir", help="keep the history here (made if missing) instead of a temporary folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        work = args.dir or tmp
        hdir = os.path.join(work, "run", "pred_prob_history")
        flist = os.path.join(work, "data", "train.txt")
        flipped = os.path.join(work, "flipped.npy")
        if not os.path.exists(os.path.join(hdir, f"prob_{args.epochs - 1}.npy")):
            os.makedirs(hdir, exist_ok=True)
            t = time.perf_counter()
            make_images_and_list(work, args.n, args.classes)
            make_history(hdir, flist, args.n, args.epochs, world_size=8, batch=128, seed=0)
            rng = np.random.default_rng(1)
            np.save(flipped, np.sort(rng.choice(args.n, args.n // 10, replace=False)).astype(np.int64))
            print(f"history made in {time.perf_counter() - t:.1f}s")
        cmd = [sys.executable, os.path.join(ROOT, "report.py"), "--input", os.path.join(work, "run"),
               "--dataset_file_list", flist, "--window", str(args.window), "--flipped", flipped,
               "--output", os.path.join(work, "report")]
        run = run_child(cmd)
        print(run.stdout.strip())
        print(run.stderr.strip())
        print(f"N={args.n:,} x K={args.epochs}, {args.classes} classes: report.py {run.summary()}")


if __name__ == "__main__":
    main()
