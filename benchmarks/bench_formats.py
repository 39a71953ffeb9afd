"""The data formats: the loader's images/s per format, and the key table at ImageNet-21K's size.

    python benchmarks/bench_formats.py loader --dir DIR [--images 800] [--epochs 2] [--repeat 2]
    python benchmarks/bench_formats.py keys --dir DIR [--keys 13000000] [--per-shard 10000]

loader: the ImageNet-like JPEG tree of bench_loader.py (~500 x 375 px, ~110 KB each), also
written as WebDataset shards (100 samples each), a save_to_disk dataset and a parquet file
(data/export.py). For each format, two processes at once (ranks 0 and 1 of a world of 2,
as torchrun would start them) each run --epochs epochs of data.build.build_train_loader on
the CPU pipeline (decode with a random crop, resize to 224, flip, normalise; DATA.NUM_THREADS
= 1, DATA.NUM_WORKERS = 1 reading thread each); an epoch's rate is counted from the end of
its first batch. Printed: the two processes' images/s summed, per format.

keys: synthetic shards of --keys samples (each a 1-byte image KEY.jpg and KEY.cls, keys
'%010d', --per-shard samples a shard: 2 KiB of tar per sample), then, each in a fresh
process: the shards' key table built by scanning the tars (ShardSet, the first run on
them; indexes are cached), built again from the cached indexes (every later run), and
the key table written as a history's sample_keys.txt with its fingerprint (what a produce
run does at start). Wall time and peak RSS of each. The shards are removed at the end
unless --keep. --indexes-only: see write_indexes_only (13M keys without 26 GiB of tars).
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import Child, run_child  # noqa: E402

FORMATS = ("folder", "wds", "hf", "parquet")


# -----------------------------------------------------------------------------
# Loader throughput
# -----------------------------------------------------------------------------
def format_opts(fmt: str, data: str) -> list:
    return {
        "folder": ["DATA.DATA_PATH_TRAIN", os.path.join(data, "train")],
        "wds": ["DATA.FORMAT", "wds", "DATA.TRAIN_SHARDS", os.path.join(data, "shards", "train-{000..%03d}.tar")],
        "hf": ["DATA.FORMAT", "hf", "DATA.HF_TRAIN", os.path.join(data, "hf")],
        "parquet": ["DATA.FORMAT", "hf", "DATA.HF_TRAIN", os.path.join(data, "train.parquet")],
    }[fmt]


def prepare(data: str, images: int, classes: int) -> int:
    """The tree and its three other formats; returns the shard count."""
    from benchmarks.bench_loader import make_tree
    from data.export import list_samples, to_hf, to_shards

    train = make_tree(data, images, classes)
    shards = os.path.join(data, "shards")
    if not os.path.isdir(shards):
        samples = list_samples(os.path.join(train, "file_list.txt"))
        os.makedirs(shards + ".tmp", exist_ok=True)
        to_shards(samples, os.path.join(shards + ".tmp", "train-%03d.tar"), 100)
        to_hf(samples, classes, folder=os.path.join(data, "hf"), parquet=os.path.join(data, "train.parquet"))
        os.replace(shards + ".tmp", shards)
    return len([n for n in os.listdir(shards) if n.endswith(".tar")])


def loader_child(fmt: str, data: str, rank: int, args) -> dict:
    import torch

    from data.build import build_train_loader, load_file_lists
    from utils.config import load_config

    torch.set_num_threads(1)
    opts = format_opts(fmt, data)
    if fmt == "wds":
        opts[-1] = opts[-1] % (args.shards - 1)
    config = load_config(None, [
        *opts, "MODEL.NUM_CLASSES", str(args.classes), "DATA.DATASET", "custom", "DATA.IMG_SIZE", "224",
        "DATA.BATCH_SIZE_TRAIN", str(args.batch), "DATA.DECODE_DEVICE", "cpu", "DATA.NUM_THREADS", "1",
        "DATA.NUM_WORKERS", "1", "AUG.AUTO_AUGMENT", "False"])
    t0 = time.perf_counter()
    train = load_file_lists(config).train
    open_s = time.perf_counter() - t0
    images, seconds = 0, 0.0
    for epoch in range(args.epochs):
        first = None
        for batch in build_train_loader(config, train, epoch, rank, 2, None):
            if first is None:
                first = time.perf_counter()
                continue
            images += batch["images"].shape[0]
        seconds += time.perf_counter() - first
    return {"images": images, "seconds": seconds, "open_s": open_s}


def bench_loader(args) -> None:
    os.makedirs(args.dir, exist_ok=True)
    args.shards = prepare(args.dir, args.images, args.classes)
    print(f"{args.images} JPEGs ({args.shards} shards); 2 processes x (1 DALI thread + 1 reading thread), batch "
          f"{args.batch}, {args.epochs} epochs, CPU decode; load average {os.getloadavg()[0]:.1f}", flush=True)
    rates = {f: [] for f in FORMATS}
    for _ in range(args.repeat):
        for fmt in FORMATS:
            children = [Child([sys.executable, os.path.abspath(__file__), "loader-child", "--fmt", fmt, "--dir",
                               args.dir, "--rank", str(r), "--images", str(args.images), "--classes", str(args.classes),
                               "--batch", str(args.batch), "--epochs", str(args.epochs), "--shards", str(args.shards)],
                              cwd=ROOT) for r in range(2)]
            results = [json.loads(c.wait().stdout.strip().splitlines()[-1]) for c in children]
            rate = sum(r["images"] / r["seconds"] for r in results)
            rates[fmt].append(rate)
            print(f"{fmt:8s} {rate:7.1f} images/s (2 processes; opening the data "
                  f"{max(r['open_s'] for r in results):.2f} s)", flush=True)
    print(f"best of {args.repeat}: " + ", ".join(f"{f} {max(rates[f]):.1f}" for f in FORMATS)
          + f" images/s; load average now {os.getloadavg()[0]:.1f}")


# -----------------------------------------------------------------------------
# The key table at scale
# -----------------------------------------------------------------------------
def _octal_fields(values: np.ndarray, digits: int) -> np.ndarray:
    """(n, digits) ASCII octal digits of `values`."""
    out = np.empty((len(values), digits), dtype=np.uint8)
    v = values.astype(np.int64).copy()
    for d in range(digits - 1, -1, -1):
        out[:, d] = 48 + (v & 7)
        v >>= 3
    return out


def synthetic_shard(first: int, n: int) -> bytes:
    """n samples, keys '%010d' from `first`: KEY.jpg (1 byte) and KEY.cls (the key mod 1000)."""
    from data.shards import tar_member

    blocks = np.zeros((n, 4, 512), dtype=np.uint8)
    for j, (ext, body) in enumerate((("jpg", b"\xff"), ("cls", b"0"))):
        template = np.frombuffer(tar_member(f"{0:010d}.{ext}", body), dtype=np.uint8).reshape(2, 512)
        blocks[:, 2 * j] = template[0]
        blocks[:, 2 * j + 1] = template[1]
    keys = np.arange(first, first + n)
    digits = 48 + (keys[:, None] // 10 ** np.arange(9, -1, -1)[None, :]) % 10
    blocks[:, 0, :10] = digits
    blocks[:, 2, :10] = digits
    labels = keys % 1000
    blocks[:, 3, 0] = 48 + labels // 100
    blocks[:, 3, 1] = 48 + (labels // 10) % 10
    blocks[:, 3, 2] = 48 + labels % 10
    for j in (0, 2):
        if j == 2:
            blocks[:, 2, 124:136] = np.frombuffer(b"%011o\0" % 3, dtype=np.uint8)
        header = blocks[:, j]
        header[:, 148:156] = 32
        total = header.sum(axis=1, dtype=np.int64)
        header[:, 148:154] = _octal_fields(total, 6)
        header[:, 154] = 0
        header[:, 155] = 32
    return blocks.tobytes() + bytes(1024)


def keys_child(what: str, args) -> dict:
    from data.shards import ShardSet

    pattern = os.path.join(args.dir, "k-{%s..%s}.tar" % ("0" * 6, f"{args.shard_count - 1:06d}"))
    t0 = time.perf_counter()
    shards = ShardSet(pattern)
    built = time.perf_counter() - t0
    out = {"what": what, "keys": len(shards), "build_s": built}
    hdir = os.path.join(args.dir, "history")
    if what == "write_keys":  # what the recorder does at a produce run's start (rank 0)
        from dynunc.history import SAMPLE_KEYS_NAME, sample_keys_path, write_fingerprint
        from dynunc.io import atomic_open

        os.makedirs(hdir, exist_ok=True)
        t1 = time.perf_counter()
        fingerprint = shards.keys.fingerprint(SAMPLE_KEYS_NAME)
        with atomic_open(sample_keys_path(hdir), "wb") as f:
            f.write(shards.keys.text())
        write_fingerprint(hdir, fingerprint)
        out["step_s"] = time.perf_counter() - t1
    return out


def read_keys_child(args) -> dict:
    """get_coreset.py without a file list: the history's sample_keys.txt read and checked."""
    from dynunc.history import read_sample_keys

    t0 = time.perf_counter()
    keys = read_sample_keys(os.path.join(args.dir, "history"))
    return {"what": "read_keys", "keys": len(keys), "build_s": 0.0, "step_s": time.perf_counter() - t0}


def write_indexes_only(args) -> None:
    """--indexes-only: one real shard is scanned; every other shard is a sparse file of the
    same size (no disk blocks) whose cached index is that scan's with its own keys, as the
    scan would have written it. The cached-index steps then run on ImageNet-21K's key count
    without 26 GiB of tar on disk; the scan step is left out."""
    from data.keyed import key_hashes
    from data.shards import INDEX_VERSION, scan_shard, shard_index_path
    from dynunc.io import atomic_open

    template_path = os.path.join(args.dir, "template.tar")
    with open(template_path, "wb") as f:
        f.write(synthetic_shard(0, args.per_shard))
    template = scan_shard(template_path)
    size = os.path.getsize(template_path)
    for s in range(args.shard_count):
        path = os.path.join(args.dir, f"k-{s:06d}.tar")
        n = min(args.per_shard, args.keys - s * args.per_shard)
        if os.path.exists(path) and os.path.exists(shard_index_path(path)):
            continue
        with open(path, "wb") as f:
            f.truncate(size if n == args.per_shard else 0)
        if n != args.per_shard:  # the last shard, shorter: a real one
            with open(path, "wb") as f:
                f.write(synthetic_shard(s * args.per_shard, n))
        os.utime(path, ns=(10**18, 10**18))
        if n != args.per_shard:
            continue
        arrays = {k: v.copy() for k, v in template.items()}
        blob = arrays["key_blob"].reshape(n, 11)
        blob[:, :6] = np.frombuffer(f"{s:06d}".encode(), dtype=np.uint8)
        arrays["key_hash"] = key_hashes([bytes(row[:10]) for row in blob])
        st = os.stat(path)
        with atomic_open(shard_index_path(path), "wb") as out:
            np.savez(out, identity=np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns, n], np.int64), **arrays)


def bench_keys(args) -> None:
    os.makedirs(args.dir, exist_ok=True)
    args.shard_count = -(-args.keys // args.per_shard)
    t0 = time.perf_counter()
    if args.indexes_only:
        write_indexes_only(args)
    for s in range(args.shard_count):
        path = os.path.join(args.dir, f"k-{s:06d}.tar")
        if not os.path.exists(path):
            n = min(args.per_shard, args.keys - s * args.per_shard)
            with open(path + ".tmp", "wb") as f:
                f.write(synthetic_shard(s * args.per_shard, n))
            os.replace(path + ".tmp", path)
            os.utime(path, ns=(10**18, 10**18))  # an old file: its index is kept
    size = sum(os.path.getsize(os.path.join(args.dir, f"k-{s:06d}.tar")) for s in range(args.shard_count))
    print(f"{args.keys:,} samples in {args.shard_count} shards ({size / 2**30:.1f} GiB"
          f"{', sparse: cached indexes only' if args.indexes_only else ''}) ready in "
          f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        steps = (("scan", "key table, scanning the tars (first run; writes the indexes)"),
                 ("cached", "key table from the cached indexes (every later run)"),
                 ("write_keys", "key table + sample_keys.txt and file_list.json written (produce start, rank 0)"),
                 ("read_keys", "sample_keys.txt read by get_coreset.py (read_sample_keys)"))
        for what, label in steps[1:] if args.indexes_only else steps:
            cmd = [sys.executable, os.path.abspath(__file__), "keys-child", "--what", what, "--dir", args.dir,
                   "--keys", str(args.keys), "--per-shard", str(args.per_shard)]
            run = run_child(cmd, cwd=ROOT)
            result = json.loads(run.stdout.strip().splitlines()[-1])
            extra = f"; the step itself {result['step_s']:.1f} s" if "step_s" in result else ""
            print(f"{label}: {result['keys']:,} keys, built in {result['build_s']:.1f} s{extra}; process "
                  f"{run.summary()}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["loader", "keys", "loader-child", "keys-child"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keys", type=int, default=13_000_000)
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keys: keep the synthetic shards")
    ap.add_argument("--indexes-only", action="store_true",
                    help="keys: sparse shards with their cached indexes written directly (no scan step)")
    ap.add_argument("--fmt", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.command == "loader":
        bench_loader(args)
    elif args.command == "keys":
        bench_keys(args)
    elif args.command == "loader-child":
        print(json.dumps(loader_child(args.fmt, args.dir, args.rank, args)))
    else:
        args.shard_count = -(-args.keys // args.per_shard)
        print(json.dumps(read_keys_child(args) if args.what == "read_keys" else keys_child(args.what, args)))


if __name__ == "__main__":
    main()
