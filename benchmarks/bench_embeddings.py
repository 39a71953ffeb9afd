"""What recording embeddings (PRODUCE.EMBED_DIM, PRODUCE.EMBED_EPOCHS) costs produce mode.

    python benchmarks/bench_embeddings.py [--output bench_embeddings] [--epochs 5] [--repeats 2] [--nproc 2]
                                          [--merge-n 1281167] [--merge-parts 8]

1. The demo (configs/demo-mnist.yaml, the embedded MNIST sample, torchrun with --nproc
   CPU processes): produce runs without embeddings (EMBED_DIM 0) and with them at every
   epoch (EMBED_DIM 128, EMBED_EPOCHS all), alternated --repeats times. A produce epoch
   is timed whole (training with the recorder, the end-of-epoch files, validation, the
   checkpoint) as the interval between consecutive checkpoints' modification times,
   epochs 1.. (epoch 0 includes warm-up); the median per setting, and the overhead.
2. Rank 0's merge of the per-rank parts into embed_{epoch}.npy (pruning/embeddings.py)
   at --merge-n rows of 128 float16 values from --merge-parts parts: wall, CPU, peak RSS
   (in a child process).
3. The disk: N x D x 2 bytes per embedding epoch, for ImageNet-1K and ImageNet-21K.
Nothing is asserted; the figures are printed.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
DIM = 128
SIZES = {"ImageNet-1K train": 1_281_167, "ImageNet-1K val": 50_000, "ImageNet-21K train": 13_153_500}


def produce(out: str, data: str, epochs: int, nproc: int, embed: bool):
    """One produce run of the demo; the seconds of each epoch after the first."""
    opts = ["DATA.DATA_PATH_TRAIN", os.path.join(data, "train"), "DATA.DATA_PATH_VAL", os.path.join(data, "val"),
            "TRAIN.EPOCHS", str(epochs), "PRODUCE.EMBED_DIM", str(DIM if embed else 0),
            "PRODUCE.EMBED_EPOCHS", str(list(range(epochs)))]
    run_child([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               os.path.join(ROOT, "main_and_produce.py"), "--config", CONFIG, "--output", out, "--opts", *opts],
              cwd=ROOT)
    stamps = [os.stat(os.path.join(out, "ckpts", f"ckpt_epoch_{e}.pth")).st_mtime_ns / 1e9 for e in range(epochs)]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def merge_child(hdir: str, n: int, parts: int) -> None:
    """Run in a child process: merge `parts` part files of embed_0.npy (written by the
    parent) and remove them."""
    from pruning.embeddings import merge_parts

    merge_parts(hdir, 0, "embed", n, DIM, parts)


def write_parts(hdir: str, n: int, parts: int) -> None:
    from pruning.embeddings import part_paths

    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    for rank, shard in enumerate(np.array_split(order, parts)):
        shard = np.sort(shard)
        ipath, rpath = part_paths(hdir, 0, "embed", rank)
        np.save(ipath, shard.astype(np.int64))
        np.save(rpath, rng.standard_normal((len(shard), DIM), dtype=np.float32).astype(np.float16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.join(ROOT, "bench_embeddings"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--merge-n", type=int, default=SIZES["ImageNet-1K train"])
    ap.add_argument("--merge-parts", type=int, default=8)
    args = ap.parse_args()
    out = os.path.abspath(args.output)
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "train", "file_list.txt")):
        run_child([sys.executable, "-m", "data.mnist_demo", data], cwd=ROOT)

    times = {False: [], True: []}
    for repeat in range(args.repeats):
        for embed in (False, True):
            run_dir = os.path.join(out, f"{'embed' if embed else 'plain'}_{repeat}")
            shutil.rmtree(run_dir, ignore_errors=True)
            epoch_s = produce(run_dir, data, args.epochs, args.nproc, embed)
            times[embed] += epoch_s
            print(f"{'with' if embed else 'without'} embeddings, run {repeat}: epochs 1..{args.epochs - 1} "
                  f"{', '.join(f'{s:.2f}' for s in epoch_s)} s", flush=True)
    plain, embed = statistics.median(times[False]), statistics.median(times[True])
    print(f"produce epoch (median of {len(times[False])}): {plain:.2f} s without embeddings, {embed:.2f} s with "
          f"them at D = {DIM}: {100 * (embed / plain - 1):+.1f}%")

    with tempfile.TemporaryDirectory(dir=out) as hdir:
        write_parts(hdir, args.merge_n, args.merge_parts)
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); from benchmarks.bench_embeddings import merge_child; "
                f"merge_child({hdir!r}, {args.merge_n}, {args.merge_parts})")
        run = run_child([sys.executable, "-c", code], cwd=ROOT)
        size = os.path.getsize(os.path.join(hdir, "embed_0.npy"))
    print(f"merge of {args.merge_parts} parts into {args.merge_n:,} x {DIM} float16 ({size / 2**20:.0f} MiB): "
          f"{run.summary()}")

    for name, n in SIZES.items():
        print(f"disk per embedding epoch, {name} (N = {n:,}) at D = {DIM}: {n * DIM * 2 / 1e9:.3f} GB "
              f"({n * DIM * 2 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
