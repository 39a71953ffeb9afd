"""The pruning curve on the embedded MNIST data: top-1 against the fraction kept, for
every pruning method of get_coreset.py, with several training seeds, beside random and
the full training set.

    python scripts/pruning_curve.py --output docs/curves/clean
    python scripts/pruning_curve.py --output docs/curves/noisy --label-noise 0.2

1. write the demo data (data.mnist_demo); with --label-noise, a relabelled copy of the
   train list (data.label_noise) that everything after trains on;
2. one produce run (main_and_produce.py) on that list;
3. coresets with get_coreset.py, for every method and fraction, per seed (random and CCS
   sample with the seed; the other methods give the same coreset for every seed). The
   embedding methods (moderate, prototype, kcenter, d2) read the produce run's embeddings
   (PRODUCE.EMBED_DIM 128, the last epoch); a produce run from before they were recorded
   is kept for the other methods, and a second one (OUTPUT/produce-embed) records them;
4. main.py on each coreset and on the full list, once per seed, --jobs runs at a time;
5. OUTPUT/curve.csv (one row per method, fraction and seed), OUTPUT/curve.png (mean
   and standard deviation over the seeds against the fraction; the full-data accuracy as
   a line) and OUTPUT/curve.md (the same as tables). With label noise, each row also gives
   the share of the relabelled images that the coreset kept.

Finished runs are not repeated: rerunning the script after an interruption continues.
"""
import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dynunc.lists.file_list import read_coreset, read_file_list  # noqa: E402
from data.label_noise import flipped_path  # noqa: E402
from dynunc.report.accuracy import CSV_FIELDS, FULL, Accuracy, summarise  # noqa: E402
from dynunc.history import history_dir, list_embed_epochs  # noqa: E402
from dynunc.report.figures import accuracy_curve  # noqa: E402
from dynunc.io import atomic_open, atomic_write_text  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
PLAIN_METHODS = ("dynunc", "forgetting", "el2n", "aum", "variability", "confidence", "random")
# Methods that read the produce run's embeddings (embed_{epoch}.npy, the last epoch's).
EMBEDDING_METHODS = ("moderate", "prototype", "kcenter", "d2")
EMBED_DIM = 128  # PRODUCE.EMBED_DIM of the produce run
# Variants that change the selection rule of a method: name -> (method, extra get_coreset flags).
SELECTION_VARIANTS = {"dynunc-ccs": ("dynunc", ["--ccs", "{ccs_beta}"]),
                      "dynunc-balanced": ("dynunc", ["--class-balanced"]),
                      # prototype as it was before issue 26: one k-means run, the hardest kept at every fraction
                      "prototype-hard1": ("prototype", ["--prototype-keep", "hard", "--prototype-restarts", "1"]),
                      # the restarts without Sorscher's rule: the hardest kept at every fraction
                      "prototype-hard": ("prototype", ["--prototype-keep", "hard"])}


@dataclass(frozen=True)
class Job:
    method: str
    fraction: float
    seed: int
    coreset: Optional[str]  # None: the full training list
    output: str


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(cmd: Sequence[str], quiet: bool = False) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    if not quiet:
        log("+ " + " ".join(cmd))
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}" if quiet else ""
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}{detail}")


def finished(output: str, epochs: int) -> Optional[dict]:
    """The last metrics record of a run that completed all its epochs, else None."""
    path = os.path.join(output, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[-1] if records and records[-1]["epoch"] == epochs - 1 else None


def training_opts(data: str, train_list: str, epochs: int) -> List[str]:
    """The --opts of every run of a curve (produce and training): its data, list and epochs."""
    return ["DATA.DATA_PATH_TRAIN", os.path.join(data, "train"), "DATA.DATA_PATH_VAL", os.path.join(data, "val"),
            "DATA.TRAIN_FILE_LIST", train_list, "TRAIN.EPOCHS", str(epochs), "DATA.NUM_WORKERS", "1"]


def fraction_text(fraction: float) -> str:
    return repr(float(fraction))


def has_embeddings(produce: str) -> bool:
    return bool(list_embed_epochs(history_dir(produce)))


def make_coresets(args, produce: str, train_list: str, seed: int,
                  embedded: Optional[str] = None) -> Dict[str, Dict[float, str]]:
    """{method: {fraction: coreset path}} for one seed. `embedded`: the produce run whose
    embeddings the embedding methods read (default `produce`)."""
    folder = os.path.join(args.output, "coresets", f"seed{seed}")
    fractions = [fraction_text(f) for f in args.fractions]
    paths: Dict[str, Dict[float, str]] = {}

    def base(run: str) -> List[str]:
        return [sys.executable, "get_coreset.py", "--input", run, "--dataset_file_list", train_list,
                "--window", str(args.window), "--seed", str(seed), "--fraction", *fractions]

    for group, run in ((PLAIN_METHODS, produce), (EMBEDDING_METHODS, embedded or produce)):
        chosen = [m for m in args.methods if m in group]
        if chosen:
            sh(base(run) + ["--method", *chosen, "--output", os.path.join(folder, "{method}_{fraction}.txt")],
               quiet=True)
            for m in chosen:
                paths[m] = {f: os.path.join(folder, f"{m}_{fraction_text(f)}.txt") for f in args.fractions}
    for name in (m for m in args.methods if m in SELECTION_VARIANTS):
        method, flags = SELECTION_VARIANTS[name]
        flags = [flag.format(ccs_beta=args.ccs_beta) for flag in flags]
        run = (embedded or produce) if method in EMBEDDING_METHODS else produce
        sh(base(run) + ["--method", method, *flags, "--output", os.path.join(folder, f"{name}_{{fraction}}.txt")],
           quiet=True)
        paths[name] = {f: os.path.join(folder, f"{name}_{fraction_text(f)}.txt") for f in args.fractions}
    return paths


def train(args, job: Job, train_opts: List[str]) -> dict:
    record = finished(job.output, args.epochs)
    if record is None:
        cmd = [sys.executable, "main.py", "--config", CONFIG, "--output", job.output]
        if job.coreset:
            cmd += ["--coreset", job.coreset]
        sh(cmd + ["--opts", *train_opts, "SEED", str(job.seed)], quiet=True)
        record = finished(job.output, args.epochs)
        if record is None:
            raise RuntimeError(f"{job.output}: the run ended without its last epoch's metrics")
    log(f"{job.method} {job.fraction} seed {job.seed}: top-1 {record['acc1']:.2f}")
    return record


def flipped_share(kept: Optional[np.ndarray], flipped: np.ndarray) -> float:
    """The share of the flipped rows that the coreset's rows `kept` hold (None: the full list)."""
    if kept is None:
        return 1.0
    return float(np.isin(flipped, kept).mean()) if len(flipped) else float("nan")


def write_csv(path: str, rows: List[dict], fields: Sequence[str]) -> None:
    """`rows` as CSV with the columns `fields` (other keys left out), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot(rows: List[dict], path: str, title: str) -> None:
    """The curve figure (dynunc/report/figures.py's, which the report also draws from this CSV)."""
    runs = [Accuracy(r["method"], float(r["fraction"]), float(r["top1"]), path) for r in rows]
    with atomic_open(path, "wb") as f:
        f.write(accuracy_curve(summarise(runs), title))


def summary(rows: List[dict]) -> str:
    """Markdown tables of the curve: top-1 mean +- standard deviation over the seeds per
    method (rows) and fraction (columns); with label noise, the mean share of the flipped
    images each coreset kept."""
    fractions = sorted({r["fraction"] for r in rows if r["method"] != FULL}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def cell(method: str, fraction: float, key: str, fmt: str) -> str:
        values = [float(r[key]) for r in rows if r["method"] == method and (method == FULL or r["fraction"] == fraction)
                  and r[key] != ""]
        if not values:
            return ""
        return fmt.format(np.mean(values), np.std(values), len(values))

    header = "| method | " + " | ".join(f"keep {f:g}" for f in fractions) + " |\n|---|" + "---:|" * len(fractions)
    lines = ["top-1 (%), mean +- std over the seeds (population std)", "", header]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(m, f, "top1", "{:.2f} +- {:.2f}") for f in fractions) + " |")
    if any(r["flipped_kept"] != "" for r in rows):
        lines += ["", "share of the flipped (mislabelled) training images kept, mean over the seeds", "", header]
        for m in methods:
            if m != FULL:
                lines.append(f"| {m} | " + " | ".join(cell(m, f, "flipped_kept", "{:.1%}") for f in fractions) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the data, runs, curve.csv and curve.png")
    parser.add_argument("--label-noise", type=float, default=0.0, help="share of training labels to flip")
    every = list(PLAIN_METHODS) + list(SELECTION_VARIANTS) + list(EMBEDDING_METHODS)
    parser.add_argument("--methods", nargs="+", default=every, choices=every)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.9, 0.7, 0.5, 0.3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every run (produce and train)")
    parser.add_argument("--window", type=int, default=3, help="dynamic-uncertainty window")
    parser.add_argument("--ccs-beta", type=float, default=0.1, help="hardest share CCS drops first")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one process each)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the produce run")
    parser.add_argument("--no-full", action="store_true",
                        help="leave out the full-data runs (a rerun of some methods' cells: no full row, no full line)")
    args = parser.parse_args(argv)
    start = time.time()
    args.output = os.path.abspath(args.output)
    data = os.path.join(args.output, "data")
    sh([sys.executable, "-m", "data.mnist_demo", data])
    train_list = os.path.join(data, "train", "file_list.txt")
    labels = "clean"
    flipped = np.zeros(0, dtype=np.int64)
    if args.label_noise > 0:
        labels = f"noise{args.label_noise:g}"
        noisy = os.path.join(args.output, "train_noisy.txt")
        if not os.path.exists(flipped_path(noisy)):
            sh([sys.executable, "-m", "data.label_noise", train_list, "--rate", str(args.label_noise),
                "--seed", "0", "--output", noisy])
        train_list = noisy
        flipped = np.load(flipped_path(noisy))
    opts = training_opts(data, train_list, args.epochs)

    embedding = any(SELECTION_VARIANTS.get(m, (m,))[0] in EMBEDDING_METHODS for m in args.methods)

    def produce_run(output: str) -> None:
        if finished(output, args.epochs) is None:
            sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                os.path.join(ROOT, "main_and_produce.py"), "--config", CONFIG, "--output", output, "--opts", *opts,
                *(["PRODUCE.EMBED_DIM", str(EMBED_DIM)] if embedding else [])])

    produce = os.path.join(args.output, "produce")
    produce_run(produce)
    embedded = produce
    if embedding and not has_embeddings(produce):
        # a produce run from before embeddings were recorded: its coresets (and their
        # finished training runs) stay; the embedding methods read a second run's
        embedded = os.path.join(args.output, "produce-embed")
        log(f"{produce} holds no embeddings: the embedding methods read {embedded}")
        produce_run(embedded)
    jobs: List[Job] = []
    for seed in args.seeds:
        if not args.no_full:
            jobs.append(Job(FULL, 1.0, seed, None, os.path.join(args.output, "runs", f"{FULL}_s{seed}")))
        for method, by_fraction in make_coresets(args, produce, train_list, seed, embedded).items():
            for fraction, coreset in by_fraction.items():
                name = f"{method}_{fraction_text(fraction)}_s{seed}"
                jobs.append(Job(method, fraction, seed, coreset, os.path.join(args.output, "runs", name)))
    log(f"{len(jobs)} training runs, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = list(pool.map(lambda job: train(args, job, opts), jobs))

    full = len(read_file_list(train_list))
    rows = []
    for job, record in zip(jobs, records):
        kept = None if job.coreset is None else read_coreset(job.coreset, train_list).rows
        images = full if kept is None else len(kept)
        share = flipped_share(kept, flipped) if len(flipped) else ""
        rows.append({"labels": labels, "method": job.method, "fraction": job.fraction, "seed": job.seed,
                     "images": images, "top1": round(record["acc1"], 4), "top5": round(record["acc5"], 4),
                     "flipped_kept": "" if share == "" else round(share, 4)})
    write_csv(os.path.join(args.output, "curve.csv"), rows, CSV_FIELDS)
    title = "MNIST demo, clean labels" if not len(flipped) else f"MNIST demo, {args.label_noise:.0%} labels flipped"
    plot(rows, os.path.join(args.output, "curve.png"), f"{title} ({len(args.seeds)} seeds, {args.epochs} epochs)")
    table = summary(rows)
    atomic_write_text(os.path.join(args.output, "curve.md"), table)
    print(table)
    log(f"wrote {os.path.join(args.output, 'curve.csv')}, curve.png and curve.md; wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
