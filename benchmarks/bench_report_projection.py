"""Time the report's embedding section (dynunc/report/projection.py) on a synthetic
embed_{epoch}.npy of N x D float16, and its peak memory.

    python benchmarks/bench_report_projection.py [--n 1281167] [--dim 128] [--methods 7] [--dir DIR]

Two children, each measured by benchmarks/measure.py: "check" runs
dynunc/history.py's load_embeddings (the full streamed NaN check the report does
first), "section" draws the shown images, reads their rows from the memory map, fits
the PCA and draws one panel per method (every method's ranking is one shared random
permutation: the section only reads it at the shown images). Nothing is asserted.
"""
import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402

CHUNK = 1 << 18  # rows written at a time


def make_embeddings(path: str, n: int, dim: int) -> None:
    """Clustered float16 rows, written in chunks (never N x D in memory)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (100, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        rows = centres[rng.integers(0, len(centres), hi - lo)] + rng.standard_normal((hi - lo, dim), np.float32)
        out[lo:hi] = rows.astype(np.float16)
    out.flush()
    del out
    os.replace(path + ".tmp.npy", path)


def child(hdir: str, n: int, methods: int, stage: str) -> None:
    from dynunc.history import load_embeddings
    from dynunc.report.projection import Shown, add_projection, projection_html

    if stage == "check":
        load_embeddings(hdir, n)
        return
    embeddings = np.load(os.path.join(hdir, "embed_0.npy"), mmap_mode="r")
    position = np.random.default_rng(1).permutation(n).astype(np.int32)
    orders = {f"method{i}": SimpleNamespace(position=position) for i in range(methods)}
    files, numbers = {}, {"num_samples": n}
    add_projection(files, numbers, orders, Shown("embed_0.npy", 0, embeddings, "0.3", int(n * 0.3), 0))
    projection_html(numbers["projection"], "")
    print(f"projection.png {len(files['projection.png'])} bytes, {numbers['projection']['points']} points")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--methods", type=int, default=7)
    ap.add_argument("--dir", help="keep the embeddings here (made if missing) instead of a temporary folder")
    ap.add_argument("--child", choices=("check", "section"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.dir, args.n, args.methods, args.child)

    with tempfile.TemporaryDirectory(prefix="bench_projection_") as tmp:
        hdir = args.dir or tmp
        path = os.path.join(hdir, "embed_0.npy")
        if not os.path.exists(path):
            os.makedirs(hdir, exist_ok=True)
            started = time.perf_counter()
            make_embeddings(path, args.n, args.dim)
            print(f"wrote {path}: {args.n} x {args.dim} float16 in {time.perf_counter() - started:.0f} s")
        for stage in ("check", "section"):
            run = run_child([sys.executable, os.path.abspath(__file__), "--child", stage, "--dir", hdir,
                             "--n", args.n, "--methods", args.methods], cwd=ROOT)
            print(f"{stage}: N = {args.n:,}, D = {args.dim}, {args.methods} methods: {run.summary()} "
                  f"{run.stdout.strip()}")


if __name__ == "__main__":
    main()
