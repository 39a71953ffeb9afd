"""The pruning report's embedding section: per method, the recorded embeddings
(embed_{epoch}.npy, dynunc/history.py) projected to 2-D, kept and pruned images in two
colours, at one fraction.

The cost is bounded whatever N: one seeded draw of at most POINTS images is made once,
only their rows are read from the memory-mapped file (never N x D in memory), a PCA
(numpy's SVD of the centred rows) is fitted on those rows once, and every method's panel
shows the same points on the same axes: only the colours differ, from each method's
position in its ranking (dynunc/report/stats.py's MethodOrder: kept iff position <
keep, select.top's set).
"""
import html
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dynunc.report import figures
from dynunc.uncertainty import check_fraction
from dynunc.history import EMBED_CONFIG_KEYS, embed_path, embedder_summary, list_embed_epochs, load_embeddings
from dynunc.report.stats import MethodOrder

POINTS = 5000  # images drawn for the projection: the figure's cost stays bounded at 13M images
COLUMNS = 4  # panels per row
PANEL = 280  # pixels per panel side
KEPT_COLOUR, PRUNED_COLOUR = "#1f77b4", "#d62728"  # the curves figure's kept and pruned colours
FLAG = "--projection-fraction"


@dataclass
class Projection:
    """The shown images and where PCA puts them."""

    indices: np.ndarray  # int64 line indices, ascending
    coords: np.ndarray  # (len(indices), 2) float64: the first two principal components
    explained: Tuple[float, float]  # the share of the shown rows' variance along each axis


def add_flag(parser) -> None:
    parser.add_argument(FLAG, metavar="F", dest="projection_fraction",
                        help="the fraction at which the embedding section colours kept and pruned images (default: "
                        "the smallest --fraction); needs embeddings in the history (" + EMBED_CONFIG_KEYS + ")")


def projection_keep(given: Optional[str], fractions: Sequence[str], num_samples: int) -> Tuple[str, int]:
    """(the fraction as written, the images it keeps): --projection-fraction if given,
    else the smallest of the report's fractions. ValueError naming the flag if it is not
    a number in (0, 1] that keeps an image."""
    if given is None:
        fraction = min(fractions, key=float)
        return fraction, int(num_samples * float(fraction))
    try:
        value = float(given)
    except ValueError:
        raise ValueError(f"{FLAG}: {given!r} is not a number") from None
    try:
        return given, check_fraction(num_samples, value)
    except ValueError as e:
        raise ValueError(f"{FLAG}: {e}") from None


def draw_points(num_samples: int, seed: int, points: int = POINTS) -> np.ndarray:
    """At most `points` distinct line indices drawn uniformly from `seed`, ascending (the
    order the memory map reads best); every line when there are no more."""
    if num_samples <= points:
        return np.arange(num_samples, dtype=np.int64)
    drawn = np.random.default_rng(seed).choice(num_samples, size=points, replace=False)
    return np.sort(drawn).astype(np.int64)


def pca_2d(rows: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
    """The rows' coordinates along their first two principal components (each axis's sign
    set so that its largest loading is positive, the same on any BLAS) and the share of
    the rows' variance each explains (0 for an axis the data lacks)."""
    values = np.asarray(rows, dtype=np.float64)
    centred = values - values.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:2]
    largest = axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)]
    axes = axes * np.where(largest < 0, -1.0, 1.0)[:, None]
    coords = np.zeros((len(rows), 2))
    coords[:, :len(axes)] = centred @ axes.T
    variance = singular ** 2
    total = float(variance.sum())
    shares = [float(v / total) if total > 0 else 0.0 for v in variance[:2]] + [0.0] * (2 - min(2, len(variance)))
    return coords, (shares[0], shares[1])


def project(embeddings: np.ndarray, seed: int, points: int = POINTS) -> Projection:
    """Draw the shown images, read only their rows (`embeddings` may be a memory map of
    any N), and project them with PCA fitted on those rows."""
    indices = draw_points(len(embeddings), seed, points)
    coords, explained = pca_2d(embeddings[indices])  # float16 rows: 5,000 x D, a few MB
    return Projection(indices, coords, explained)


def panel_caption(method: str, kept: int, pruned: int) -> str:
    return f"{method}: {kept:,} kept, {pruned:,} pruned"


def figure_size(num_methods: int) -> Tuple[int, int]:
    columns = min(COLUMNS, max(1, num_methods))
    rows = -(-max(1, num_methods) // COLUMNS)
    return 90 + PANEL * columns, 100 + PANEL * rows


def projection_figure(projection: Projection, kept: Dict[str, np.ndarray], title: str, seed: int) -> bytes:
    """One panel per method (same points, same axes), kept and pruned in two colours,
    drawn in one seeded random order so that neither colour always lies on top."""
    methods = list(kept)
    width, height = figure_size(len(methods))
    fig = Figure(figsize=(width / figures.DPI, height / figures.DPI), dpi=figures.DPI)
    columns = min(COLUMNS, len(methods))
    rows = -(-len(methods) // COLUMNS)
    grid = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    order = np.random.default_rng(seed).permutation(len(projection.indices))
    x, y = projection.coords[order, 0], projection.coords[order, 1]
    size = 6.0 if len(order) <= 1000 else 3.0
    for i, ax in enumerate(grid.flat):
        if i >= len(methods):
            ax.set_visible(False)
            continue
        mask = kept[methods[i]][order]
        ax.scatter(x, y, s=size, c=np.where(mask, KEPT_COLOUR, PRUNED_COLOUR), linewidths=0, alpha=0.75,
                   rasterized=True)
        ax.set_title(panel_caption(methods[i], int(mask.sum()), int((~mask).sum())), fontsize=9)
        ax.grid(alpha=0.3)
        below = i + columns < len(methods)  # a panel under this one shows the x axis
        ax.tick_params(labelbottom=not below, labelleft=i % columns == 0, labelsize=8)
        if not below:
            ax.set_xlabel(f"PC 1 ({100 * projection.explained[0]:.1f}% of variance)", fontsize=9)
        if i % columns == 0:
            ax.set_ylabel(f"PC 2 ({100 * projection.explained[1]:.1f}% of variance)", fontsize=9)
    handles = [Line2D([], [], ls="", marker="o", ms=6, color=c, label=label)
               for c, label in ((KEPT_COLOUR, "kept"), (PRUNED_COLOUR, "pruned"))]
    fig.suptitle(title, fontsize=11, y=1 - 10 / height, va="top")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 48 / height), ncol=2, fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 40 / height))
    return figures.png_bytes(fig)


@dataclass
class Shown:
    """What the section shows, checked before any score is computed."""

    file: str  # the embedding file's name
    epoch: int
    embeddings: np.ndarray  # the read-only N x D float16 memory map
    fraction: str  # as written
    keep: int
    seed: int
    source: str = ""  # embed.py's embeddings (--embeddings): the file and whose features they are


def prepare(hdir: str, num_samples: int, given: Optional[str], fractions: Sequence[str], seed: int) -> Optional[Shown]:
    """The embeddings to show (the latest epoch's) and the fraction, or None when the
    history holds none and no --projection-fraction asks for them. ValueError or
    HistoryError (dynunc/history.py's load_embeddings: a missing file with the config
    keys that record it, a wrong shape, a NaN) otherwise."""
    fraction, keep = projection_keep(given, fractions, num_samples)
    epochs = list_embed_epochs(hdir)
    if not epochs and given is None:
        return None
    embeddings = load_embeddings(hdir, num_samples)  # refuses a history without them, naming the keys
    epoch = epochs[-1]
    summary = embedder_summary(hdir)  # embed.py's (--embeddings): say whose features they are
    source = f"{embed_path(hdir, epoch)}, {summary}" if summary else ""
    return Shown(os.path.basename(embed_path(hdir, epoch)), epoch, embeddings, fraction, keep, seed, source)


def add_projection(files: Dict[str, bytes], numbers: dict, orders: Dict[str, MethodOrder], shown: Shown) -> None:
    """projection.png and numbers["projection"]: the shown images' line indices, the
    share of variance of each axis, and each panel's kept and pruned counts."""
    n, dim = shown.embeddings.shape
    projection = project(shown.embeddings, shown.seed, POINTS)
    kept = {m: o.kept(shown.keep)[projection.indices] for m, o in orders.items()}
    count = len(projection.indices)
    title = f"PCA of {shown.file}, {count:,} images\nkept and pruned at keep {shown.fraction}"  # fits one panel
    files["projection.png"] = projection_figure(projection, kept, title, shown.seed)
    numbers["projection"] = {
        "file": shown.file, "source": shown.source, "epoch": shown.epoch, "dim": int(dim), "fraction": shown.fraction, "keep": shown.keep,
        "seed": shown.seed, "points": count, "of": int(n), "explained": [float(v) for v in projection.explained],
        "panels": {m: {"kept": int(k.sum()), "pruned": int((~k).sum()),
                       "caption": panel_caption(m, int(k.sum()), int((~k).sum()))} for m, k in kept.items()},
        "indices": projection.indices.tolist()}


def projection_html(projection: Optional[dict], heading: str) -> List[str]:
    """The section: the figure and what it shows, or one line naming the keys that record
    embeddings."""
    if projection is None:
        return [heading, f"<p>This history holds no embeddings (embed_{{epoch}}.npy); a produce run records them "
                f"with {html.escape(EMBED_CONFIG_KEYS)}.</p>"]
    p = projection
    first, second = (f"{100 * v:.1f}%" for v in p["explained"])
    return [heading, f"<p class=\"note\">PCA (principal component analysis, numpy's SVD) of the embeddings in "
            f"{html.escape(p['file'])} (epoch {p['epoch']}, D = {p['dim']}"
            f"{'; ' + html.escape(p['source']) if p.get('source') else ''}), fitted on the {p['points']:,} images "
            f"shown, drawn at random once (seed {p['seed']}) from the {p['of']:,} and the same in every panel: "
            f"the two axes explain {first} and {second} of their variance. Blue: kept at keep "
            f"{html.escape(p['fraction'])} (each method keeps {p['keep']:,} images in all); red: pruned. The two "
            "axes hold only that share of the geometry: a method that covers the data keeps points across the "
            "whole cloud, one that keeps a corner of it leaves the rest red.</p>",
            f"<img src=\"projection.png\" alt=\"kept and pruned images in 2-D, per method, at "
            f"{html.escape(p['fraction'])}\">"]
