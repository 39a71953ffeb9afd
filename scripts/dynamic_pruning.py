"""Dynamic pruning against static coresets at the same number of images seen, on the
embedded MNIST data with the pruning curve's setup (scripts/pruning_curve.py: the demo
config, 8 epochs, resnet_tiny, seeds 0 1 2), from a curve's finished output.

    python scripts/dynamic_pruning.py --curve /work/curve_output/clean --output OUT/clean
    python scripts/dynamic_pruning.py --curve /work/curve_output/noise0.2 --output OUT/noise0.2

1. main.py with TRAIN.DYNAMIC_PRUNE at each --ratios value (score: the loss), per seed;
   its images seen are the sum of the epochs' ``images_seen``;
2. per ratio, the fraction f = mean images seen / (N x epochs) over the seeds, and the
   static coresets at f (get_coreset.py: dynunc with --window, and random) from the
   curve's produce history (copied into OUT/produce, the curve's folder is only read);
   main.py on each, per seed;
3. the full-data runs are the curve's own (CURVE/runs/full_s<seed>), not repeated;
4. OUT/dynamic.csv (one row per run) and OUT/dynamic.md: images seen, training wall time
   (the sum of the epochs' epoch_time in metrics.jsonl: the training loop only) and
   top-1, mean +- std over the seeds;
5. with --timing, the cost on equal terms: the full data, each dynamic run and the random
   coreset at its images seen, seed 0, run again one at a time, back to back, each whole
   process measured (benchmarks/measure.py: wall and CPU seconds) into OUT/timing.csv
   and a second table. The runs above share the machine with each other and with
   whatever else runs, and the full-data runs are the curve's, made at another time, so
   their wall times compare only roughly.

Finished runs are not repeated: rerunning the script after an interruption continues.
"""
import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in (ROOT, os.path.join(ROOT, "scripts")):
    if folder not in sys.path:
        sys.path.insert(0, folder)

from dynunc.lists.file_list import read_coreset, read_file_list  # noqa: E402
from benchmarks.measure import run_child  # noqa: E402
from data.reader import shard_length  # noqa: E402
from dynunc.report.accuracy import FULL  # noqa: E402
from pruning_curve import (Job, finished, fraction_text, log, make_coresets, train,  # noqa: E402
                                   training_opts, write_csv)
from dynunc.io import atomic_write_text  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
FIELDS = ["labels", "method", "ratio", "fraction", "seed", "images_seen", "train_wall_s", "top1", "top5"]
STATIC = ("dynunc", "random")


def records(output: str) -> List[dict]:
    with open(os.path.join(output, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def curve_setup(curve: str):
    """(data folder, train list, epochs, batch size) of the curve's runs, from its full-data run's config."""
    with open(os.path.join(curve, "runs", f"{FULL}_s0", "config.yaml")) as f:
        config = yaml.safe_load(f)
    train_root, train_list = config["DATA"]["DATA_PATH_TRAIN"], config["DATA"]["TRAIN_FILE_LIST"]
    if not os.path.isabs(train_list):
        train_list = os.path.join(train_root, train_list)
    return (os.path.dirname(train_root.rstrip("/")), train_list, config["TRAIN"]["EPOCHS"],
            config["DATA"]["BATCH_SIZE_TRAIN"])


def copy_history(curve: str, output: str) -> str:
    """The curve's produce history, copied (get_coreset reads it here)."""
    produce = os.path.join(output, "produce")
    target = os.path.join(produce, "pred_prob_history")
    if not os.path.isdir(target):
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(os.path.join(curve, "produce", "pred_prob_history"), tmp)
        os.replace(tmp, target)
    return produce


def row(labels: str, method: str, ratio: float, fraction: float, seed: int, images: int, output: str) -> dict:
    rs = records(output)
    return {"labels": labels, "method": method, "ratio": ratio, "fraction": round(fraction, 4), "seed": seed,
            "images_seen": images, "train_wall_s": round(sum(r["epoch_time"] for r in rs), 2),
            "top1": round(rs[-1]["acc1"], 4), "top5": round(rs[-1]["acc5"], 4)}


def timed_run(output: str, argv: List[str]) -> dict:
    """Wall and CPU seconds of `argv`, a whole training run into `output`, measured once:
    a run without its usage file (never run, or interrupted) starts again from nothing."""
    usage_path = os.path.join(output, "usage.json")
    if not os.path.exists(usage_path):
        shutil.rmtree(output, ignore_errors=True)
        log("+ timing " + os.path.basename(output))
        usage = run_child(argv + ["--output", output], cwd=ROOT)
        atomic_write_text(usage_path, json.dumps({"wall_s": round(usage.wall_s, 2), "cpu_s": round(usage.cpu_s, 2)}))
    with open(usage_path) as f:
        return json.load(f)


def timing_rows(output: str, opts: List[str], ratios: Sequence[float], coresets: Dict[float, str],
                train_list: str, batch: int) -> List[dict]:
    """The --timing runs (seed 0), one at a time: full data, then per ratio the dynamic run
    and the random coreset at its images seen."""
    base = [sys.executable, os.path.join(ROOT, "main.py"), "--config", CONFIG]
    runs = [("full data", FULL, [], None)]
    for ratio in ratios:
        runs.append((f"dynamic, RATIO {ratio}", f"dynamic_{ratio!r}",
                     ["TRAIN.DYNAMIC_PRUNE.ENABLE", "True", "TRAIN.DYNAMIC_PRUNE.RATIO", str(ratio)], None))
        runs.append(("random coreset at its images seen", f"random_{ratio!r}", [], coresets[ratio]))
    rows = []
    for label, name, extra, coreset in runs:
        run_dir = os.path.join(output, "timing", name)
        argv = base + (["--coreset", coreset] if coreset else [])
        usage = timed_run(run_dir, argv + ["--opts", *opts, *extra, "SEED", "0"])
        rs = records(run_dir)
        if "images_seen" in rs[-1]:
            images = sum(r["images_seen"] for r in rs)
        else:
            size = len(read_coreset(coreset, train_list).rows) if coreset else len(read_file_list(train_list))
            images = shard_length(size, 1, batch) * len(rs)
        rows.append({"run": label, "images_seen": images, "wall_s": usage["wall_s"], "cpu_s": usage["cpu_s"],
                     "train_wall_s": round(sum(r["epoch_time"] for r in rs), 2), "top1": rs[-1]["acc1"]})
    return rows


def timing_table(rows: List[dict]) -> str:
    full = rows[0]
    lines = ["Cost on equal terms: seed 0, one run at a time, back to back; wall and CPU seconds of the whole "
             "process (benchmarks/measure.py), the training loop's wall seconds (sum of epoch_time)", "",
             "| run | images seen | wall s | CPU s | CPU vs full | train-loop wall s | top-1 (%) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['images_seen']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_s'] / full['cpu_s']:.3f} | {r['train_wall_s']:.1f} | {r['top1']:.2f} |")
    return "\n".join(lines) + "\n"


def summary(rows: List[dict], title: str) -> str:
    """One markdown table: per method and ratio, the mean +- std (population) over the seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)

    def stat(rs, key, fmt):
        values = np.array([float(r[key]) for r in rs])
        return fmt.format(values.mean(), values.std())

    lines = [f"{title}: mean +- std over {len(next(iter(groups.values())))} seeds (population std)", "",
             "| run | images seen | share of full | train wall s | top-1 (%) |", "|---|---:|---:|---:|---:|"]
    order = sorted(groups, key=lambda k: (k[1] != "", str(k[1]), k[0] != "dynamic", k[0]))
    full_images = np.mean([float(r["images_seen"]) for r in rows if r["method"] == FULL])
    for method, ratio in order:
        rs = groups[(method, ratio)]
        name = {FULL: "full data", "dynamic": f"dynamic, RATIO {ratio}"}.get(
            method, f"{method} coreset, fraction {rs[0]['fraction']} (as RATIO {ratio})")
        images = np.mean([float(r["images_seen"]) for r in rs])
        wall, top1 = stat(rs, "train_wall_s", "{:.1f} +- {:.1f}"), stat(rs, "top1", "{:.2f} +- {:.2f}")
        lines.append(f"| {name} | {images:,.0f} | {images / full_images:.3f} | {wall} | {top1} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", required=True, help="a finished scripts/pruning_curve.py output folder (read only)")
    parser.add_argument("--output", required=True, help="folder for the runs, dynamic.csv and dynamic.md")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--window", type=int, default=3, help="dynamic-uncertainty window of the static coresets")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one process each)")
    parser.add_argument("--timing", action="store_true", help="also the back-to-back timing runs (seed 0)")
    args = parser.parse_args(argv)
    start = time.time()
    curve, output = os.path.abspath(args.curve), os.path.abspath(args.output)
    labels = os.path.basename(curve.rstrip("/"))
    data, train_list, epochs, batch = curve_setup(curve)
    n = len(read_file_list(train_list))
    opts = training_opts(data, train_list, epochs)
    run_args = SimpleNamespace(epochs=epochs)

    def run_all(jobs: List[Job], extra: Dict[str, List[str]]) -> None:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda job: train(run_args, job, opts + extra.get(job.output, [])), jobs))

    dynamic = [Job("dynamic", ratio, seed, None, os.path.join(output, "runs", f"dynamic_{ratio!r}_s{seed}"))
               for ratio in args.ratios for seed in args.seeds]
    run_all(dynamic, {job.output: ["TRAIN.DYNAMIC_PRUNE.ENABLE", "True", "TRAIN.DYNAMIC_PRUNE.RATIO",
                                   str(job.fraction)] for job in dynamic})
    seen = {job.output: sum(r["images_seen"] for r in records(job.output)) for job in dynamic}
    mean_seen = {ratio: float(np.mean([seen[j.output] for j in dynamic if j.fraction == ratio]))
                 for ratio in args.ratios}
    fractions = {ratio: round(mean_seen[ratio] / (n * epochs), 4) for ratio in args.ratios}
    log(f"{labels}: static fractions at the dynamic runs' images seen: {fractions}")

    produce = copy_history(curve, output)
    static, static_ratio = [], {}
    for seed in args.seeds:
        coreset_args = SimpleNamespace(output=output, fractions=list(fractions.values()), methods=list(STATIC),
                                       window=args.window, ccs_beta=0.0)
        for method, by_fraction in make_coresets(coreset_args, produce, train_list, seed).items():
            for ratio, fraction in fractions.items():
                name = f"{method}_{fraction_text(fraction)}_s{seed}"
                job = Job(method, fraction, seed, by_fraction[fraction], os.path.join(output, "runs", name))
                static.append(job)
                static_ratio[job.output] = ratio
    run_all(static, {})

    rows = []
    for seed in args.seeds:
        full_run = os.path.join(curve, "runs", f"{FULL}_s{seed}")
        if finished(full_run, epochs) is None:
            raise SystemExit(f"{full_run}: not a finished full-data run of {epochs} epochs")
        rows.append(row(labels, FULL, "", 1.0, seed, shard_length(n, 1, batch) * epochs, full_run))
    for job in dynamic:
        rows.append(row(labels, "dynamic", job.fraction, seen[job.output] / (n * epochs), job.seed, seen[job.output],
                        job.output))
    for job in static:
        size = len(read_coreset(job.coreset, train_list).rows)
        rows.append(row(labels, job.method, static_ratio[job.output], job.fraction, job.seed,
                        shard_length(size, 1, batch) * epochs, job.output))
    write_csv(os.path.join(output, "dynamic.csv"), rows, FIELDS)
    table = summary(rows, f"MNIST demo, {labels} labels, {epochs} epochs")
    if args.timing:
        random_at = {static_ratio[j.output]: j.coreset for j in static if j.method == "random" and j.seed == 0}
        timed = timing_rows(output, opts, args.ratios, random_at, train_list, batch)
        write_csv(os.path.join(output, "timing.csv"), timed, list(timed[0]))
        table += "\n" + timing_table(timed)
    atomic_write_text(os.path.join(output, "dynamic.md"), table)
    print(table)
    log(f"wrote {os.path.join(output, 'dynamic.csv')} and dynamic.md; wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
