"""Time `python -m data.prepare file-list` on a synthetic tree of empty files.

    python benchmarks/bench_file_list.py [--files 1000000] [--classes 1000] [--dir /tmp] [--check] [--keep]

Builds DIR/bench_file_list_XXXX/n<8 digits>/<name>.JPEG (empty files, made with
os.open/os.close), runs file-list on it in a child process (warm page cache: the tree
was just written), reports wall time and the child's peak RSS (ru_maxrss from
os.wait4, i.e. the RUSAGE_CHILDREN figure for that one child), and deletes the tree. With --check it also times `check` on the written list.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tree(root: str, files: int, classes: int) -> None:
    per_class, extra = divmod(files, classes)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for c in range(classes):
        class_dir = os.path.join(root, f"n{c:08d}")
        os.mkdir(class_dir)
        # Names like the real ones (n01440764_10026.JPEG), created in no particular order.
        for i in range(per_class + (c < extra)):
            os.close(os.open(os.path.join(class_dir, f"n{c:08d}_{(i * 7919) % 1000003}_{i}.JPEG"), flags, 0o644))


def timed_child(argv) -> tuple:
    """(wall seconds, peak RSS in MiB, stdout) of one child process.

    os.wait4 gives this child's own rusage; getrusage(RUSAGE_CHILDREN).ru_maxrss would
    be the largest over every child waited for so far.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stdout.strip()  # ru_maxrss is in KiB on Linux


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
        wall, rss, out = timed_child([py, "-m", "data.prepare", "file-list", root, "--no-progress"])
        print(f"file-list: {wall:.2f} s wall, peak RSS {rss:.0f} MiB, {args.files / wall / 1e6:.2f} M files/s")
        print(f"  {out.splitlines()[0]}")
        if args.check:
            wall, rss, out = timed_child([py, "-m", "data.prepare", "check", os.path.join(root, "file_list.txt")])
            print(f"check: {wall:.2f} s wall, peak RSS {rss:.0f} MiB, {args.files / wall / 1e6:.2f} M lines/s")
            print(f"  {out.splitlines()[-1]}")
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
