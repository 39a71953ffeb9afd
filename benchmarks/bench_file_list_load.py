"""Time reading an ImageNet-21K-sized file list, per process (issue 9, goals 1 and 3).

    python benchmarks/bench_file_list_load.py [--lines 13153500] [--classes 21841] [--dir /tmp]
        [--processes 2] [--legacy] [--keep]

Writes a synthetic list DIR/bench_file_list_load/file_list.txt (lines like
``/n00000123/n00000123_45.JPEG 123``, no images) and a coreset of 70% of its lines (in list
order, as get_coreset writes them), then runs each step in a fresh child process and reports
its wall time and peak RSS (the child's VmHWM; ru_maxrss from wait4 would include the
parent's RSS copied at fork). Mapped index pages the child touched count in RSS
(RssFile), though the page cache holds one copy for all processes of a node:

- legacy: the line-by-line reader this project had before the index (kept here to compare);
- build: read_file_list with no index on disk (parses the list, writes <list>.idx);
- load: read_file_list with the index on disk (what every rank does at every start);
- coreset: read_coreset of the 70% coreset against the full list;
- startup: --processes concurrent processes, each doing what main_and_produce.py does with
  the list before its first step: load_file_lists (train list; no val list), the epoch's
  train_shard (permutation of N), and the Recorder's (4, N) buffer (on CPU here).
The synthetic files are deleted unless --keep (a kept list is reused by the next run).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.measure import Child  # noqa: E402


def write_list(path: str, lines: int, classes: int) -> None:
    per_class, extra = divmod(lines, classes)
    with open(path + ".part", "w", encoding="utf-8", newline="\n") as f:
        for c in range(classes):
            d = f"n{c:08d}"
            f.write("".join([f"/{d}/{d}_{i}.JPEG {c}\n" for i in range(per_class + (c < extra))]))
    os.replace(path + ".part", path)


def write_coreset(full: str, path: str, fraction: float, seed: int = 0) -> int:
    """Every line of `full` kept with probability `fraction`, in order (a block at a time)."""
    rng = np.random.default_rng(seed)
    kept = 0
    with open(full, "rb") as src, open(path + ".part", "wb") as dst:
        while True:
            lines = src.readlines(64 << 20)
            if not lines:
                break
            keep = rng.random(len(lines)) < fraction
            dst.write(b"".join(line for line, k in zip(lines, keep) if k))
            kept += int(keep.sum())
    os.replace(path + ".part", path)
    return kept


def legacy_read(path: str, num_classes: int):
    """The reader before the index: one Python string per path, read line by line."""
    from dynunc.lists.file_list import parse_line

    files, labels, linenos = [], [], []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            name, label = parse_line(line, path, lineno)
            if label < 0 or label >= num_classes:
                raise ValueError(f"{path}:{lineno}: label {label} out of range")
            files.append(name)
            labels.append(label)
            linenos.append(lineno)
    return files, np.asarray(labels, dtype=np.int64), np.asarray(linenos, dtype=np.int64)


def memory_status() -> dict:
    """This process's VmHWM / RssAnon / RssFile (MiB), from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def child(step: str, full: str, coreset: str, classes: int, rank: int, world: int) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = {}
    if step == "legacy":
        files, _, _ = legacy_read(full, classes)
        report["entries"] = len(files)
    elif step in ("build", "load"):
        from dynunc.lists.file_list import read_file_list

        fl = read_file_list(full, root="/data", num_classes=classes)
        report["entries"] = len(fl)
        report["index"] = fl.index.location
    elif step == "coreset":
        from dynunc.lists.file_list import read_coreset

        fl = read_coreset(coreset, full, root="/data", num_classes=classes)
        report["entries"] = len(fl)
    elif step == "startup":
        import torch

        from data.build import load_file_lists
        from data.reader import train_shard
        from utils.config import load_config
        from dynunc.training.recorder import Recorder

        config = load_config(None, ["DATA.DATASET", "custom", "MODEL.NUM_CLASSES", str(classes),
                                    "DATA.DATA_PATH_TRAIN", os.path.dirname(full),
                                    "DATA.TRAIN_FILE_LIST", os.path.basename(full), "DATA.DATA_PATH_VAL", ""])
        t_import, cpu_import = time.perf_counter(), time.process_time()
        before = memory_status()  # torch and DALI alone take hundreds of MiB
        data = load_file_lists(config)
        t_lists = time.perf_counter()
        order = train_shard(len(data.train), config.SEED, 0, rank, world, config.DATA.BATCH_SIZE_TRAIN)
        t_shard = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            Recorder(out, len(data.train), device=torch.device("cpu"))
        t_rec, cpu_rec = time.perf_counter(), time.process_time()
        report.update(entries=len(data.train), shard=len(order), imports_s=t_import - t0,
                      load_file_lists_s=t_lists - t_import, train_shard_s=t_shard - t_lists,
                      recorder_s=t_rec - t_shard, list_handling_s=t_rec - t_import,
                      list_handling_cpu_s=cpu_rec - cpu_import,
                      hwm_before_lists_mib=before["VmHWM"], rss_anon_before_lists_mib=before["RssAnon"])
    report["seconds"] = time.perf_counter() - t0
    report["cpu_s"] = time.process_time() - cpu0
    report.update(memory_status())
    return report


def spawn(step: str, args, rank: int = 0, world: int = 1) -> Child:
    return Child([sys.executable, os.path.abspath(__file__), "--child", step, "--dir", args.dir, "--classes",
                  args.classes, "--rank", rank, "--world", world], cwd=REPO)


def finish(child: Child) -> dict:
    """The child's report, with its wall time (measure.py) and its VmHWM as the peak."""
    run = child.wait()
    report = json.loads(run.stdout.strip().splitlines()[-1])
    report.update(wall_s=run.wall_s, peak_rss_mib=report.pop("VmHWM"))
    return report


def show(step: str, r: dict) -> None:
    extra = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                      if k not in ("wall_s", "peak_rss_mib"))
    print(f"{step:8s} wall {r['wall_s']:6.2f} s, peak RSS {r['peak_rss_mib']:7.0f} MiB  ({extra})", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=13_153_500, help="lines in the list (default: ImageNet-21K's)")
    p.add_argument("--classes", type=int, default=21841)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic lists go")
    p.add_argument("--processes", type=int, default=2, help="concurrent processes for the startup step")
    p.add_argument("--legacy", action="store_true", help="also time the line-by-line reader (slow)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic lists and the index")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    folder = os.path.join(args.dir, "bench_file_list_load")
    full, coreset = os.path.join(folder, "file_list.txt"), os.path.join(folder, "coreset.txt")
    if args.child:
        print(json.dumps(child(args.child, full, coreset, args.classes, args.rank, args.world)))
        return 0

    os.makedirs(folder, exist_ok=True)
    marker = full + ".lines"  # the line count the kept list was written with
    if not os.path.exists(marker) or open(marker).read() != str(args.lines):
        t0 = time.perf_counter()
        write_list(full, args.lines, args.classes)
        with open(marker, "w") as f:
            f.write(str(args.lines))
        kept = write_coreset(full, coreset, 0.7)
        print(f"wrote {args.lines} lines ({os.path.getsize(full) / 2**20:.0f} MiB) and a coreset of {kept} "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        time.sleep(2.5)  # an index is kept only for a list older than RACY_SECONDS
    try:
        if os.path.exists(full + ".idx"):
            os.unlink(full + ".idx")
        steps = (["legacy"] if args.legacy else []) + ["build", "load", "load", "coreset"]
        for step in steps:
            show(step, finish(spawn(step, args)))
        children = [spawn("startup", args, r, args.processes) for r in range(args.processes)]
        for r, started in enumerate(children):
            show(f"startup{r}", finish(started))
    finally:
        if not args.keep:
            for name in ("file_list.txt", "file_list.txt.idx", "file_list.txt.lines", "coreset.txt"):
                if os.path.exists(os.path.join(folder, name)):
                    os.unlink(os.path.join(folder, name))
            os.rmdir(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
