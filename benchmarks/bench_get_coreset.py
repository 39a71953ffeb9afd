"""Time get_coreset.py on a synthetic history and report its peak RSS; compare with another tree.

    python benchmarks/bench_get_coreset.py [--n 1281167] [--epochs 30] [--window 10]
        [--dir DIR] [--baseline OLD_TREE] [--in-process] [--txt] [--class-balanced] [--reads]

Writes N x K float32 .npy epoch files and an N-line file list (to a temporary folder,
or to --dir, where a history made with the same parameters is reused and kept), then:
  1. runs this tree's get_coreset.py in a child process: wall time, the scoring time it
     prints, and the child's own peak RSS;
  2. with --baseline OLD_TREE (e.g. `git worktree add /tmp/old HEAD~3`): the same with
     OLD_TREE/get_coreset.py, then compares the two coresets line for line and the two
     score files;
  3. with --in-process: the time to read the K files alone, and to read + score, per
     --threads and --chunk-rows;
  4. with --txt: the time to read one epoch in the paper's text format;
  5. with --reads: each tree's get_coreset.py without and then with the list's index on
     disk, timed, then under strace (`read`/`pread64` of its main thread, fds shown with
     their paths): the bytes read from the list, as a number of full reads of it.
Nothing is asserted; the figures are printed.

The history looks like a real one: per sample, the logit of the true class rises from
N(-4, 1.5) to N(5, 6) along a learning curve, with per-sample noise (sd 0.05-1.5), so
that early probabilities are tiny, many samples settle near 1 (some at exactly 1.0 in
float32) and others stay low; each epoch leaves the drop-last remainder of a permutation
seeded 42 + epoch unseen (NaN), as produce mode records it.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402
from dynunc.uncertainty import dynamic_uncertainty_scores, select_coreset  # noqa: E402
from dynunc.history import load_epoch_prob  # noqa: E402


def make_history(hdir, n, epochs, world_size, batch, seed):
    """Learning-curve probabilities (see the module docstring), float32, NaN = unseen."""
    os.makedirs(hdir)
    rng = np.random.default_rng(seed)
    start = rng.normal(-4.0, 1.5, n).astype(np.float32)
    rise = rng.normal(5.0, 6.0, n).astype(np.float32) - start
    noise = rng.uniform(0.05, 1.5, n).astype(np.float32)
    tau = epochs / 4.0
    per_rank = n // world_size
    used = (per_rank // batch) * batch
    for k in range(epochs):
        progress = np.float32((1 - np.exp(-k / tau)) / (1 - np.exp(-(epochs - 1) / tau)))
        logit = start + rise * progress
        logit += rng.standard_normal(n, dtype=np.float32) * noise
        np.negative(logit, out=logit)
        np.exp(logit, out=logit)
        logit += np.float32(1)
        prob = np.reciprocal(logit, out=logit)  # sigmoid, in float32: saturates at 1.0
        perm = np.random.default_rng(42 + k).permutation(n)
        seen = np.zeros(n, dtype=bool)
        for r in range(world_size):
            seen[perm[r * per_rank: r * per_rank + used]] = True
        prob[~seen] = np.nan
        np.save(os.path.join(hdir, f"prob_{k}.npy"), prob)


def make_list(path, n, block=1 << 20):
    with open(path, "w") as f:
        for lo in range(0, n, block):
            f.writelines(f"/n{i % 21841:08d}/n{i % 21841:08d}_{i}.JPEG {i % 21841}\n"
                         for i in range(lo, min(n, lo + block)))


def prepare(folder, args):
    """Make (or reuse) the history under folder/run/pred_prob_history and folder/train.txt."""
    params = dict(n=args.n, epochs=args.epochs, world_size=args.world_size, batch=args.batch, seed=0, version=2)
    marker = os.path.join(folder, "params.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == params:
                print(f"history: reusing {folder}")
                return
        sys.exit(f"{folder} holds a history made with other parameters; remove it or pick another --dir")
    t = time.perf_counter()
    make_history(os.path.join(folder, "run", "pred_prob_history"), args.n, args.epochs, args.world_size,
                 args.batch, seed=0)
    make_list(os.path.join(folder, "train.txt"), args.n)
    old = time.time() - 60
    os.utime(os.path.join(folder, "train.txt"), (old, old))  # not just written: its index is kept
    with open(marker, "w") as f:
        json.dump(params, f)
    print(f"history: made in {time.perf_counter() - t:.1f}s")


def time_get_coreset(tree, folder, args, output, trace=None):
    """(wall s, scoring s, peak RSS MiB) of `tree`/get_coreset.py run in a child process;
    its CPU time (user + system, all threads) is printed too. With `trace` (a file), the
    child runs under strace, which writes its main thread's reads there."""
    cmd = [sys.executable, os.path.join(tree, "get_coreset.py"), "--input", os.path.join(folder, "run"),
           "--dataset_file_list", os.path.join(folder, "train.txt"), "--fraction", str(args.fraction),
           "--window", str(args.window), "--output", output] + (["--class-balanced"] if args.class_balanced else [])
    if trace:
        cmd = ["strace", "-qq", "-y", "-e", "trace=read,pread64", "-o", trace] + cmd
    run = run_child(cmd, cwd=tree)
    scored = re.search(r"in (\d+(?:\.\d+)?)s", run.stderr)
    # CPU time counts all threads: on a shared machine, wall time says less
    print(f"{tree}/get_coreset.py: {run.summary()} (wall incl. interpreter start), "
          f"scoring {scored.group(1) if scored else '?'}s")
    print("  " + run.stdout.strip())
    return run.wall_s, float(scored.group(1)) if scored else float("nan"), run.peak_rss_mib


_READ = re.compile(r"^(?:read|pread64)\(\d+<([^>]*)>, .* = (\d+)$")


def list_reads(tree, folder, args):
    """How many times `tree`/get_coreset.py reads the list (bytes read from it / its size),
    first without its index on disk (built by this run), then with it."""
    listed = os.path.realpath(os.path.join(folder, "train.txt"))
    size = os.path.getsize(listed)
    trace = os.path.join(folder, "reads.strace")
    for state in ("without", "with"):
        for traced in (None, trace):  # timed without strace, then counted with it
            if state == "without" and os.path.exists(listed + ".idx"):
                os.remove(listed + ".idx")
            print(f"  index {state} on disk{', under strace' if traced else ''}:")
            time_get_coreset(tree, folder, args, os.path.join(folder, "core_traced.txt"), traced)
        with open(trace, errors="replace") as f:
            done = sum(int(m.group(2)) for m in map(_READ.match, f) if m and m.group(1) == listed)
        print(f"  reads of the list, index {state} on disk: {done / size:.2f} x {size / 2**20:.0f} MiB")


def compare(new, old):
    """Line-for-line comparison of two coresets and of their score files."""
    with open(new) as a, open(old) as b:
        lines_new, lines_old = a.read().splitlines(), b.read().splitlines()
    differ = sum(x != y for x, y in zip(lines_new, lines_old)) + abs(len(lines_new) - len(lines_old))
    s_new, s_old = np.load(new + ".scores.npy"), np.load(old + ".scores.npy")
    rel = np.abs(s_new - s_old) / np.maximum(np.abs(s_old), np.finfo(np.float64).tiny)
    print(f"coresets: {len(lines_new)} and {len(lines_old)} lines, {differ} differ; "
          f"scores bit-identical: {np.array_equal(s_new, s_old)}, max relative difference {rel.max():.3g}")


def in_process(folder, args):
    hdir = os.path.join(folder, "run", "pred_prob_history")
    paths = [os.path.join(hdir, f"prob_{k}.npy") for k in range(args.epochs)]
    t = time.perf_counter()
    for p in paths:
        load_epoch_prob(p, expected_len=args.n)
    read_s = time.perf_counter() - t
    print(f"reading {args.epochs} epoch files alone: {read_s:.2f}s")
    for threads in args.threads:
        for chunk in args.chunk_rows:
            t = time.perf_counter()
            scores = dynamic_uncertainty_scores((load_epoch_prob(p, args.n) for p in paths), args.n,
                                                args.window, chunk_rows=chunk, threads=threads)
            score_s = time.perf_counter() - t
            t = time.perf_counter()
            select_coreset(scores, args.fraction)
            select_s = time.perf_counter() - t
            print(f"threads={threads} chunk_rows={chunk:>7}: read+score {score_s:.2f}s, select {select_s:.2f}s")
    if args.txt:
        col = np.load(paths[0])
        col[np.isnan(col)] = 0
        txt = os.path.join(folder, "prob_0.txt")
        t = time.perf_counter()
        np.savetxt(txt, col)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        load_epoch_prob(txt, expected_len=args.n)
        print(f"text format, one epoch ({os.path.getsize(txt) / 2**20:.0f} MiB): "
              f"np.savetxt {write_s:.2f}s, read {time.perf_counter() - t:.2f}s")
        os.remove(txt)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.75)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dir", help="make (or reuse) the history here and keep it (default: a temporary folder)")
    ap.add_argument("--baseline", help="another source tree whose get_coreset.py to run and compare with")
    ap.add_argument("--in-process", action="store_true", help="also time reading, and scoring per setting")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--chunk-rows", type=int, nargs="*", default=[1 << 12, 1 << 13, 1 << 14, 1 << 16])
    ap.add_argument("--txt", action="store_true", help="with --in-process: time one epoch in the text format")
    ap.add_argument("--class-balanced", action="store_true", help="run get_coreset.py with --class-balanced")
    ap.add_argument("--reads", action="store_true", help="count the child's reads of the list under strace")
    args = ap.parse_args()

    folder = args.dir or tempfile.mkdtemp(prefix="bench_coreset_")
    try:
        os.makedirs(folder, exist_ok=True)
        prepare(folder, args)
        print(f"N={args.n:,} x K={args.epochs} float32 .npy, window {args.window}, fraction {args.fraction}")
        new = os.path.join(folder, "core_new.txt")
        time_get_coreset(ROOT, folder, args, new)
        if args.reads:
            list_reads(ROOT, folder, args)
        if args.baseline:
            old = os.path.join(folder, "core_old.txt")
            time_get_coreset(os.path.abspath(args.baseline), folder, args, old)
            if args.reads:
                list_reads(os.path.abspath(args.baseline), folder, args)
            compare(new, old)
        if args.in_process:
            in_process(folder, args)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
