"""What recording embeddings (PRODUCE.EMBED_DIM, PRODUCE.EMBED_EPOCHS) costs produce mode.

    python benchmarks/bench_embeddings.py [--output bench_embeddings] [--epochs 5] [--repeats 2] [--nproc 2]
                                          [--merge-n 1281167] [--merge-parts 8]

1. In this process, one thread, the demo's data and model (resnet_tiny, 32 px): the end
   of an embedding epoch, timed by itself: the eval-mode eval-view pass over all N =
   4,000 training lines (DALI loader, batch BATCH_SIZE_VAL) plus the part file and the
   merge; rank 0's share of the pass in a 2-process run; and the capture alone (the
   classifier called on features, hook armed against unarmed).
2. The demo (configs/demo-mnist.yaml, the embedded MNIST sample, torchrun with --nproc
   CPU processes): produce runs without embeddings (EMBED_DIM 0) and with them at every
   epoch (EMBED_DIM 128, EMBED_EPOCHS all), alternated --repeats times. A produce epoch
   is timed whole (training with the recorder, the end-of-epoch pass and files,
   validation, the checkpoint) as the interval between consecutive checkpoints'
   modification times, epochs 1.. (epoch 0 includes warm-up); the median per setting,
   the overhead of an embedding epoch, and that overhead spread over whole runs of
   RUN_EPOCHS epochs with the default (one embedding epoch, the last).
3. Rank 0's merge of the per-rank parts into embed_{epoch}.npy (dynunc/training/embeddings.py)
   at --merge-n rows of 128 float16 values from --merge-parts parts: wall, CPU, peak RSS
   (in a child process; beside it, the same child that only imports the module).
4. The disk: N x D x 2 bytes per embedding epoch, for ImageNet-1K and ImageNet-21K.
Nothing is asserted; the figures are printed.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402
from engine import seconds_per_call  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
DIM = 128
RUN_EPOCHS = (8, 300)  # whole runs the per-epoch cost is spread over
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
    from dynunc.training.embeddings import merge_parts

    merge_parts(hdir, 0, "embed", n, DIM, parts)


def write_parts(hdir: str, n: int, parts: int) -> None:
    from dynunc.training.embeddings import part_paths

    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    for rank, shard in enumerate(np.array_split(order, parts)):
        shard = np.sort(shard)
        ipath, rpath = part_paths(hdir, 0, "embed", rank)
        np.save(ipath, shard.astype(np.int64))
        np.save(rpath, rng.standard_normal((len(shard), DIM), dtype=np.float32).astype(np.float16))


def end_of_epoch_pass(out: str, data: str, rounds: int) -> float:
    """The end of an embedding epoch at the demo's N, one process, one thread: the
    eval-mode eval-view pass over every training line (the demo's DALI loader, resnet_tiny)
    plus the part file and the merge; then rank 0's share of the pass in a 2-process run
    (every other line). Beside them, the capture alone (hook, projection, rows kept).
    Returns what a 2-process embedding epoch adds by this measure: rank 0's share of the
    pass, its part file and the merge."""
    from functools import partial

    import torch

    from data.build import build_eval_view_loader, load_file_lists
    from models.build import build_model
    import numpy as np

    from dynunc.training.embeddings import EmbeddingStore, FeatureCapture, embedding_pass
    from utils.config import load_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config(CONFIG, ["DATA.DATA_PATH_TRAIN", os.path.join(data, "train"),
                                  "DATA.DATA_PATH_VAL", os.path.join(data, "val"), "TRAIN.EPOCHS", "1"])
    model = build_model(config)
    cpu = torch.device("cpu")
    train = load_file_lists(config).train
    n = len(train)
    loader = partial(build_eval_view_loader, config, train, device_id=None)
    hdir = os.path.join(out, "end_of_epoch")
    shutil.rmtree(hdir, ignore_errors=True)

    class Rows:
        """What embedding_pass gives the features to (the Recorder's update_features)."""

        def __init__(self, store):
            self.store = store

        def update_features(self, indices, features, kind="embed"):
            self.store.add(indices, features)

    def timed(rank: int, world_size: int):
        """(seconds of this rank's share of the pass, of its part file and the merge)."""
        capture = FeatureCapture(model)
        store = EmbeddingStore(hdir, DIM, rank, world_size)
        try:
            start = time.perf_counter()
            embedding_pass(model, loader(np.arange(rank, n, world_size)), capture, Rows(store))
            passed = time.perf_counter()
            if world_size == 1:
                store.finish(0, "embed", n)
            return passed - start, time.perf_counter() - passed
        finally:
            capture.close()

    # Alternated rounds, the fastest of each kept: the machine is shared, and other jobs
    # only ever add time.
    whole, write, share = float("inf"), float("inf"), float("inf")
    for _ in range(rounds):
        one_pass, one_write = timed(0, 1)
        whole, write = min(whole, one_pass), min(write, one_write)
        share = min(share, timed(0, 2)[0])
    print(f"end of an embedding epoch at the demo's N = {n:,} (one process, one thread, fastest of {rounds}): "
          f"eval-view pass {whole:.2f} s, part file + merge {1e3 * write:.0f} ms; rank 0's share of the pass with "
          f"2 processes ({len(range(0, n, 2)):,} lines) {share:.2f} s", flush=True)

    batch = config.DATA.BATCH_SIZE_VAL
    classifier = model.get_classifier()
    features = torch.randn(batch, classifier.in_features)
    indices = torch.arange(batch)
    capture = FeatureCapture(model)
    store = EmbeddingStore(os.path.join(out, "capture"), DIM, 0, 1)

    def armed():
        with capture.armed():
            classifier(features)
        store.add(indices, capture.take())

    bare = min(seconds_per_call(lambda: classifier(features), cpu, warmup=20, iters=2000) for _ in range(rounds))
    captured = min(seconds_per_call(armed, cpu, warmup=20, iters=2000) for _ in range(rounds))
    capture.close()
    print(f"the capture alone ({batch} x {classifier.in_features} features -> {DIM}): classifier {1e6 * bare:.0f} us, "
          f"with the capture {1e6 * captured:.0f} us ({1e6 * (captured - bare):+.0f} us per batch of {batch}, "
          f"{-(-n // batch)} batches per pass)", flush=True)
    return share + write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.join(ROOT, "bench_embeddings"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--merge-n", type=int, default=SIZES["ImageNet-1K train"])
    ap.add_argument("--merge-parts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="alternated timing rounds of part 1 (the fastest kept)")
    ap.add_argument("--skip-runs", action="store_true", help="skip the produce runs (part 2)")
    args = ap.parse_args()
    out = os.path.abspath(args.output)
    data = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(data, "train", "file_list.txt")):
        run_child([sys.executable, "-m", "data.mnist_demo", data], cwd=ROOT)
    pass_s = end_of_epoch_pass(out, data, args.rounds)

    times = {False: [], True: []}
    for repeat in range(0 if args.skip_runs else args.repeats):
        for embed in (False, True):
            run_dir = os.path.join(out, f"{'embed' if embed else 'plain'}_{repeat}")
            shutil.rmtree(run_dir, ignore_errors=True)
            epoch_s = produce(run_dir, data, args.epochs, args.nproc, embed)
            times[embed] += epoch_s
            print(f"{'with' if embed else 'without'} embeddings, run {repeat}: epochs 1..{args.epochs - 1} "
                  f"{', '.join(f'{s:.2f}' for s in epoch_s)} s", flush=True)
    if times[False]:
        plain, embed = statistics.median(times[False]), statistics.median(times[True])
        extra = embed - plain
        print(f"produce epoch (median of {len(times[False])}): {plain:.2f} s without embeddings, {embed:.2f} s with "
              f"them at D = {DIM}: {100 * (embed / plain - 1):+.1f}% per embedding epoch", flush=True)
        print(f"the pass timed alone (part 1: rank 0's share, part file, merge) {pass_s:.2f} s: "
              f"{100 * pass_s / plain:+.1f}% of the produce epoch without embeddings")
        for epochs in RUN_EPOCHS:
            print(f"a run of {epochs} epochs with the default, one embedding epoch: "
                  f"{100 * extra / (epochs * plain):+.2f}% of its time by the whole epochs' medians, "
                  f"{100 * pass_s / (epochs * plain):+.2f}% by the pass timed alone")

    with tempfile.TemporaryDirectory(dir=out) as hdir:
        write_parts(hdir, args.merge_n, args.merge_parts)
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); from benchmarks.bench_embeddings import merge_child; "
                f"merge_child({hdir!r}, {args.merge_n}, {args.merge_parts})")
        run = run_child([sys.executable, "-c", code], cwd=ROOT)
        size = os.path.getsize(os.path.join(hdir, "embed_0.npy"))
        imports = run_child([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); "
                             f"import benchmarks.bench_embeddings, dynunc.training.embeddings"], cwd=ROOT)
    print(f"merge of {args.merge_parts} parts into {args.merge_n:,} x {DIM} float16 ({size / 2**20:.0f} MiB): "
          f"{run.summary()}; the imports alone: peak RSS {imports.peak_rss_mib:.0f} MiB")

    for name, n in SIZES.items():
        print(f"disk per embedding epoch, {name} (N = {n:,}) at D = {DIM}: {n * DIM * 2 / 1e9:.3f} GB "
              f"({n * DIM * 2 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
