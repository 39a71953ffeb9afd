"""The figures of the pruning report, drawn with matplotlib's object API on its Agg
canvas (no pyplot, no global backend, no display) and returned as PNG bytes.

Every figure has a fixed size in pixels (DPI and inch sizes chosen so that width and
height are whole pixels), given by the `*_size` functions, so that a reader (or a test)
knows what to expect whatever the data.
"""
import io
import json
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from dynunc.report.accuracy import FULL, TopOne
from dynunc.ranking import Cut

DPI = 100
THUMB = 96  # thumbnail side, pixels
GRID_COLUMNS = 8
HIST_BINS = 60
CUT_STYLES = ("-", (0, (6, 3)), (0, (2, 2)), (0, (6, 2, 2, 2)))  # coinciding cut lines show through each other
FRACTION_COLOURS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(size: Tuple[int, int]) -> Figure:
    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)


def png_bytes(fig: Figure) -> bytes:
    """The figure drawn once on an Agg canvas (at its own size: no bbox_inches="tight"), as
    PNG bytes that record where each piece of text landed (TEXT_BOXES_KEY, see text_boxes),
    so that a check can find captions that overlap without looking at pixels."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    boxes = text_boxes(fig, canvas.get_renderer())
    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
    info = PngInfo()
    info.add_text(TEXT_BOXES_KEY, json.dumps(boxes, separators=(",", ":")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# -----------------------------------------------------------------------------
# Where the text of a figure lands, and which pieces of it overlap
# -----------------------------------------------------------------------------
PAGE_HEIGHT_LIMIT = 6000  # px: the tallest report page may be as it opens at 1300 px (scripts/check_report_page.py)
TEXT_BOXES_KEY = "dynunc-text-boxes"  # the PNG text chunk: JSON [{"text", "corners"}], pixels from the top left
OVERLAP_TOLERANCE = 1.0  # pixels two boxes may share (anti-aliased edges touching)


def text_boxes(fig: Figure, renderer) -> List[dict]:
    """Every visible, non-empty piece of text of a drawn figure: its text (at most 60
    characters) and the four corners of its box in pixels from the top left, turned with
    the text (a rotated tick label is a turned rectangle, not its larger upright hull)."""
    height = fig.bbox.height
    undrawn = _ticks_out_of_view(fig)
    boxes = []
    for text in fig.findobj(match=Text):
        content = text.get_text()
        if (not content.strip() or not text.get_visible() or id(text) in undrawn
                or (text.axes is not None and not text.axes.get_visible())):
            continue
        hull = text.get_window_extent(renderer)
        angle = float(text.get_rotation()) % 360.0
        if angle % 180.0 == 0.0:
            w, h = hull.width, hull.height
        else:  # the upright size of the same text; a turned box shares its hull's centre
            text.set_rotation(0.0)
            upright = text.get_window_extent(renderer)
            text.set_rotation(angle)
            w, h = upright.width, upright.height
        cx, cy = (hull.x0 + hull.x1) / 2, (hull.y0 + hull.y1) / 2
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        corners = [(cx + dx * c - dy * s, cy + dx * s + dy * c)
                   for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
        boxes.append({"text": content if len(content) <= 60 else content[:59] + "\u2026",
                      "corners": [[round(x, 1), round(height - y, 1)] for x, y in corners]})
    return boxes


def _ticks_out_of_view(fig: Figure) -> set:
    """The ids of the tick labels an axis holds but does not draw (their tick lies outside
    its view interval: the locator's ticks beyond the limits)."""
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = 1e-10 * max(abs(high - low), 1e-300)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not low - slack <= loc <= high + slack:
                    out.update((id(tick.label1), id(tick.label2)))
    return out


def _separated(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Whether two convex quadrilaterals (4 x 2 corners, in order) are apart, or share at
    most `tolerance` pixels across some edge normal (the separating axis theorem)."""
    for quad in (a, b):
        for i in range(4):
            edge = quad[(i + 1) % 4] - quad[i]
            normal = np.array([-edge[1], edge[0]])
            length = np.hypot(*normal)
            if length == 0:
                continue
            normal /= length
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance:
                return True
    return False


def overlapping_text(boxes: Sequence[dict], size: Tuple[int, int],
                     tolerance: float = OVERLAP_TOLERANCE) -> List[str]:
    """What a reader could not read in a figure of `size` (width, height) pixels: every
    pair of text boxes that overlap by more than `tolerance` pixels, and every text that
    reaches beyond the figure's edge; one line each."""
    quads = [np.asarray(b["corners"], dtype=float) for b in boxes]
    found = []
    for box, quad in zip(boxes, quads):
        low, high = quad.min(axis=0), quad.max(axis=0)
        if (low < -tolerance).any() or high[0] > size[0] + tolerance or high[1] > size[1] + tolerance:
            found.append(f"text {box['text']!r} reaches beyond the figure's edge "
                         f"({low[0]:.0f},{low[1]:.0f})..({high[0]:.0f},{high[1]:.0f}) in {size[0]} x {size[1]} px")
    hulls = [(q.min(axis=0), q.max(axis=0)) for q in quads]
    for i in range(len(quads)):
        for j in range(i + 1, len(quads)):
            (lo_i, hi_i), (lo_j, hi_j) = hulls[i], hulls[j]
            if (np.minimum(hi_i, hi_j) - np.maximum(lo_i, lo_j) <= tolerance).any():
                continue  # the upright hulls are apart: so are the boxes
            if not _separated(quads[i], quads[j], tolerance):
                found.append(f"text {boxes[i]['text']!r} overlaps text {boxes[j]['text']!r} near "
                             f"({lo_j[0]:.0f},{lo_j[1]:.0f}) px")
    return found


def png_text_problems(data: bytes) -> Optional[List[str]]:
    """overlapping_text for PNG bytes png_bytes wrote; None if they record no text boxes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        recorded = getattr(image, "text", {}).get(TEXT_BOXES_KEY)
        if recorded is None:
            return None
        return overlapping_text(json.loads(recorded), image.size)


def number(value: float, spec: str = ".4g") -> str:
    """`value` formatted with `spec`, never "-0" (a negative number that rounds to zero);
    a whole number of up to 7 digits in full (a pick order 3993, not 3.99e+03)."""
    if float(value).is_integer() and abs(value) < 1e7 and spec.endswith("g"):
        return str(int(value))
    text = format(float(value), spec)
    if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]) and "inf" not in text:
        text = text[1:]
    return text


def histogram_size() -> Tuple[int, int]:
    return 900, 520


def axis_name(axis: str) -> str:
    """The quantity of a method's axis label, without its unit: "forgetting events" of
    "forgetting events (count)"."""
    return axis.split(" (")[0]


def cut_label(fraction: str, cut: Cut, name: str, lowest: bool = False) -> str:
    """What one fraction's cut keeps, in words (`lowest`: the scores at or below it)."""
    if cut.tied:  # select.py's words; + 0.0 turns a score of -0.0 into 0.0
        return f"keep {fraction}: {replace(cut, score=cut.score + 0.0).describe()}"
    if not np.isfinite(cut.score):
        return f"keep {fraction}: every image down to those at {cut.score} (not drawn)"
    return f"keep {fraction}: {name} {'<=' if lowest else '>='} {number(cut.score)}"


def score_histogram(method: str, axis: str, scores: np.ndarray, cuts: Sequence[Tuple[str, Cut]],
                    lowest: Sequence[str] = ()) -> bytes:
    """Histogram of the finite scores (log count axis above 100 per bin), a vertical line at each
    fraction's cut (kept: the scores at or right of it, or left of it for the fractions in
    `lowest`), each labelled with its fraction at its own
    height and described in the legend below the plot, so that cuts at one score hide none of the
    others; NaN and +-inf counted in the title."""
    fig = _figure(histogram_size())
    ax = fig.add_subplot()
    finite = scores[np.isfinite(scores)]
    counts = np.zeros(0)
    if len(finite):
        counts = ax.hist(finite, bins=HIST_BINS, color="#9aaec8", edgecolor="#51627a", linewidth=0.4)[0]
    log = counts.max(initial=0) > 100  # a log axis shows the tails of a large set; a small one reads better plain
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    for i, (fraction, cut) in enumerate(cuts):
        colour = FRACTION_COLOURS[i % len(FRACTION_COLOURS)]
        style = CUT_STYLES[i % len(CUT_STYLES)]
        label = cut_label(fraction, cut, axis_name(axis), fraction in lowest)
        if np.isfinite(cut.score):
            ax.axvline(cut.score, color=colour, linestyle=style, linewidth=1.8, label=label, zorder=3 + i)
            ax.annotate(fraction, (cut.score, 0.96 - 0.08 * i), xycoords=("data", "axes fraction"), ha="center",
                        va="top", fontsize=8, color=colour, zorder=10,
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor=colour, linewidth=0.8))
        else:
            ax.plot([], [], color=colour, linestyle=style, label=label)
    notes = [f"{count} {what}" for count, what in ((int(np.isnan(scores).sum()), "NaN (never seen)"),
                                                     (int(np.isposinf(scores).sum()), "+inf"),
                                                     (int(np.isneginf(scores).sum()), "-inf")) if count]
    ax.set_title(f"{method}: scores of {len(scores)} images" + (f" ({', '.join(notes)} not shown)" if notes else ""),
                 fontsize=11)
    kept = "highest" if not lowest else f"highest, lowest at keep {', '.join(lowest)}"
    ax.set_xlabel(f"{axis}; kept first: {kept}", fontsize=9)
    ax.set_ylabel("images (log scale)" if log else "images")
    if cuts:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def class_kept_size(num_methods: int, num_fractions: int) -> Tuple[int, int]:
    return 150 + 300 * num_fractions, 140 + 40 * num_methods


def class_kept_boxes(methods: Sequence[str], fractions: Sequence[str],
                     kept: Dict[str, Dict[str, np.ndarray]]) -> bytes:
    """For each fraction, one box per method: the distribution over classes of the
    fraction of each class kept (whiskers 1st-99th percentile, the extreme classes as
    points); a dashed line at the fraction itself (what a class-blind random subset keeps
    on average)."""
    fig = _figure(class_kept_size(len(methods), len(fractions)))
    axes = fig.subplots(1, len(fractions), sharey=True, squeeze=False)[0]
    for ax, fraction in zip(axes, fractions):
        data = [kept[m][fraction][~np.isnan(kept[m][fraction])] for m in methods]
        ax.boxplot(data, orientation="horizontal", whis=(1, 99), widths=0.6, flierprops=dict(markersize=2, alpha=0.4),
                   medianprops=dict(color="black", linewidth=1.5))
        ax.axvline(float(fraction), color="#1f77b4", linestyle="--", linewidth=1)
        ax.set_title(f"keep {fraction}", fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("fraction of the class kept", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(1, len(methods) + 1), methods)
    axes[0].invert_yaxis()
    fig.suptitle("per-class kept fraction (one value per class)", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


def heatmap_size(num_methods: int) -> Tuple[int, int]:
    return 260 + 70 * num_methods, 190 + 60 * num_methods


def heatmap(matrix: np.ndarray, methods: Sequence[str], title: str, low: float, cmap: str = "viridis") -> bytes:
    """A method x method matrix with each value written in its cell; colours from `low` to 1."""
    fig = _figure(heatmap_size(len(methods)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=low, vmax=1.0, cmap=cmap)
    ticks = range(len(methods))
    ax.set_xticks(ticks, methods, rotation=40, ha="right", fontsize=9)
    ax.set_yticks(ticks, methods, fontsize=9)
    for a in ticks:
        for b in ticks:
            value = matrix[a, b]
            red, green, blue, _ = image.cmap(image.norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            ax.text(b, a, "n/a" if np.isnan(value) else number(value, ".2f"), ha="center", va="center", fontsize=8,
                    color="black" if light else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def curves_size() -> Tuple[int, int]:
    return 1200, 440


def epoch_curves_figure(method: str, fraction: str, kept: np.ndarray, pruned: np.ndarray,
                        decile_mean: np.ndarray) -> bytes:
    """Left: p(true label) per epoch of sampled kept (solid) and pruned (dashed) images at
    one fraction (gaps: epochs they were not seen). Right: the mean per score decile."""
    fig = _figure(curves_size())
    left, right = fig.subplots(1, 2)
    epochs = np.arange(decile_mean.shape[1])
    for values, style, colour, side in ((kept, "-", "#1f77b4", "kept"), (pruned, "--", "#d62728", "pruned")):
        for i, row in enumerate(values):
            left.plot(epochs, row, style, color=colour, alpha=0.75, marker=".", markersize=3,
                      label=f"{side} ({len(values)} sampled)" if i == 0 else None)
    left.set_title(f"{method}, keep {fraction}: sampled images", fontsize=10)
    colours = [tuple(c) for c in colormaps["viridis"](np.linspace(0, 0.95, len(decile_mean)))]
    for d, row in enumerate(decile_mean):
        right.plot(epochs, row, color=colours[d], linewidth=1.5,
                   label=f"decile {d + 1}" + (" (highest)" if d == 0 else " (lowest)" if d == len(decile_mean) - 1
                                              else ""))
    right.set_title(f"{method}: mean per score decile", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.set_ylabel("p(true label)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return png_bytes(fig)


CELL_WIDTH, CELL_HEIGHT, CAPTION = 150, 150, 34  # pixels per thumbnail cell, caption band on top
TOP, BLOCK_TITLE, MARGIN = 50, 30, 20


CAPTION_CHARS = 26  # at fontsize 7, the widest characters of a line that fits a 150 px cell with a gap


def fit_caption(caption: str) -> str:
    """A tile's caption cut to two lines of CAPTION_CHARS characters, a cut line ending in
    an ellipsis, so that neighbouring captions never run into each other (the grid's title
    says what the score is; the caption gives the class and the number)."""
    lines = caption.split("\n")[:2]
    return "\n".join(line if len(line) <= CAPTION_CHARS else line[:CAPTION_CHARS - 1] + "\u2026" for line in lines)


def image_grid_size(per_side: int, blocks: int = 2) -> Tuple[int, int]:
    rows = -(-per_side // GRID_COLUMNS)
    return 2 * MARGIN + CELL_WIDTH * GRID_COLUMNS, TOP + blocks * (BLOCK_TITLE + rows * CELL_HEIGHT) + MARGIN


def image_grid(title: str, sides: Sequence[Tuple[str, List[Tuple[Optional[np.ndarray], str]]]],
               per_side: int) -> bytes:
    """Thumbnails in blocks (e.g. highest- and lowest-scored; a duplicate group), each
    titled, of at most `per_side` captioned tiles, drawn pixel for pixel (no resampling)
    on one canvas; an image that could not be read is a grey tile whose caption says so."""
    width, height = image_grid_size(per_side, len(sides))
    rows = -(-per_side // GRID_COLUMNS)
    fig = _figure((width, height))
    fig.text(0.5, 1 - 18 / height, title, ha="center", va="center", fontsize=12)
    top = TOP  # pixels from the top of the figure
    for block_title, tiles in sides:
        fig.text(MARGIN / width, 1 - (top + BLOCK_TITLE / 2) / height, block_title, ha="left", va="center", fontsize=11,
                 weight="bold")
        top += BLOCK_TITLE
        for i, (pixels, caption) in enumerate(tiles[:rows * GRID_COLUMNS]):
            if pixels is None:
                pixels = np.full((THUMB, THUMB, 3), 200, dtype=np.uint8)
            x0 = MARGIN + (i % GRID_COLUMNS) * CELL_WIDTH
            y0 = top + (i // GRID_COLUMNS) * CELL_HEIGHT
            fig.text((x0 + CELL_WIDTH / 2) / width, 1 - (y0 + CAPTION / 2) / height, fit_caption(caption),
                     ha="center", va="center", fontsize=7, linespacing=1.15)
            left = x0 + (CELL_WIDTH - pixels.shape[1]) // 2
            below = height - (y0 + CAPTION + (THUMB + pixels.shape[0]) // 2)  # figimage counts from the bottom
            fig.figimage(pixels, xo=left, yo=below, origin="upper")
        top += rows * CELL_HEIGHT
    return png_bytes(fig)


def accuracy_curve_size() -> Tuple[int, int]:
    return 960, 600


def accuracy_curve(points: Dict[Tuple[str, float], TopOne], title: str) -> bytes:
    """Top-1 against the fraction kept: mean and standard deviation over the runs per
    method (random dotted grey), the full training set as a dashed line with its band."""
    fig = _figure(accuracy_curve_size())
    ax = fig.add_subplot()
    full = points.get((FULL, 1.0))
    if full is not None:
        ax.axhline(full.mean, color="black", lw=1, ls="--", label=f"full data ({full.mean:.2f})")
        ax.axhspan(full.mean - full.std, full.mean + full.std, color="black", alpha=0.08)
    methods = list(dict.fromkeys(m for m, _ in points if m != FULL))
    # tab10 without its grey (random's), then tab20's lighter shades: no two methods share a colour
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7] + list(colormaps["tab20"].colors[1::2])
    others = iter(palette * (1 + len(methods) // len(palette)))
    for method in methods:
        fractions = sorted(f for m, f in points if m == method)
        series = [points[method, f] for f in fractions]
        style = dict(color="grey", ls=":") if method == "random" else dict(color=next(others))
        ax.errorbar(fractions, [p.mean for p in series], yerr=[p.std for p in series], marker="o", ms=4, capsize=3,
                    label=method, **style)
    fractions_drawn = [f for m, f in points if m != FULL]
    if fractions_drawn:  # up to the full set at 1, however few fractions were trained
        ax.set_xlim(max(0.0, min(fractions_drawn) - 0.05), 1.02)
    ax.set_xlabel("fraction of the training set kept")
    ax.set_ylabel("top-1 (%) on the validation set")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return png_bytes(fig)


def stability_curve_size() -> Tuple[int, int]:
    return 960, 520


def stability_curve(series: dict, title: str) -> bytes:
    """Coreset stability against produce epochs (dynunc/report/cost.py's series): the
    kept-set overlap with the earlier epoch's coreset at each tracked fraction, and the
    Spearman coefficient of the two score vectors; the epoch the run stopped at, if it did."""
    fig = _figure(stability_curve_size())
    ax = fig.add_subplot()
    epochs = series["epochs"]
    for (fraction, values), colour in zip(series["overlap"].items(), FRACTION_COLOURS):
        ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", ms=4, color=colour,
                label=f"kept-set overlap at {fraction}")
    ax.plot(epochs, [np.nan if v is None else v for v in series["spearman"]], marker="s", ms=4, color="black",
            ls="--", label="Spearman of the scores")
    if series.get("stopped_after") is not None:
        ax.axvline(series["stopped_after"], color="grey", ls=":", label=f"stopped after epoch {series['stopped_after']}")
    ax.set_xlabel("produce epoch (scores from epochs 0..epoch, against the earlier epoch's)")
    ax.set_ylabel("overlap / Spearman")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
