"""What recording embeddings (PRODUCE.EMBED_DIM, PRODUCE.EMBED_EPOCHS) costs produce mode.

    python benchmarks/bench_embeddings.py [--output bench_embeddings] [--epochs 5] [--repeats 2] [--nproc 2]
                                          [--merge-n 1281167] [--merge-parts 8]

1. In this process, one thread, the demo's shapes (resnet_tiny, batch 50, 32 px, 10
   classes): the recorder's eval-view forward with the embedding capture (hook,
   projection, rows kept) against without, next to one training step; the capture
   alone (the classifier called on features, hook armed against unarmed); and the end
   of an embedding epoch at the demo's N = 4,000 (part file, merge, one process).
2. The demo (configs/demo-mnist.yaml, the embedded MNIST sample, torchrun with --nproc
   CPU processes): produce runs without embeddings (EMBED_DIM 0) and with them at every
   epoch (EMBED_DIM 128, EMBED_EPOCHS all), alternated --repeats times. A produce epoch
   is timed whole (training with the recorder, the end-of-epoch files, validation, the
   checkpoint) as the interval between consecutive checkpoints' modification times,
   epochs 1.. (epoch 0 includes warm-up); the median per setting, and the overhead.
3. Rank 0's merge of the per-rank parts into embed_{epoch}.npy (pruning/embeddings.py)
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

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402
from engine import seconds_per_call  # noqa: E402

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


def per_batch(out: str, rounds: int) -> None:
    import torch

    from models.build import build_model
    from pruning.embeddings import EmbeddingRecorder
    from pruning.history import history_dir
    from pruning.recorder import PredictionRecorder
    from utils.config import load_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = load_config(CONFIG, ["TRAIN.EPOCHS", "1"])
    model = build_model(config)
    cpu = torch.device("cpu")
    batch, n = config.DATA.BATCH_SIZE_TRAIN, 4000
    images = torch.randn(batch, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    labels = torch.randint(0, config.MODEL.NUM_CLASSES, (batch,))
    indices = torch.arange(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    recorders, embedders = {}, []
    for embed in (False, True):
        run_dir = os.path.join(out, f"per_batch_{'embed' if embed else 'plain'}")
        embedder = EmbeddingRecorder(model, DIM, [0], history_dir(run_dir), 0, 1, cpu) if embed else None
        recorders[embed] = PredictionRecorder(n, run_dir, cpu, True, embeddings=embedder)
        recorders[embed].start_epoch(0)
        embedders += [embedder] if embedder is not None else []
    # Alternated rounds, the fastest of each kept: the machine is shared, and other jobs
    # only ever add time.
    step, timings = float("inf"), {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        model.train()
        step = min(step, seconds_per_call(train_step, cpu, warmup=2, iters=20))
        for embed, recorder in recorders.items():
            timings[embed] = min(timings[embed], seconds_per_call(
                lambda: recorder.record(model, images, labels, indices), cpu, warmup=2, iters=40))
    for embedder in embedders:
        embedder.close()
    plain, embed = timings[False], timings[True]
    print(f"per batch of {batch} (one thread, fastest of {rounds} rounds): training step {1e3 * step:.2f} ms, recorder forward "
          f"{1e3 * plain:.2f} ms without embeddings, {1e3 * embed:.2f} ms with them ({1e3 * (embed - plain):+.2f} ms: "
          f"{100 * (embed - plain) / (step + plain):+.1f}% of step + recorder forward)", flush=True)
    # The capture alone, isolated from the forward: the classifier on pre-logits features,
    # with the hook armed (projection, rows kept) against unarmed.
    classifier = model.get_classifier()
    features = torch.randn(batch, classifier.in_features)
    embedder = EmbeddingRecorder(model, DIM, [0], os.path.join(out, "per_batch_capture"), 0, 1, cpu)
    embedder.start(0, "embed")

    def armed():
        with embedder.capture("embed", indices):
            classifier(features)

    bare = min(seconds_per_call(lambda: classifier(features), cpu, warmup=20, iters=2000) for _ in range(rounds))
    captured = min(seconds_per_call(armed, cpu, warmup=20, iters=2000) for _ in range(rounds))
    embedder.close()
    print(f"the capture alone ({batch} x {classifier.in_features} features -> {DIM}): classifier {1e6 * bare:.0f} us, "
          f"with the capture {1e6 * captured:.0f} us ({1e6 * (captured - bare):+.0f} us per batch: "
          f"{100 * (captured - bare) / (step + plain):+.2f}% of step + recorder forward)", flush=True)
    hdir = os.path.join(out, "per_batch_end")
    shutil.rmtree(hdir, ignore_errors=True)
    embedder = EmbeddingRecorder(model, DIM, [0], hdir, 0, 1, cpu)
    rows = torch.randn(n, DIM).half()

    def end_of_epoch():
        embedder.start(0, "embed")
        embedder.stores["embed"].add(torch.arange(n), rows)
        embedder.finish(0, "embed", n)

    end = seconds_per_call(end_of_epoch, cpu, warmup=2, iters=20)
    embedder.close()
    print(f"end of an embedding epoch at N = {n} (part file, merge, one process): {1e3 * end:.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.join(ROOT, "bench_embeddings"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--merge-n", type=int, default=SIZES["ImageNet-1K train"])
    ap.add_argument("--merge-parts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9, help="alternated timing rounds of part 1 (the fastest kept)")
    ap.add_argument("--skip-runs", action="store_true", help="skip the produce runs (part 2)")
    args = ap.parse_args()
    out = os.path.abspath(args.output)
    data = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    per_batch(out, args.rounds)
    if not os.path.exists(os.path.join(data, "train", "file_list.txt")):
        run_child([sys.executable, "-m", "data.mnist_demo", data], cwd=ROOT)

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
        print(f"produce epoch (median of {len(times[False])}): {plain:.2f} s without embeddings, {embed:.2f} s with "
              f"them at D = {DIM}: {100 * (embed / plain - 1):+.1f}%")

    with tempfile.TemporaryDirectory(dir=out) as hdir:
        write_parts(hdir, args.merge_n, args.merge_parts)
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); from benchmarks.bench_embeddings import merge_child; "
                f"merge_child({hdir!r}, {args.merge_n}, {args.merge_parts})")
        run = run_child([sys.executable, "-c", code], cwd=ROOT)
        size = os.path.getsize(os.path.join(hdir, "embed_0.npy"))
        imports = run_child([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); "
                             f"import benchmarks.bench_embeddings, pruning.embeddings"], cwd=ROOT)
    print(f"merge of {args.merge_parts} parts into {args.merge_n:,} x {DIM} float16 ({size / 2**20:.0f} MiB): "
          f"{run.summary()}; the imports alone: peak RSS {imports.peak_rss_mib:.0f} MiB")

    for name, n in SIZES.items():
        print(f"disk per embedding epoch, {name} (N = {n:,}) at D = {DIM}: {n * DIM * 2 / 1e9:.3f} GB "
              f"({n * DIM * 2 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
