"""The pruning report (report.py): what each method keeps and throws away, as one HTML
page with PNG figures beside it and the numbers in report.json.

Two passes over the history, each reading an epoch's files once: the first scores every
method (pruning/scores.py's `score_history`, as get_coreset.py does), the second reads
only prob_{epoch} for the curves (mean p(true label) per score decile, and a few sampled
images). Memory is O(N) per method (scores, ranking, positions, tie-averaged ranks: 20
bytes per sample), never O(N x K); at most 32 images per method are opened (the 16
highest- and 16 lowest-scored), through the file list. Per-class results are shown as a
distribution over classes and a table of the hardest-hit ones, so they stay readable
with 21K classes.
"""
import argparse
import html
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data.file_list import FileList, FileListError, read_file_list
from data.list_lines import count_entries
from pruning import report_figures as figures
from pruning.flags import check_methods, check_window, check_window_fits, fraction_keeps, open_history
from pruning.history import HistoryError, check_records, missing_record, record_loader
from pruning.report_stats import (MethodOrder, class_kept_fractions, epoch_curves, extremes, flipped_kept_share,
                                  hardest_hit, overlap_matrix, sample_sides, spearman_matrix)
from pruning.scores import METHODS, ScoreParams, default_el2n_epoch, parse_epoch_slice, score_history
from utils.io import atomic_group, remove_stale_temporaries

DEFAULT_FRACTIONS = ("0.9", "0.7", "0.5", "0.3")
HARDEST_CLASSES = 20
IMAGES_PER_SIDE = 16
CURVES_PER_SIDE = 5
INDEX, NUMBERS = "index.html", "report.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="report.py",
        description="Write an HTML report (DIR/index.html, PNG figures, DIR/report.json) of what each pruning "
        "method keeps: score histograms, per-class kept fractions, rank correlations and overlaps between "
        "methods, p(true label) curves, and the highest- and lowest-scored images.",
    )
    p.add_argument("--input", required=True, help="produce run's output folder, or its pred_prob_history folder")
    p.add_argument("--dataset_file_list", required=True, help="the training file list the history was recorded on")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write index.html, report.json and PNGs")
    p.add_argument("--method", nargs="+", metavar="NAME",
                   help="methods to compare (default: every method whose records the history holds; dynunc "
                   "only with --window). Known: " + ", ".join(METHODS))
    p.add_argument("--fraction", nargs="+", default=list(DEFAULT_FRACTIONS), metavar="F",
                   help=f"fractions kept, each in (0, 1] (default {' '.join(DEFAULT_FRACTIONS)})")
    p.add_argument("--window", type=int, help="dynunc: window length J, as in get_coreset.py")
    p.add_argument("--include-last-window", action="store_true",
                   help="dynunc: also score the window ending at the last epoch, as in get_coreset.py")
    p.add_argument("--epochs", metavar="START:STOP", help="el2n: the epochs averaged, as in get_coreset.py")
    p.add_argument("--seed", type=int, default=0, help="random: the subset drawn; also the curves' sampled images")
    p.add_argument("--flipped", metavar="FILE",
                   help="int64 .npy of the relabelled lines' indices (data/label_noise.py writes LIST.flipped.npy): "
                   "adds the share of them each method keeps")
    p.add_argument("--data_root", help="folder the list's paths are relative to (default: the list's folder)")
    return p


@dataclass(frozen=True)
class Plan:
    """What the report covers, checked before any history file is read."""

    hdir: str
    prob_paths: List[str]
    num_samples: int
    methods: List[str]
    fractions: List[str]  # as written on the command line
    keeps: Dict[str, int]  # fraction -> int(N * fraction)
    params: ScoreParams


def plan_report(args: argparse.Namespace, num_samples: int) -> Plan:
    """Check the flags against the history; ValueError / HistoryError naming the flag or file."""
    keeps = fraction_keeps(args.fraction, num_samples)
    if args.method is not None:
        check_methods(args.method)
    check_window(args.window, required=args.method is not None and "dynunc" in args.method)
    hdir, paths = open_history(args.input, args.dataset_file_list, num_samples)
    num_epochs = len(paths)
    el2n_epochs = parse_epoch_slice(args.epochs, num_epochs) if args.epochs else None
    params = ScoreParams(args.window, args.include_last_window, el2n_epochs, args.seed)
    if args.window is not None:
        check_window_fits(args.window, args.include_last_window, num_epochs, hdir)
    if args.method is not None:
        methods = list(args.method)
        check_records(hdir, methods, params, num_epochs)
    else:
        methods = [m for m in METHODS if missing_record(hdir, m, params, num_epochs) is None
                   and (m != "dynunc" or args.window is not None)]
        if args.window is None:
            print("warning: dynunc is left out of the report: it needs --window", file=sys.stderr)
    return Plan(hdir, paths, num_samples, methods, list(args.fraction), keeps, params)


def load_flipped(path: str, num_samples: int) -> np.ndarray:
    """The flipped line indices: a 1-D integer .npy of distinct values in [0, N).
    ValueError naming the file otherwise."""
    try:
        flipped = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"--flipped {path}: file not found") from None
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--flipped {path}: cannot be read as a .npy array: {e}") from None
    if flipped.ndim != 1 or flipped.dtype.kind not in "iu":
        raise ValueError(f"--flipped {path}: expected a 1-D integer array, found {flipped.dtype} of shape "
                         f"{flipped.shape}")
    flipped = flipped.astype(np.int64)
    outside = (flipped < 0) | (flipped >= num_samples)
    if outside.any():
        raise ValueError(f"--flipped {path}: index {int(flipped[outside][0])} is outside the list's "
                         f"{num_samples} lines")
    if len(np.unique(flipped)) != len(flipped):
        raise ValueError(f"--flipped {path}: holds repeated indices")
    return flipped


def thumbnail(path: str) -> Tuple[Optional[np.ndarray], str]:
    """(RGB pixels, the longer side THUMB, '') or (None, why) if the image cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = figures.THUMB / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            # small images (MNIST's 28 x 28) are enlarged with visible pixels, large ones reduced smoothly
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            return np.asarray(image.resize(size, resample)), ""
    except (OSError, ValueError) as e:
        return None, f"cannot read {path}: {e}"


def _number(value: float):
    """A float for JSON: NaN and +-inf as strings (strict JSON has neither)."""
    value = float(value)
    return value if np.isfinite(value) else str(value)


def _matrix(matrix: np.ndarray) -> List[List]:
    return [[_number(v) for v in row] for row in matrix]


def build_report(args: argparse.Namespace) -> Tuple[Dict[str, bytes], dict]:
    """The report's files ({name: bytes}, index.html and report.json included) and its numbers."""
    check_output(args.output)
    n = count_entries(args.dataset_file_list)
    if n == 0:
        raise ValueError(f"{args.dataset_file_list}: the file list is empty")
    plan = plan_report(args, n)  # every check that needs no history file read
    flipped = load_flipped(args.flipped, n) if args.flipped else None
    methods, fractions, keeps = plan.methods, plan.fractions, plan.keeps
    if not methods:
        raise ValueError(f"{plan.hdir}: holds the records of no method (give --method)")
    file_list = read_file_list(args.dataset_file_list, root=args.data_root)
    labels, class_dirs = class_labels(file_list)
    if len(labels) != n:
        raise ValueError(f"{args.dataset_file_list}: changed while being read ({n} lines, now {len(labels)})")
    num_epochs = len(plan.prob_paths)
    load = record_loader(plan.hdir, plan.prob_paths, n)

    started = time.perf_counter()
    scores = score_history(methods, num_epochs, n, load, plan.params)
    scored = time.perf_counter()
    orders = {m: MethodOrder.of(scores.pop(m), args.seed) for m in methods}
    reference = min(fractions, key=lambda f: (abs(float(f) - 0.5), -float(f)))  # the curves' and tables' fraction
    files: Dict[str, bytes] = {}
    numbers = {"num_samples": n, "num_epochs": num_epochs, "num_classes": len(class_dirs),
               "methods": methods, "fractions": fractions, "reference_fraction": reference,
               "keep": keeps, "params": {"window": args.window, "include_last_window": args.include_last_window,
                                         "el2n_epochs": (None if plan.params.el2n_epochs is None
                                                         else list(plan.params.el2n_epochs)),
                                         "el2n_epoch": default_el2n_epoch(num_epochs), "seed": args.seed}}
    numbers["kept_counts"] = {m: {f: int(np.count_nonzero(orders[m].kept(keeps[f]))) for f in fractions}
                              for m in methods}
    numbers["cuts"] = {m: {f: _number(orders[m].cut(keeps[f])) for f in fractions} for m in methods}
    for m in methods:
        files[f"hist_{m}.png"] = figures.score_histogram(
            m, orders[m].scores, [(f, orders[m].cut(keeps[f])) for f in fractions])
    add_per_class(files, numbers, orders, keeps, reference, labels, class_dirs)
    add_agreement(files, numbers, orders, keeps)
    if flipped is not None:
        numbers["flipped"] = {"file": args.flipped, "count": len(flipped),
                              "kept_share": {m: {f: _number(flipped_kept_share(orders[m], keeps[f], flipped))
                                                 for f in fractions} for m in methods}}
    curves_started = time.perf_counter()
    add_curves(files, numbers, orders, keeps[reference], reference, num_epochs, load, args.seed)
    curves_done = time.perf_counter()
    add_image_grids(files, numbers, orders, file_list, labels, class_dirs)
    print(f"scored {n} lines over {num_epochs} epochs in {scored - started:.1f}s, curves pass "
          f"{curves_done - curves_started:.1f}s, everything {time.perf_counter() - started:.1f}s", file=sys.stderr)
    files[NUMBERS] = (json.dumps(numbers, indent=1, allow_nan=False) + "\n").encode("utf-8")
    files[INDEX] = render_html(args, numbers).encode("utf-8")
    return files, numbers


def add_per_class(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder], keeps: Dict[str, int],
                  reference: str, labels: np.ndarray, class_dirs: Dict[int, str]) -> None:
    """The distribution of per-class kept fractions and the hardest-hit classes."""
    sizes = np.bincount(labels)
    per_class = {m: {f: class_kept_fractions(o, k, labels, sizes) for f, k in keeps.items()} for m, o in orders.items()}
    files["class_kept.png"] = figures.class_kept_boxes(list(orders), list(keeps), per_class)
    numbers["class_kept_summary"] = {
        m: {f: {"min": _number(np.nanmin(v)), "p05": _number(np.nanpercentile(v, 5)),
                "median": _number(np.nanmedian(v)), "max": _number(np.nanmax(v)),
                "classes_emptied": int(np.count_nonzero(v == 0))} for f, v in per_class[m].items()}
        for m in orders}
    numbers["hardest_hit"] = {
        m: [{"label": int(c), "class": class_dirs.get(int(c), ""), "size": int(sizes[c]),
             "kept": {f: float(per_class[m][f][c]) for f in keeps}}
            for c in hardest_hit(per_class[m][reference], HARDEST_CLASSES)]
        for m in orders}


def add_agreement(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder],
                  keeps: Dict[str, int]) -> None:
    """Spearman correlation and kept-set overlap between every pair of methods."""
    methods, ordered = list(orders), list(orders.values())
    spearman = spearman_matrix(ordered)
    numbers["spearman"] = _matrix(spearman)
    files["spearman.png"] = figures.heatmap(spearman, methods, "Spearman rank correlation of the scores",
                                            low=-1.0, cmap="coolwarm")
    numbers["overlap"] = {}
    for f, keep in keeps.items():
        overlap = overlap_matrix(ordered, keep)
        numbers["overlap"][f] = _matrix(overlap)
        files[f"overlap_{f}.png"] = figures.heatmap(overlap, methods, f"kept sets at {f}: shared / kept", low=0.0)


def add_curves(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder], keep: int, fraction: str,
               num_epochs: int, load: Callable[[int, str], np.ndarray], seed: int) -> None:
    """p(true label) over epochs (the second pass over the history): sampled kept and
    pruned images at `fraction`, and the mean per score decile."""
    rng = np.random.default_rng(seed)
    sides = {m: sample_sides(o, keep, CURVES_PER_SIDE, rng) for m, o in orders.items()}
    sample = np.concatenate([side for m in orders for side in sides[m]]).astype(np.int64)
    curves = epoch_curves(orders, num_epochs, lambda epoch: load(epoch, "prob"), sample)
    numbers["decile_curves"] = {}
    start = 0
    for m in orders:
        rows = []
        for side in sides[m]:
            rows.append(curves.sampled[start:start + len(side)])
            start += len(side)
        files[f"curves_{m}.png"] = figures.epoch_curves_figure(m, fraction, rows[0], rows[1], curves.decile_mean[m])
        numbers["decile_curves"][m] = _matrix(curves.decile_mean[m])


def class_labels(file_list: FileList) -> Tuple[np.ndarray, Dict[int, str]]:
    """The labels (int64, one per entry) and, per label, the class folder of its first
    entry (the path's first component, '' if the path has none)."""
    labels = file_list.labels.astype(np.int64)
    classes, first = np.unique(labels, return_index=True)
    class_dirs = {}
    for label, i in zip(classes.tolist(), first.tolist()):
        name = file_list.name(i).lstrip("/")
        class_dirs[label] = name.split("/")[0] if "/" in name else ""
    return labels, class_dirs


def add_image_grids(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder], file_list: FileList,
                    labels: np.ndarray, class_dirs: Dict[int, str]) -> None:
    """The highest- and lowest-scored images of each method: only these are opened."""
    chosen = {m: extremes(o, IMAGES_PER_SIDE) for m, o in orders.items()}
    unreadable: List[str] = []
    numbers["images"] = {}
    for m, order in orders.items():
        blocks, listed = [], {}
        for side, indices in zip(("highest", "lowest"), chosen[m]):
            tiles, listed[side] = [], []
            for i in indices:
                pixels, why = thumbnail(file_list.full_path(int(i)))
                if why:
                    unreadable.append(why)
                label, score = int(labels[i]), order.scores[i]
                tiles.append((pixels, f"{'unreadable' if why else class_dirs.get(label) or label}\n{score:.4g}"))
                listed[side].append({"index": int(i), "path": file_list.name(int(i)), "label": label,
                                     "score": _number(score)})
            blocks.append((f"{len(indices)} {side}-scored", tiles))
        files[f"images_{m}.png"] = figures.image_grid(m, blocks, IMAGES_PER_SIDE)
        numbers["images"][m] = listed
    numbers["unreadable_images"] = sorted(set(unreadable))


# -----------------------------------------------------------------------------
# HTML
# -----------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
h2{border-bottom:1px solid #ccc;padding-top:12px}.note{color:#555;font-size:90%}"""


LEFT = ' class="l"'


def _table(header: Sequence[str], rows: Sequence[Sequence], left: int = 1) -> str:
    def cells(values, tag):
        return "".join(f"<{tag}{LEFT if i < left else ''}>{html.escape(str(v))}</{tag}>" for i, v in enumerate(values))
    return ("<table><tr>" + cells(header, "th") + "</tr>"
            + "".join("<tr>" + cells(row, "td") + "</tr>" for row in rows) + "</table>")


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, float) else str(value)


def render_html(args: argparse.Namespace, numbers: dict) -> str:
    """index.html: the figures and the tables of `numbers`; links only to the files
    written beside it."""
    methods, fractions, ref = numbers["methods"], numbers["fractions"], numbers["reference_fraction"]
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Pruning report</title>"
           f"<style>{_STYLE}</style></head><body>",
           "<h1>Pruning report</h1>",
           f"<p>{html.escape(args.input)}: {numbers['num_samples']} training images, {numbers['num_classes']} "
           f"classes, {numbers['num_epochs']} epochs recorded; list {html.escape(args.dataset_file_list)}. "
           f"Methods: {', '.join(methods)}. Numbers: <a href=\"{NUMBERS}\">{NUMBERS}</a>.</p>",
           "<h2>Kept images</h2>",
           _table(["method"] + [f"keep {f}" for f in fractions],
                  [[m] + [numbers["kept_counts"][m][f] for f in fractions] for m in methods]),
           "<h2>Score histograms</h2><p class=\"note\">Highest scores are kept first; each line is the lowest "
           "score kept at one fraction.</p>"]
    out += [_img(f"hist_{m}.png", f"{m} score histogram") for m in methods]
    out += ["<h2>Per class</h2><p class=\"note\">The fraction of each class that each method keeps; the dashed "
            "line is the fraction itself (a class-blind random subset keeps about that much of every class).</p>",
            _img("class_kept.png", "per-class kept fraction"),
            _table(["method", "fraction", "min", "5th percentile", "median", "max", "classes emptied"],
                   [[m, f] + [_pct(numbers["class_kept_summary"][m][f][k]) for k in ("min", "p05", "median", "max")]
                    + [numbers["class_kept_summary"][m][f]["classes_emptied"]]
                    for m in methods for f in fractions], left=2),
            f"<h3>The {HARDEST_CLASSES} hardest-hit classes (lowest kept fraction at {html.escape(ref)})</h3>"]
    for m in methods:
        out.append(f"<h4>{html.escape(m)}</h4>")
        out.append(_table(["label", "class", "images"] + [f"kept at {f}" for f in fractions],
                          [[c["label"], c["class"], c["size"]] + [_pct(c["kept"][f]) for f in fractions]
                           for c in numbers["hardest_hit"][m]], left=2))
    out += ["<h2>Agreement between methods</h2><p class=\"note\">Spearman: the rank correlation of two "
            "methods' scores (average ranks for ties; images never seen, scored NaN, ranked last).</p>",
            _img("spearman.png", "Spearman rank correlation"),
            _table(["Spearman"] + methods, [[a] + [f"{v:.3f}" if isinstance(v, float) else v for v in row]
                                            for a, row in zip(methods, numbers["spearman"])]),
            "<p class=\"note\">Overlap: the share of one method's kept images that the other also keeps.</p>"]
    out += [_img(f"overlap_{f}.png", f"overlap at {f}") for f in fractions]
    if "flipped" in numbers:
        flipped = numbers["flipped"]
        out += [f"<h2>Relabelled images</h2><p>{flipped['count']} relabelled lines "
                f"({html.escape(flipped['file'])}). Share of them each method keeps (a random subset keeps about "
                "the fraction itself; lower means the method prunes mislabelled images):</p>",
                _table(["method"] + [f"keep {f}" for f in fractions],
                       [[m] + [_pct(flipped["kept_share"][m][f]) for f in fractions] for m in methods])]
    out += [f"<h2>p(true label) over epochs</h2><p class=\"note\">Left: {CURVES_PER_SIDE} images drawn from the "
            f"kept and from the pruned side at {html.escape(ref)}. Right: the mean over each tenth of the images "
            "ranked by score.</p>"]
    out += [_img(f"curves_{m}.png", f"{m} curves") for m in methods]
    out += [f"<h2>Images</h2><p class=\"note\">The {IMAGES_PER_SIDE} highest- and lowest-scored images of each "
            "method, captioned with their class and score.</p>"]
    if numbers["unreadable_images"]:
        out.append("<p>Could not be read: " + html.escape("; ".join(numbers["unreadable_images"])) + "</p>")
    out += [_img(f"images_{m}.png", f"{m} images") for m in methods]
    out.append("</body></html>\n")
    return "\n".join(out)


def check_output(output: str) -> None:
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output!r} exists and is not a folder")


def write_report(output: str, files: Dict[str, bytes]) -> None:
    """All files replace their old versions together (utils/io.py's atomic group)."""
    check_output(output)
    os.makedirs(output, exist_ok=True)
    for name in files:
        remove_stale_temporaries(os.path.join(output, name))
    with atomic_group() as group:
        for name, data in files.items():
            with group.open(os.path.join(output, name), "wb") as f:
                f.write(data)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        files, numbers = build_report(args)
        write_report(args.output, files)
    except (HistoryError, FileListError, ValueError) as e:
        parser.error(str(e))  # exits with code 2
    except KeyboardInterrupt:
        print("report.py: interrupted; no output was replaced", file=sys.stderr)
        return 130
    print(f"report of {', '.join(numbers['methods'])} at {' '.join(numbers['fractions'])} -> "
          f"{os.path.join(args.output, INDEX)}")
    return 0
