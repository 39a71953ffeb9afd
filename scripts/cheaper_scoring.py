"""Cheaper scores on the embedded MNIST data (issue 18): what does a dynamic-uncertainty
coreset lose when the produce run is cut short, or run on a cheaper proxy?

    python scripts/cheaper_scoring.py --curves curve_output --output cheaper_output

Reuses the pruning curves of scripts/pruning_curve.py (`make curve`: CURVES/clean and
CURVES/noise0.2, read only): their produce runs, their data and label lists, and their
dynunc and full-data training runs. For each label setting:

1. coresets from the first 25, 50 and 75% of the curve's produce epochs
   (get_coreset.py --epochs 0:E; window --window where E allows, fewer where not, said in
   the table), beside the curve's own full-history coreset (100%);
2. coresets from cheaper proxies, each a produce run of its own with the curve's setup
   but one change (a smaller model: resnet_micro; a lower resolution: 16 px), scored
   with the full window;
3. each coreset trained on the target model (the curve's: resnet_tiny, 32 px) with the
   curve's seeds at each fraction, --jobs single-process runs at a time;
4. each setting's produce cost: measured epoch times (metrics.jsonl) over the epochs it
   used, from timing runs made back to back (a produce run of the curve's setup, for the
   history prefixes, and one of each proxy): the curve's own produce run was timed while
   both curves trained at once, so its epoch times do not compare with the proxies';
5. the stopping rule of PRODUCE.STOP_WHEN_STABLE replayed on the full produce history
   (dynunc/training/stability.py, the tracker produce mode runs): when it would have stopped.

Writes OUTPUT/cheaper_scoring.csv (one row per run), OUTPUT/cheaper_scoring.png (top-1
against produce cost) and OUTPUT/cheaper_scoring.md (the tables, the cheapest setting
within the seed spread of the full history, the stopping rule's epochs). Finished runs and
existing coresets are kept: rerunning continues where it stopped.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from pruning_curve import (CONFIG, FULL, Job, finished, flipped_share, fraction_text, log, sh, train,  # noqa: E402
                           training_opts, write_csv)
from dynunc.lists.file_list import read_coreset  # noqa: E402
from data.label_noise import flipped_path  # noqa: E402
from dynunc.report.accuracy import TopOne, within_spread  # noqa: E402
from dynunc.history import contiguous_epoch_files, history_dir, load_epoch_prob  # noqa: E402
from dynunc.report.figures import png_bytes  # noqa: E402
from dynunc.training.stability import StabilityTracker, StopWhenStable, overlap_key  # noqa: E402
from dynunc.io import atomic_open, atomic_write_text  # noqa: E402

FIELDS = ["labels", "setting", "produce_epochs", "window", "produce_seconds", "fraction", "seed", "top1",
          "flipped_kept", "overlap_with_full"]
FULL_HISTORY = "history 100%"
# Proxies: a produce run of their own, the curve's setup with these --opts changed.
PROXIES = {"proxy resnet_micro": ["MODEL.NAME", "resnet_micro"], "proxy 16 px": ["DATA.IMG_SIZE", "16"]}
# Stopping rules replayed on the full history: (OVERLAP, PATIENCE); the first is the default.
STOP_RULES = ((0.95, 3), (0.95, 1), (0.9, 1), (0.8, 1))


@dataclass(frozen=True)
class Setting:
    name: str
    produce: str  # the produce run's folder
    epochs: int  # produce epochs used (a prefix of the run's)
    window: int
    include_last: bool  # the only window a 2-epoch prefix has ends at its last epoch
    timing: str  # the produce run whose measured epoch times give its cost


@dataclass(frozen=True)
class Curve:
    """One label setting of the curves: where its data, list, produce run and runs are."""

    labels: str
    folder: str
    train_list: str
    flipped: np.ndarray

    @staticmethod
    def open(folder: str) -> "Curve":
        noisy = os.path.join(folder, "train_noisy.txt")
        if os.path.exists(noisy):
            return Curve(os.path.basename(folder.rstrip("/")), folder, noisy, np.load(flipped_path(noisy)))
        clean = os.path.join(folder, "data", "train", "file_list.txt")
        return Curve(os.path.basename(folder.rstrip("/")), folder, clean, np.zeros(0, dtype=np.int64))

    @property
    def produce(self) -> str:
        return os.path.join(self.folder, "produce")

    def opts(self, epochs: int) -> List[str]:
        return training_opts(os.path.join(self.folder, "data"), self.train_list, epochs)


def slug(name: str) -> str:
    """A setting's name as a file name: 'history 25%' -> 'history_25pct'."""
    return name.replace(" ", "_").replace("%", "pct")


def window_for(epochs: int, window: int) -> Tuple[int, bool]:
    """(window, include_last) for a history of `epochs` epochs: `window` where it fits
    (at most epochs - 1, the last window left out), else the largest that does, else (at
    2 epochs) the one window ending at the last epoch."""
    if epochs - 1 >= 2:
        return min(window, epochs - 1), False
    if epochs == 2:
        return 2, True
    raise ValueError(f"{epochs} epoch(s) give no dynamic-uncertainty window")


def epoch_seconds(produce: str, epochs: int) -> float:
    """The measured epoch times of the first `epochs` epochs of a produce run."""
    with open(os.path.join(produce, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return float(sum(r["epoch_time"] for r in records[:epochs]))


def coreset_path(out: str, setting: Setting, fraction: float) -> str:
    return os.path.join(out, "coresets", slug(setting.name), f"dynunc_{fraction_text(fraction)}.txt")


def make_coresets(out: str, curve: Curve, setting: Setting, fractions: Sequence[float]) -> Dict[float, str]:
    paths = {f: coreset_path(out, setting, f) for f in fractions}
    if not all(os.path.exists(p) for p in paths.values()):
        template = coreset_path(out, setting, 0.0).replace(fraction_text(0.0), "{fraction}")
        sh([sys.executable, "get_coreset.py", "--input", setting.produce, "--dataset_file_list", curve.train_list,
            "--window", str(setting.window), "--epochs", f"0:{setting.epochs}", "--fraction",
            *[fraction_text(f) for f in fractions], "--output", template]
           + (["--include-last-window"] if setting.include_last else []), quiet=True)
    return paths


def settings_of(args, curve: Curve, out: str) -> List[Setting]:
    settings = []
    for share in args.shares:
        epochs = max(1, round(args.epochs * share))
        try:
            window, last = window_for(epochs, args.window)
        except ValueError as e:
            log(f"{curve.labels}: history {share:.0%} skipped: {e}")
            continue
        settings.append(Setting(f"history {share:.0%}", curve.produce, epochs, window, last, timing_run(out)))
    for name in args.proxies:
        settings.append(Setting(name, os.path.join(out, "produce_" + slug(name)), args.epochs,
                                *window_for(args.epochs, args.window), timing_run(out, name)))
    return settings


def timing_run(out: str, proxy: Optional[str] = None) -> str:
    """The produce run whose epoch times price a setting: of the curve's own setup (the
    history prefixes) or of a proxy, all made back to back on the same machine, so that
    their costs compare (the curve's produce run was timed while both curves trained at
    once, a proxy's first run while other jobs came and went)."""
    return os.path.join(out, "timing_" + (slug(proxy) if proxy else "target"))


def run_timing(args, curve: Curve, out: str) -> None:
    for proxy in [None] + list(args.proxies):
        if finished(timing_run(out, proxy), args.epochs) is None:
            sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                os.path.join(ROOT, "main_and_produce.py"), "--config", CONFIG, "--output", timing_run(out, proxy),
                "--opts", *curve.opts(args.epochs), *(PROXIES[proxy] if proxy else [])])


def run_proxy(args, curve: Curve, setting: Setting) -> None:
    if finished(setting.produce, args.epochs) is None:
        sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
            os.path.join(ROOT, "main_and_produce.py"), "--config", CONFIG, "--output", setting.produce,
            "--opts", *curve.opts(args.epochs), *PROXIES[setting.name]])


def curve_run(curve: Curve, method: str, fraction: float, seed: int) -> str:
    name = f"{FULL}_s{seed}" if method == FULL else f"{method}_{fraction_text(fraction)}_s{seed}"
    return os.path.join(curve.folder, "runs", name)


def stopping(curve: Curve, window: int, fractions: Sequence[float]) -> dict:
    """The tracker's overlaps on the curve's full produce history (window `window`, delta
    1, as produce mode with PRODUCE.TRACK_WINDOW `window` logs them) and, per rule of
    STOP_RULES at each fraction, the epoch after which it would have stopped (None: never)."""
    paths = contiguous_epoch_files(history_dir(curve.produce))
    n = len(load_epoch_prob(paths[0]))
    tracker = StabilityTracker(n, window, fractions, delta=1)
    try:
        records = [dict(epoch=e, **tracker.push(e, load_epoch_prob(p, n))) for e, p in enumerate(paths)]
    finally:
        tracker.close()
    stops = {}
    for overlap, patience in STOP_RULES:
        for fraction in fractions:
            rule = StopWhenStable(overlap, patience, fraction)
            stops[(overlap, patience, fraction)] = next((r["epoch"] for r in records if rule.update(r)), None)
    return {"records": records, "stops": stops, "epochs": len(paths)}


def summarise(rows: List[dict]) -> Dict[Tuple[str, str, float], TopOne]:
    grouped: Dict[Tuple[str, str, float], List[float]] = {}
    for r in rows:
        grouped.setdefault((r["labels"], r["setting"], float(r["fraction"])), []).append(float(r["top1"]))
    return {k: TopOne(float(np.mean(v)), float(np.std(v)), len(v)) for k, v in grouped.items()}


def cheapest_within_spread(rows: List[dict]) -> Tuple[Optional[str], Dict[str, bool]]:
    """(the cheapest setting whose top-1 is within the seed spread of the full history's in
    every label setting and fraction, or None; {setting: whether it is})."""
    points = summarise(rows)
    cost = {}
    for r in rows:
        cost[r["setting"]] = max(cost.get(r["setting"], 0.0), float(r["produce_seconds"]))
    ok = {}
    for setting in cost:
        cells = [(labels, fraction) for labels, s, fraction in points if s == setting]
        ok[setting] = bool(cells) and all(
            (labels, FULL_HISTORY, fraction) in points
            and within_spread(points[labels, setting, fraction], points[labels, FULL_HISTORY, fraction])
            for labels, fraction in cells)
    good = sorted((cost[s], s) for s, v in ok.items() if v)
    return (good[0][1] if good else None), ok


def table(rows: List[dict], fractions: Sequence[float]) -> str:
    """The markdown tables: per label setting, one row per setting with its produce epochs,
    window, cost and top-1 (mean +- std over the seeds) at each fraction; then the flipped
    share where labels are noisy."""
    points = summarise(rows)
    meta: Dict[Tuple[str, str], dict] = {}
    for r in rows:
        meta.setdefault((r["labels"], r["setting"]), r)
    overlap = {(r["labels"], r["setting"], float(r["fraction"])): r["overlap_with_full"] for r in rows}
    flipped = {}
    for r in rows:
        if r["flipped_kept"] != "":
            flipped.setdefault((r["labels"], r["setting"], float(r["fraction"])), []).append(float(r["flipped_kept"]))
    out = []
    for labels in dict.fromkeys(r["labels"] for r in rows):
        out += [f"### {labels}", "",
                "| setting | produce epochs | window | produce cost (s) | "
                + " | ".join(f"top-1 at {f:g}" for f in fractions) + " | "
                + " | ".join(f"overlap with 100% at {f:g}" for f in fractions)
                + (" | " + " | ".join(f"flipped kept at {f:g}" for f in fractions) if flipped else "") + " |",
                "|---|---:|---:|---:|" + "---:|" * (len(fractions) * (3 if flipped else 2))]
        settings = sorted({s for (lab, s) in meta if lab == labels}, key=lambda s: float(meta[labels, s]["produce_seconds"]))
        for s in settings:
            m = meta[labels, s]
            window = f"{m['window']}" + (" (incl. last)" if m.get("include_last") else "")
            cells = [s, str(m["produce_epochs"]), window, f"{float(m['produce_seconds']):.1f}"]
            cells += [points[labels, s, f].text(runs=False) if (labels, s, f) in points else "" for f in fractions]
            cells += [f"{float(overlap[labels, s, f]):.1%}" if (labels, s, f) in overlap else "" for f in fractions]
            if flipped:
                cells += [f"{np.mean(flipped[labels, s, f]):.1%}" if (labels, s, f) in flipped else ""
                          for f in fractions]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: List[dict], path: str, fractions: Sequence[float], full_data: Dict[str, TopOne]) -> None:
    """Top-1 (mean +- std over the seeds) against the produce cost, one panel per label
    setting, one series per fraction; the full history's mean +- std as a band, training
    on the full data as a dashed line."""
    from matplotlib.figure import Figure

    points = summarise(rows)
    cost = {(r["labels"], r["setting"]): float(r["produce_seconds"]) for r in rows}
    labels_all = list(dict.fromkeys(r["labels"] for r in rows))
    fig = Figure(figsize=(6.0 * len(labels_all), 5.0), dpi=100)
    colours = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e")
    for i, labels in enumerate(labels_all):
        ax = fig.add_subplot(1, len(labels_all), i + 1)
        for fraction, colour in zip(fractions, colours):
            keys = sorted((cost[labels, s], s) for (lab, s, f) in points if lab == labels and f == fraction)
            full = points.get((labels, FULL_HISTORY, fraction))
            if full is not None:
                ax.axhspan(full.mean - full.std, full.mean + full.std, color=colour, alpha=0.1)
            for c, s in keys:
                p = points[labels, s, fraction]
                ax.errorbar([c], [p.mean], yerr=[p.std], marker="o" if s.startswith("history") else "s", ms=5,
                            capsize=3, color=colour)
                ax.annotate(s.replace("history ", "").replace("proxy ", ""), (c, p.mean), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            ax.plot([], [], color=colour, marker="o", label=f"keep {fraction:g} (band: 100% history, +- std)")
        if labels in full_data:
            ax.axhline(full_data[labels].mean, color="black", ls="--", lw=1,
                       label=f"full data, no pruning ({full_data[labels].mean:.2f})")
        ax.set_xlabel("produce cost (s, measured epoch time x epochs)")
        ax.set_ylabel("top-1 (%) of resnet_tiny trained on the coreset")
        ax.set_title(f"MNIST demo, {labels}: circles history prefixes, squares proxies", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        f.write(png_bytes(fig))


def stopping_text(stops: Dict[str, dict], window: int, fractions: Sequence[float]) -> str:
    lines = [f"Tracker replayed on each full produce history (window {window}, delta 1): kept-set overlap with the "
             "previous epoch's coreset", ""]
    for labels, s in stops.items():
        tracked = [r for r in s["records"] if overlap_key(fractions[0]) in r]
        lines.append(f"- {labels}: " + "; ".join(
            f"epoch {r['epoch']}: " + ", ".join(f"{r[overlap_key(f)]:.3f} at {f:g}" for f in fractions)
            for r in tracked))
        for (overlap, patience, fraction), epoch in s["stops"].items():
            when = ("never (ran all epochs)" if epoch is None
                    else f"after epoch {epoch} ({epoch + 1} of {s['epochs']} epochs)")
            lines.append(f"  - OVERLAP {overlap}, PATIENCE {patience}, FRACTION {fraction:g}: {when}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", required=True, help="folder holding the curves' label settings (clean, noise0.2)")
    parser.add_argument("--labels", nargs="+", default=["clean", "noise0.2"])
    parser.add_argument("--output", required=True)
    parser.add_argument("--shares", nargs="+", type=float, default=[0.25, 0.5, 0.75],
                        help="shares of the produce epochs to score from (100%%: the curve's own coreset)")
    parser.add_argument("--proxies", nargs="*", default=list(PROXIES), choices=list(PROXIES))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="the curves' epochs (produce and training)")
    parser.add_argument("--window", type=int, default=3, help="the curves' dynamic-uncertainty window")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one process each)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of a proxy's produce run")
    args = parser.parse_args(argv)
    start = time.time()
    args.output = os.path.abspath(args.output)
    rows: List[dict] = []
    stops = {}
    full_data: Dict[str, TopOne] = {}  # the curve's runs on the whole training list
    for labels in args.labels:
        curve = Curve.open(os.path.join(os.path.abspath(args.curves), labels))
        out = os.path.join(args.output, labels)
        if finished(curve.produce, args.epochs) is None:
            raise SystemExit(f"{curve.produce}: the curve's produce run is missing or unfinished (make curve first)")
        full_rows = {f: read_coreset(os.path.join(curve.folder, "coresets", "seed0",
                                                  f"dynunc_{fraction_text(f)}.txt"), curve.train_list).rows
                     for f in args.fractions}
        settings = settings_of(args, curve, out)
        run_timing(args, curve, out)
        jobs: List[Tuple[Setting, Job]] = []
        for setting in settings:
            if setting.name in PROXIES:
                run_proxy(args, curve, setting)
            for fraction, path in make_coresets(out, curve, setting, args.fractions).items():
                for seed in args.seeds:
                    name = f"{slug(setting.name)}_{fraction_text(fraction)}_s{seed}"
                    jobs.append((setting, Job(setting.name, fraction, seed, path, os.path.join(out, "runs", name))))
        log(f"{labels}: {len(jobs)} training runs, {args.jobs} at a time")
        opts = curve.opts(args.epochs)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            records = list(pool.map(lambda sj: train(args, sj[1], opts), jobs))
        full_window = window_for(args.epochs, args.window)[0]
        for (setting, job), record in zip(jobs, records):
            kept = read_coreset(job.coreset, curve.train_list).rows
            rows.append(dict(labels=labels, setting=setting.name, produce_epochs=setting.epochs, window=setting.window,
                             include_last=setting.include_last,
                             produce_seconds=round(epoch_seconds(setting.timing, setting.epochs), 2),
                             fraction=job.fraction, seed=job.seed, top1=round(record["acc1"], 4),
                             flipped_kept=round(flipped_share(kept, curve.flipped), 4) if len(curve.flipped) else "",
                             overlap_with_full=round(float(np.isin(kept, full_rows[job.fraction]).mean()), 4)))
        for fraction in args.fractions:  # the curve's own full-history coreset and its runs, read only
            kept = full_rows[fraction]
            for seed in args.seeds:
                record = finished(curve_run(curve, "dynunc", fraction, seed), args.epochs)
                if record is None:
                    raise SystemExit(f"{curve_run(curve, 'dynunc', fraction, seed)}: the curve's run is missing")
                rows.append(dict(labels=labels, setting=FULL_HISTORY, produce_epochs=args.epochs, window=full_window,
                                 include_last=False,
                                 produce_seconds=round(epoch_seconds(timing_run(out), args.epochs), 2),
                                 fraction=fraction, seed=seed, top1=round(record["acc1"], 4),
                                 flipped_kept=round(flipped_share(kept, curve.flipped), 4) if len(curve.flipped)
                                 else "", overlap_with_full=1.0))
        stops[labels] = stopping(curve, full_window, args.fractions)
        tops = []
        for seed in args.seeds:
            record = finished(curve_run(curve, FULL, 1.0, seed), args.epochs)
            if record is not None:
                tops.append(record["acc1"])
        if tops:
            full_data[labels] = TopOne(float(np.mean(tops)), float(np.std(tops)), len(tops))
    os.makedirs(args.output, exist_ok=True)
    write_csv(os.path.join(args.output, "cheaper_scoring.csv"), rows, FIELDS)
    plot(rows, os.path.join(args.output, "cheaper_scoring.png"), args.fractions, full_data)
    cheapest, ok = cheapest_within_spread(rows)
    text = ("".join(f"Full data, no pruning ({labels}): top-1 {top.text()}\n\n" for labels, top in full_data.items())
            + table(rows, args.fractions) + "\nWithin the seed spread of the 100% history at every fraction and label "
            "setting: " + ", ".join(f"{s}: {'yes' if v else 'no'}" for s, v in ok.items())
            + f"\n\nCheapest such setting: {cheapest or 'none'}\n\n"
            + stopping_text(stops, window_for(args.epochs, args.window)[0], args.fractions))
    atomic_write_text(os.path.join(args.output, "cheaper_scoring.md"), text)
    print(text)
    log(f"wrote {args.output}/cheaper_scoring.csv, .png and .md; wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
