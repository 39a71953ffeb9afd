"""Time `python -m data.prepare file-list` on a synthetic tree of empty files.

    python benchmarks/bench_file_list.py [--files 1000000] [--classes 1000] [--dir /tmp] [--check] [--keep]

Builds DIR/bench_file_list_XXXX/n<8 digits>/<name>.JPEG (empty files, made with
os.open/os.close), runs file-list on it in a child process (warm page cache: the tree
was just written), reports the child's wall time, CPU time and peak RSS
(benchmarks/measure.py), and deletes the tree. With --check it also times `check` on
the written list.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.measure import run_child  # noqa: E402


def make_tree(root: str, files: int, classes: int) -> None:
    per_class, extra = divmod(files, classes)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for c in range(classes):
        class_dir = os.path.join(root, f"n{c:08d}")
        os.mkdir(class_dir)
        # Names like the real ones (n01440764_10026.JPEG), created in no particular order.
        for i in range(per_class + (c < extra)):
            os.close(os.open(os.path.join(class_dir, f"n{c:08d}_{(i * 7919) % 1000003}_{i}.JPEG"), flags, 0o644))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1_000_000, help="number of empty files (default 1,000,000)")
    p.add_argument("--classes", type=int, default=1000, help="number of class directories (default 1000)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to build the tree (default: the temp dir)")
    p.add_argument("--check", action="store_true", help="also time `check` on the written file list")
    p.add_argument("--keep", action="store_true", help="keep the tree (it is deleted by default)")
    args = p.parse_args(argv)

    root = tempfile.mkdtemp(prefix="bench_file_list_", dir=args.dir)
    try:
        print(f"building {args.files} empty files in {args.classes} classes under {root} ...", flush=True)
        t0 = time.perf_counter()
        make_tree(root, args.files, args.classes)
        print(f"tree made in {time.perf_counter() - t0:.1f} s", flush=True)
        py = sys.executable
        run = run_child([py, "-m", "data.prepare", "file-list", root, "--no-progress"], cwd=REPO)
        print(f"file-list: {run.summary()}, {args.files / run.wall_s / 1e6:.2f} M files/s")
        print(f"  {run.stdout.strip().splitlines()[0]}")
        if args.check:
            run = run_child([py, "-m", "data.prepare", "check", os.path.join(root, "file_list.txt")], cwd=REPO)
            print(f"check: {run.summary()}, {args.files / run.wall_s / 1e6:.2f} M lines/s")
            print(f"  {run.stdout.strip().splitlines()[-1]}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            t0 = time.perf_counter()
            shutil.rmtree(root)
            print(f"deleted the tree in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
