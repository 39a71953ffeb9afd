"""The pruning report (report.py): what each method keeps and throws away, as one HTML
page with PNG figures beside it and the numbers in report.json. The page opens on the
decision section (dynunc/report/decision.py), with the accuracies of --accuracy
(dynunc/report/accuracy.py) when given.

Two passes over the history, each reading an epoch's files once: the first scores every
method (dynunc/scoring/methods.py's `score_history`, as get_coreset.py does), the second reads
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
from dataclasses import asdict
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynunc.lists.file_list import FileList, read_file_list
from dynunc.report import figures
from dynunc.report import label_issues as label_section
from dynunc.report import projection
from dynunc.report.accuracy import FULL, TopOne, read_accuracies, summarise
from dynunc.report.cost import DEFAULT_PRODUCE_OVERHEAD, cost_numbers, cost_reading
from dynunc.report.decision import BEST, decision_rows, reading, reading_parts
from dynunc.report.stability import PageStability
from dynunc.report.duplicates import add_duplicates, add_leakage, add_leakage_flags, check_leakage_flags
from dynunc.report.stats import (MethodOrder, class_kept_fractions, epoch_curves, extremes, flipped_kept_share,
                                  hardest_hit, overlap_matrix, sample_sides, spearman_matrix)
from dynunc.scoring.methods import METHODS, score_history
from dynunc.scoring.plan import add_flag, add_plan_flags, check_flags, make_plan
from dynunc.interrupt import run_command
from dynunc.io import atomic_group, remove_stale_temporaries
from dynunc.paths import check_arguments, check_output_folder

DEFAULT_FRACTIONS = ("0.9", "0.7", "0.5", "0.3")
HARDEST_CLASSES = 20
HARDEST_SHOWN = 8  # of them on the page, per method (report.json holds all)
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
    add_plan_flags(p, None, "methods to compare (default: every method whose records the history holds). Known: "
                   + ", ".join(METHODS), fraction_default=DEFAULT_FRACTIONS,
                   seed_help="ties at a cut: which of the tied images are kept (a uniform draw, as in "
                   "get_coreset.py); random: the subset drawn; also the curves' sampled images")
    add_flag(p, "--output", required=True, metavar="DIR", help="folder to write index.html, report.json and PNGs")
    add_flag(p, "--flipped", metavar="FILE",
             help="int64 .npy of the relabelled lines' indices (data/label_noise.py writes LIST.flipped.npy): "
             "adds the share of them each method keeps")
    add_flag(p, "--data_root", help="folder the list's paths are relative to (default: the list's folder)")
    add_flag(p, "--accuracy", nargs="+", metavar="SOURCE",
             help="top-1 of networks trained on the coresets, for the decision section: a pruning curve's CSV "
             "(scripts/pruning_curve.py's curve.csv), or a main.py run as METHOD:FRACTION=RUN (e.g. "
             "dynunc:0.5=runs/dynunc_s0) or full=RUN for the full training set, RUN being the run's output "
             "folder or its metrics.jsonl (the last epoch's acc1; runs of one method and fraction are seeds)")
    add_flag(p, "--produce-overhead", type=float, default=DEFAULT_PRODUCE_OVERHEAD, metavar="R",
             help="produce-mode epoch time / plain epoch time, to estimate a full training run's cost from the "
             f"produce run's when no --accuracy full=RUN gives one (default {DEFAULT_PRODUCE_OVERHEAD}, the demo's)")
    projection.add_flag(p)
    add_leakage_flags(p, add_flag)
    label_section.add_flag(p, add_flag)
    return p


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


def shown_path(path: str, output: str) -> str:
    """`path` as the report shows it: relative to the report folder (the page's links are)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(output))


def thumbnail(path: str, name: str) -> Tuple[Optional[np.ndarray], str]:
    """(RGB pixels, the longer side THUMB, '') or (None, why) if the image cannot be read;
    `why` names the image by `name` (its path in the list), never by its absolute path."""
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
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).replace(path, name)
        return None, f"cannot read {name}: {reason}"


def _number(value: float):
    """A float for JSON: NaN and +-inf as strings (strict JSON has neither)."""
    value = float(value)
    return value if np.isfinite(value) else str(value)


def _matrix(matrix: np.ndarray) -> List[List]:
    return [[_number(v) for v in row] for row in matrix]


def build_report(args: argparse.Namespace) -> Tuple[Dict[str, bytes], dict]:
    """The report's files ({name: bytes}, index.html and report.json included) and its numbers."""
    check_output(args.output)
    check_arguments(args, in_files=("dataset_file_list", "flipped", "val_file_list"),
                    in_folders=("input", "embeddings", "data_root", "val_data_root"))
    check_leakage_flags(args)
    file_list = read_file_list(args.dataset_file_list, root=args.data_root)
    plan = make_plan(args, check_flags(args), file_list.index)  # every check that needs no record read
    n, num_epochs, load = plan.num_samples, plan.num_epochs, plan.loader()
    flipped = load_flipped(args.flipped, n) if args.flipped else None
    accuracy = summarise(read_accuracies(args.accuracy)) if args.accuracy else None
    methods, fractions, keeps = plan.methods, plan.fractions, plan.keeps
    labels, class_dirs = class_labels(file_list)
    shown = projection.prepare(plan.embed_dir, n, args.projection_fraction, fractions, plan.selection.seed)
    embedding_files: Dict[str, bytes] = {}  # --dedup and --leakage (dynunc/report/duplicates.py)
    embedding_numbers: dict = {}
    if args.dedup is not None:
        add_duplicates(embedding_files, embedding_numbers, args, plan.embed_dir, file_list, labels, class_dirs, thumbnail)
    if args.leakage is not None:
        add_leakage(embedding_files, embedding_numbers, args, plan.embed_dir, file_list, thumbnail)

    started = time.perf_counter()
    scores = score_history(methods, num_epochs, n, load, plan.params, embedded=plan.embedded)
    scored = time.perf_counter()
    orders = {m: MethodOrder.of(scores.pop(m), plan.selection.seed,  # prototype's Sorscher rule: its kept side
                                partial(METHODS[m].keeps_lowest, plan.params, n=n)) for m in methods}
    reference = min(fractions, key=lambda f: (abs(float(f) - 0.5), -float(f)))  # the curves' and tables' fraction
    files: Dict[str, bytes] = {}
    numbers = {"num_samples": n, "num_epochs": num_epochs, "num_classes": len(class_dirs),
               "methods": methods, "fractions": fractions, "reference_fraction": reference,
               "keep": keeps, "params": plan.params_json()}
    numbers["kept_counts"] = {m: {f: int(np.count_nonzero(orders[m].kept(keeps[f]))) for f in fractions}
                              for m in methods}
    numbers["cuts"] = {m: {f: _number(orders[m].cut(keeps[f])) for f in fractions} for m in methods}
    numbers["keeps_lowest"] = {m: [f for f in fractions if orders[m].keeps_lowest(keeps[f])] for m in methods}
    cuts = {m: {f: orders[m].tie(keeps[f]) for f in fractions} for m in methods}
    numbers["ties"] = {m: {f: {"score": _number(c.score), "score_text": figures.number(c.score), "tied": c.tied,
                               "drawn": c.drawn} for f, c in cuts[m].items()} for m in methods}
    for m in methods:
        files[f"hist_{m}.png"] = figures.score_histogram(m, METHODS[m].axis, orders[m].scores, list(cuts[m].items()),
                                                         lowest=numbers["keeps_lowest"][m])
    add_per_class(files, numbers, orders, keeps, reference, labels, class_dirs)
    add_agreement(files, numbers, orders, keeps)
    if shown is not None:
        projection.add_projection(files, numbers, orders, shown)
    if flipped is not None:
        numbers["flipped"] = {"file": shown_path(args.flipped, args.output), "count": len(flipped),
                              "kept_share": {m: {f: _number(flipped_kept_share(orders[m], keeps[f], flipped))
                                                 for f in fractions} for m in methods}}
    add_decision(files, numbers, accuracy)
    curves_started = time.perf_counter()
    stability = page_stability(plan.params, methods, n, keeps)
    try:
        add_curves(files, numbers, orders, keeps[reference], reference, num_epochs, load, plan.params.seed,
                   stability)
    finally:
        if stability is not None:
            stability.close()
    curves_done = time.perf_counter()
    add_cost(files, numbers, args, stability)
    add_image_grids(files, numbers, orders, file_list, labels, class_dirs)
    if args.label_issues:
        label_section.add_label_issues(files, numbers, args.label_issues, plan, file_list, labels, thumbnail, flipped)
    files.update(embedding_files)
    numbers.update(embedding_numbers)
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
            for c in hardest_hit(per_class[m][reference], HARDEST_CLASSES, float(reference))]
        for m in orders}


def add_agreement(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder],
                  keeps: Dict[str, int]) -> None:
    """Spearman correlation (a table on the page) and kept-set overlap (a heatmap per
    fraction) between every pair of methods."""
    methods, ordered = list(orders), list(orders.values())
    spearman = spearman_matrix(ordered)
    numbers["spearman"] = _matrix(spearman)
    numbers["overlap"] = {}
    for f, keep in keeps.items():
        overlap = overlap_matrix(ordered, keep)
        numbers["overlap"][f] = _matrix(overlap)
        if len(methods) > 1:  # one method's 1 x 1 matrix says nothing
            files[f"overlap_{f}.png"] = figures.heatmap(overlap, methods, f"kept sets at {f}: shared / kept", low=0.0)


def page_stability(params, methods: Sequence[str], n: int, keeps: Dict[str, int]) -> Optional[PageStability]:
    """The stability tracker on the page's dynunc settings (None when dynunc is not shown)."""
    if "dynunc" not in methods:
        return None
    return PageStability(n, params.window, bool(params.include_last_window), params.epochs, keeps, params.seed)


def curve_points(accuracy: Optional[dict]) -> bool:
    """Whether the accuracies draw a curve: some method trained at two fractions or more
    (one point per method says no more than the table)."""
    fractions: Dict[str, set] = {}
    for method, fraction in accuracy or {}:
        if method != FULL:
            fractions.setdefault(method, set()).add(fraction)
    return any(len(v) > 1 for v in fractions.values())


def add_decision(files: Dict[str, bytes], numbers: dict, accuracy: Optional[dict]) -> None:
    """The decision rows and their reading; with accuracies at two fractions or more, the
    curve figure drawn from them."""
    rows = decision_rows(numbers["methods"], numbers["fractions"], numbers, accuracy)
    full = next((v for (m, _), v in (accuracy or {}).items() if m == FULL), None)
    numbers["answer"], numbers["behind"] = reading_parts(rows, numbers["fractions"], numbers, full)
    numbers["reading"] = reading(rows, numbers["fractions"], numbers, full)
    numbers["decision"] = [dict(r, top1=None if r["top1"] is None else asdict(r["top1"])) for r in rows]
    numbers["full_top1"] = None if full is None else asdict(full)
    numbers["accuracy_curve"] = curve_points(accuracy)
    if numbers["accuracy_curve"]:
        files["accuracy_curve.png"] = figures.accuracy_curve(accuracy, "top-1 of networks trained on each coreset "
                                                             "(mean ± std over runs)")


def add_cost(files: Dict[str, bytes], numbers: dict, args: argparse.Namespace,
             stability: Optional[PageStability]) -> None:
    """The cost section's numbers (dynunc/report/cost.py; the stability the produce run
    logged stays in them, at its own window) and the stability figure on the page's
    settings, with the epoch the produce run stopped at; a series of one epoch is a
    sentence, not a figure."""
    cost = cost_numbers(args.input, numbers["fractions"], args.accuracy, args.produce_overhead)
    if cost is not None:
        cost["metrics"] = shown_path(cost["metrics"], args.output)
    logged = cost["stability"] if cost is not None else None
    series = None if stability is None else stability.series(logged["stopped_after"] if logged else None)
    numbers["stability"] = series
    if series is not None and len(series["epochs"]) > 1:
        files["stability.png"] = figures.stability_curve(
            series, f"coreset stability against epochs (dynunc at --window {series['window']}, as this page selects)")
    numbers["cost"] = cost


def add_curves(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder], keep: int, fraction: str,
               num_epochs: int, load: Callable[[int, str], np.ndarray], seed: int,
               stability: Optional[PageStability] = None) -> None:
    """p(true label) over epochs (the second pass over the history): sampled kept and
    pruned images at `fraction`, and the mean per score decile; each epoch's
    probabilities are also fed to `stability`."""
    rng = np.random.default_rng(seed)
    sides = {m: sample_sides(o, keep, CURVES_PER_SIDE, rng) for m, o in orders.items()}
    sample = np.concatenate([side for m in orders for side in sides[m]]).astype(np.int64)
    if stability is None:
        def load_prob(epoch: int) -> np.ndarray:
            return load(epoch, "prob")
    else:
        def load_prob(epoch: int) -> np.ndarray:
            return stability.feed(epoch, load(epoch, "prob"))
    curves = epoch_curves(orders, num_epochs, load_prob, sample)
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
    """The highest- and lowest-scored images of each method: only these are opened. A
    method that reads no record (random) draws its scores uniformly: its highest-scored
    images are a uniform sample of the kept ones and its lowest a uniform sample of the
    pruned ones, and they are shown as such, captioned with their class only."""
    chosen = {m: extremes(o, IMAGES_PER_SIDE) for m, o in orders.items()}
    unreadable: List[str] = []
    numbers["images"] = {}
    for m, order in orders.items():
        blocks, listed = [], {}
        uniform = not METHODS[m].needs
        name = figures.axis_name(METHODS[m].axis)
        for side, indices in zip(("highest", "lowest"), chosen[m]):
            tiles, listed[side] = [], []
            for i in indices:
                path = file_list.name(int(i))
                pixels, why = thumbnail(file_list.full_path(int(i)), path.lstrip("/"))
                if why:
                    unreadable.append(why)
                label, score = int(labels[i]), order.scores[i]
                caption = f"class {class_dirs.get(label) or label}"
                if why:
                    caption += "\n(unreadable)"
                elif not uniform:
                    value = figures.number(score, '.3g') if np.isfinite(score) else f'{score:+}'
                    long = f"{value} {name}"  # the quantity beside the number where it fits the tile
                    caption += "\n" + (long if len(long) <= figures.CAPTION_CHARS else f"score {value}")
                tiles.append((pixels, caption))
                listed[side].append({"index": int(i), "path": path, "label": label, "score": _number(score)})
            if uniform:
                title = f"{len(indices)} {'kept' if side == 'highest' else 'pruned'} images, drawn uniformly"
            elif numbers["keeps_lowest"][m]:  # prototype's Sorscher rule: which side is kept depends on the fraction
                at = f"at keep {', '.join(numbers['keeps_lowest'][m])}"
                title = f"{len(indices)} {side}-scored (kept first {'except ' + at if side == 'highest' else at})"
            else:
                title = f"{len(indices)} {side}-scored ({'kept' if side == 'highest' else 'pruned'} first)"
            blocks.append((title, tiles))
        what = "a uniform sample of the kept and of the pruned images" if uniform else METHODS[m].axis
        files[f"images_{m}.png"] = figures.image_grid(f"{m}: {what}", blocks, IMAGES_PER_SIDE)
        numbers["images"][m] = listed
    numbers["unreadable_images"] = sorted(set(unreadable))


# -----------------------------------------------------------------------------
# HTML
# -----------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
h2{border-bottom:1px solid #ccc;padding-top:12px}.note{color:#555;font-size:90%}.wide{overflow-x:auto}
.reading{background:#f6f8fa;border-left:4px solid #1f77b4;padding:8px 12px;max-width:1000px}
nav ul{columns:2;max-width:700px}tr.best td{font-weight:bold}tr.full td{background:#f4f4f4}
tr.first td{border-top:2px solid #888}td{white-space:nowrap}details{margin:6px 0 12px}
summary{cursor:pointer;color:#1f4e79}
th.turned{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:8px 3px}"""

LEFT = ' class="l"'
# The page's sections in order: (anchor, title). Each has a body function in `section_bodies`;
# one whose body is None (an option not given) is left out of the page and its contents.
SECTIONS = (("decision", "Which method, which fraction"), ("cost", "Cost, and coreset stability against epochs"),
            ("histograms", "Score histograms"),
            ("per-class", "Per class"), ("agreement", "Agreement between methods"),
            ("projection", "Kept and pruned images in embedding space"),
            ("curves", "p(true label) over epochs"), ("images", "Images"),
            ("dedup", "Near-duplicates (--dedup)"), ("leakage", "Train/val leakage (--leakage)"),
            (label_section.ANCHOR, label_section.TITLE))


def _table(header: Sequence[str], rows: Sequence[Sequence], left: int = 1,
           row_classes: Optional[Sequence[str]] = None, turned_heads: bool = False) -> str:
    """An HTML table in a sideways-scrolling `.wide` box: the first `left` columns
    left-aligned; with `turned_heads`, the other columns' heads read bottom to top (a
    square matrix of methods, whose long names would otherwise set each column's width)."""
    def cells(values, tag):
        turned = ' class="turned"' if turned_heads and tag == "th" else ""
        return "".join(f"<{tag}{LEFT if i < left else turned}>{html.escape(str(v))}</{tag}>"
                       for i, v in enumerate(values))

    def tr(i: int) -> str:
        kind = row_classes[i] if row_classes and row_classes[i] else ""
        return f"<tr class=\"{kind}\">" if kind else "<tr>"
    return ("<div class=\"wide\"><table><tr>" + cells(header, "th") + "</tr>"
            + "".join(tr(i) + cells(row, "td") + "</tr>" for i, row in enumerate(rows)) + "</table></div>")


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _folded(summary: str, body: Sequence[str]) -> List[str]:
    """`body` folded under a one-line `summary` (HTML) that says what unfolding shows."""
    return [f"<details><summary>{summary}</summary>"] + list(body) + ["</details>"]


def _pct(value) -> str:
    return f"{figures.number(100 * value, '.1f')}%" if isinstance(value, float) else str(value)


def _heading(anchor: str) -> str:
    return f"<h2 id=\"{anchor}\">{html.escape(dict(SECTIONS)[anchor])}</h2>"


def _top1(value: Optional[dict], runs: bool) -> str:
    return "" if value is None else TopOne(**value).text(runs)


def decision_html(numbers: dict) -> List[str]:
    """The answer first (the reading), then the decision table (a full-data row first,
    then one row per fraction and method), the accuracy curve when it has a curve to draw,
    and what the columns mean, folded."""
    rows = numbers["decision"]
    flipped = "flipped" in numbers
    accuracy = numbers["full_top1"] is not None or any(r["top1"] is not None for r in rows)
    header = ["method", "keep", "images kept", "smallest class kept", "drawn among ties"]
    header += ["relabelled kept"] if flipped else []
    counts = {v["runs"] for v in [numbers["full_top1"]] + [r["top1"] for r in rows] if v is not None}
    per_cell = len(counts) > 1  # the number of runs in each cell, or once in the header
    if accuracy:
        runs = 0 if per_cell else counts.pop()
        header += ["top-1 (%)" if per_cell else f"top-1 (%), {runs} run{'s' if runs > 1 else ''}",
                   "vs the highest mean"]
    table, kinds = [], []
    n = numbers["num_samples"]
    if accuracy:
        table.append(["full data", "1", n, "100%", "none"] + (["100%"] if flipped else [])
                     + [_top1(numbers["full_top1"], per_cell), ""])
        kinds.append("full")
    previous = None
    for r in rows:
        if r["in_report"]:
            drawn = f"{_pct(r['drawn_share'])} ({r['drawn']})" if r["drawn"] else "none"
            cells = [r["method"], r["fraction"], r["kept"], _pct(r["class_min"]), drawn]
            cells += [_pct(r["flipped_kept"])] if flipped else []
        else:
            cells = [r["method"], r["fraction"]] + ["(not scored here)"] + [""] * (2 + flipped)
        if accuracy:
            cells += [_top1(r["top1"], per_cell), r.get("vs_best", "")]
        table.append(cells)
        kinds.append(" ".join(k for k in ("best" if r.get("vs_best") == BEST else "",
                                           "first" if r["fraction"] != previous else "") if k))
        previous = r["fraction"]
    answer, behind = (numbers["answer"], numbers["behind"]) if "answer" in numbers else (numbers["reading"], "")
    out = [f"<p class=\"reading\">{html.escape(answer)}</p>"] + ([f"<p>{html.escape(behind)}</p>"] if behind else [])
    out.append(_table(header, table, left=2, row_classes=kinds))
    if numbers.get("accuracy_curve"):
        out.append(_img("accuracy_curve.png", "top-1 against the fraction kept"))
    out += _folded("What the columns mean", [
        "<p class=\"note\">Smallest class kept: the share of the class the coreset keeps least of (a class-blind "
        "random subset keeps about the fraction of each; the distribution over classes is under Per class). Drawn "
        "among ties: the kept images chosen at random among images of equal score at the cut (see the histograms)."
        + (f" Relabelled kept: the share of the {numbers['flipped']['count']} relabelled images "
           f"({html.escape(numbers['flipped']['file'])}) in the coreset." if flipped else "")
        + (" Top-1: mean ± population std over the runs (seeds) given with --accuracy. Against the highest mean "
           "at its fraction a method is below only when the gap exceeds the seed spread (its mean + std stays "
           "under the highest's mean - std, both with at least two runs), within spread otherwise, and cannot "
           "tell with one run on either side; best (bold): ahead of every other trained method by more than the "
           "spread; a highest row whose coreset empties a class or keeps less than half the fraction of one says "
           "so." if accuracy else "") + "</p>"])
    return out


def cost_html(cost: Optional[dict], stability: Optional[dict]) -> List[str]:
    """The cost table (per fraction: a later run's cost, its saving, the runs to pay off)
    and the coreset's stability on the page's settings (a figure, folded; one epoch: a
    sentence)."""
    out = []
    if cost is None:
        out.append("<p>No metrics.jsonl beside the history: the produce run's cost is unknown.</p>")
    else:
        out += [f"<p class=\"reading\">{html.escape(cost_reading(cost))}</p>",
                _table(["keep", "later run (s)", "saved per later run (s)", "pays off after (later runs)"],
                       [[r["fraction"], f"{r['later_run_seconds']:.0f}", f"{r['saving_seconds']:.0f}",
                         r["pays_off_after"] if r["pays_off_after"] is not None else "never"] for r in cost["rows"]])]
        out += _folded("How the cost is counted", [
            f"<p class=\"note\">Produce cost: the sum of the measured epoch times in {html.escape(cost['metrics'])}. "
            "A later run on a fraction f costs about f of a full run. Pays off after: the produce cost over the "
            "saving per later run, rounded up (the whole produce run charged to pruning; if its trained model is "
            "used too, only its overhead is, and pruning pays off sooner).</p>"])
    if stability is None:
        return out + ["<p>Coreset stability: not shown (dynunc is not among the methods, or the recorded epochs "
                      "give no two consecutive scores at the page's --window).</p>"]
    last = stability["epochs"][-1]
    said = ", ".join(f"{_pct(float(v[-1]))} at {html.escape(f)}" for f, v in stability["overlap"].items())
    sentence = (f"Coreset stability (dynunc at --window {stability['window']}, as this page selects): the coresets "
                f"from the epochs up to {stability['vs_epochs'][-1]} and up to {last} share {said} of their kept "
                "images" + (f"; the produce run stopped after epoch {stability['stopped_after']}"
                            if stability["stopped_after"] is not None else "") + ".")
    if len(stability["epochs"]) == 1:
        return out + [f"<p>{sentence}</p>"]
    return out + _folded(sentence + " The figure over every epoch:", [
        _img("stability.png", "coreset stability against epochs"),
        "<p class=\"note\">After each recorded epoch with a score, the coreset this page would select from the "
        "epochs so far (its --window, --epochs and --seed) against the one from the epoch before: the share of kept "
        "images both keep, and the Spearman coefficient of the two score vectors. The produce run logs the same at "
        "PRODUCE.TRACK_WINDOW, which may differ; its log stays in report.json (cost.stability).</p>"])


def histograms_html(numbers: dict) -> List[str]:
    methods = numbers["methods"]
    return _folded(f"{len(methods)} score histograms, each with the cut of every fraction "
                   f"({html.escape(', '.join(numbers['fractions']))})", [
        "<p class=\"note\">Highest scores are kept first; each line is where one fraction cuts: the images at or "
        "right of it are kept (at or left of it where the legend says &le;: prototype's Sorscher rule keeps the "
        "easiest at small fractions). A cut inside a tie keeps some of the images at that score, drawn at random; "
        "the legend says how many.</p>"] + [_img(f"hist_{m}.png", f"{m} score histogram") for m in methods])


def per_class_html(numbers: dict) -> List[str]:
    """The distribution of per-class kept fractions (one figure) and, per method, the
    classes kept least at the reference fraction (one table): the decision table gives
    the smallest share, report.json every number."""
    methods, ref = numbers["methods"], numbers["reference_fraction"]
    rows = []
    for m in methods:
        hit = numbers["hardest_hit"][m]
        least = ", ".join(f"{c['class'] or c['label']} ({_pct(c['kept'][ref])})" for c in hit[:HARDEST_SHOWN])
        rows.append([m, least + (", ..." if len(hit) > HARDEST_SHOWN else "") if hit else "none",
                     numbers["class_kept_summary"][m][ref]["classes_emptied"], len(hit)])
    return _folded(f"The share of each class kept, per method and fraction, and the classes kept least at "
                   f"{html.escape(ref)}", [
        "<p class=\"note\">The dashed line is the fraction itself (a class-blind random subset keeps about that "
        "much of every class).</p>", _img("class_kept.png", "per-class kept fraction"),
        _table(["method", f"classes kept least at {ref}, lowest first (share kept)", f"classes emptied at {ref}",
                f"classes kept below {ref} (at most {HARDEST_CLASSES})"], rows, left=2)])


def agreement_html(numbers: dict) -> List[str]:
    methods = numbers["methods"]
    if len(methods) < 2:
        return ["<p>One method: nothing to compare it with.</p>"]
    return _folded("Spearman rank correlation and kept-set overlap of every pair of methods", [
        "<p class=\"note\">Spearman: the rank correlation of two methods' scores (average ranks for ties; images "
        "never seen, scored NaN, ranked last).</p>",
        _table(["Spearman"] + methods, [[a] + [figures.number(v, ".3f") if isinstance(v, float) else v
                                               for v in row] for a, row in zip(methods, numbers["spearman"])],
               turned_heads=True),
        "<p class=\"note\">Overlap: the share of one method's kept images that the other also keeps.</p>"]
        + [_img(f"overlap_{f}.png", f"overlap at {f}") for f in numbers["fractions"]])


def curves_html(numbers: dict) -> List[str]:
    ref = html.escape(numbers["reference_fraction"])
    return _folded(f"p(true label) over epochs of sampled kept and pruned images at {ref}, and per score decile", [
        f"<p class=\"note\">Left: {CURVES_PER_SIDE} images drawn from the kept and from the pruned side at {ref}. "
        "Right: the mean over each tenth of the images ranked by score.</p>"]
        + [_img(f"curves_{m}.png", f"{m} curves") for m in numbers["methods"]])


def images_html(numbers: dict) -> List[str]:
    body = [f"<p class=\"note\">The {IMAGES_PER_SIDE} highest- and lowest-scored images of each method, captioned "
            "with their class and score (the grid's title says what the score is; random: a uniform sample of the "
            "kept and of the pruned images).</p>"]
    if numbers["unreadable_images"]:
        body.append("<p>Could not be read: " + html.escape("; ".join(numbers["unreadable_images"])) + "</p>")
    return _folded(f"The {IMAGES_PER_SIDE} highest- and lowest-scored images of each method",
                   body + [_img(f"images_{m}.png", f"{m} images") for m in numbers["methods"]])


def projection_section(numbers: dict) -> List[str]:
    body = projection.projection_html(numbers.get("projection"), "")[1:]
    if numbers.get("projection") is None:
        return body
    return _folded(f"Kept and pruned images per method at keep {html.escape(numbers['projection']['fraction'])}, "
                   "on the first two principal components of the embeddings", body)


def section_bodies(numbers: dict) -> Dict[str, Optional[List[str]]]:
    """Each section's body (HTML lines after its heading), None for one not on this page."""
    return {"decision": decision_html(numbers), "cost": cost_html(numbers["cost"], numbers.get("stability")),
            "histograms": histograms_html(numbers), "per-class": per_class_html(numbers),
            "agreement": agreement_html(numbers), "projection": projection_section(numbers),
            "curves": curves_html(numbers), "images": images_html(numbers),
            "dedup": dedup_html(numbers.get("dedup")) or None, "leakage": leakage_html(numbers.get("leakage")) or None,
            label_section.ANCHOR: label_section.label_issues_html(numbers.get(label_section.ANCHOR), _table) or None}


def render_html(args: argparse.Namespace, numbers: dict) -> str:
    """index.html: the decision first, the details folded (<details>); links only to
    the files written beside it; paths shown relative to the report folder."""
    bodies = section_bodies(numbers)
    sections = [(a, t) for a, t in SECTIONS if bodies.get(a) is not None]
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Pruning report</title>"
           f"<style>{_STYLE}</style></head><body>",
           "<h1>Pruning report</h1>",
           f"<p>History {html.escape(shown_path(args.input, args.output))}: {numbers['num_samples']} training "
           f"images, {numbers['num_classes']} classes, {numbers['num_epochs']} epochs recorded; list "
           f"{html.escape(shown_path(args.dataset_file_list, args.output))} (paths relative to this page). "
           f"Methods: {', '.join(numbers['methods'])}. Numbers: <a href=\"{NUMBERS}\">{NUMBERS}</a>.</p>",
           "<nav><ul>" + "".join(f"<li><a href=\"#{a}\">{html.escape(t)}</a></li>" for a, t in sections)
           + "</ul></nav>"]
    for anchor, _ in sections:
        out += [_heading(anchor)] + bodies[anchor]
    out.append("</body></html>\n")
    return "\n".join(out)


def dedup_html(dedup: Optional[dict]) -> List[str]:
    """--dedup: how many images the groups remove, and the largest groups as image rows."""
    if dedup is None:
        return []
    reading = (f"{dedup['groups']} groups of near-duplicates (cosine similarity of {html.escape(dedup['source'])} "
               f"&ge; {dedup['threshold']:g}, within {dedup['clusters']} k-means clusters): get_coreset.py --dedup "
               f"removes {dedup['removed']} images, {_pct(dedup['removed_share'])} of the list, before any method "
               f"selects. Every group: <a href=\"{dedup['file']}\">{dedup['file']}</a>.")
    return _pairs_section(dedup, reading, f"The {len(dedup['shown'])} largest groups, one per row: the kept image "
                          "(the least similar to its cluster's centroid, as SemDeDup keeps it), then the removed "
                          "ones, most similar first.", "near-duplicate groups")


def leakage_html(leakage: Optional[dict]) -> List[str]:
    """--leakage: how many validation images have a training image this close, and the closest pairs."""
    if leakage is None:
        return []
    reading = (f"{leakage['pairs']} of {leakage['val_images']} validation images ({_pct(leakage['share'])}) have a "
               f"training image with cosine similarity &ge; {leakage['threshold']:g} ({html.escape(leakage['source'])}; "
               f"the highest {figures.number(leakage['max_cosine'])}, the median over validation images "
               f"{figures.number(leakage['median_cosine'])}). Every pair: <a href=\"{leakage['file']}\">"
               f"{leakage['file']}</a>.")
    return _pairs_section(leakage, reading, f"The {len(leakage['shown'])} most similar pairs, highest first: each "
                          "validation image, then its nearest training image.", "train/val pairs")


def _pairs_section(numbers: dict, reading: str, note: str, alt: str) -> List[str]:
    """--dedup's and --leakage's section: the reading, its caution, the image rows with
    their note, and the images that could not be read."""
    out = [f"<p class=\"reading\">{reading}</p>"]
    if numbers.get("warning"):
        out.append(f"<p class=\"reading\"><b>Caution:</b> {html.escape(numbers['warning'])}.</p>")
    if numbers["figure"]:
        out += [f"<p class=\"note\">{note}</p>", _img(numbers["figure"], alt)]
    if numbers["unreadable"]:
        out.append("<p>Could not be read: " + html.escape("; ".join(numbers["unreadable"])) + "</p>")
    return out


def check_output(output: str) -> None:
    check_output_folder("--output", output)  # a file, a parent that is a file, not writable


def write_report(output: str, files: Dict[str, bytes]) -> None:
    """All files replace their old versions together (dynunc/io.py's atomic group)."""
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

    def work() -> int:
        files, numbers = build_report(args)
        write_report(args.output, files)
        print(f"report of {', '.join(numbers['methods'])} at {' '.join(numbers['fractions'])} -> "
              f"{os.path.join(args.output, INDEX)}")
        return 0

    return run_command(parser.prog, work)
