"""The report's embedding section (dynunc/report/projection.py): per method, the recorded
embeddings projected to 2-D by PCA with kept and pruned images in two colours. Counts
and variance shares are checked against an independent computation (select.top on the
scores, numpy's eigh on the covariance); the rest of the report is the same with and
without embeddings."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_tree, run_main, write_full_history
from dynunc.lists.index import open_index
from dynunc.report import page as report, projection as report_projection
from dynunc.history import load_embeddings
from dynunc.scoring.methods import METHODS, ScoreParams, score_history
from dynunc.ranking import top

K, CLASSES, PER_CLASS, D = 7, 5, 12, 16
N = CLASSES * PER_CLASS
FRACTIONS = ["0.5", "0.25"]
SHOWN = 25  # fewer than N, so that the drawn subsample is exercised


def embeddings(seed, n=N):
    """Class clusters in D dimensions, stored as the produce run stores them (float16)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (CLASSES, D))
    return (centres[np.arange(n) * CLASSES // n] + rng.normal(0, 1, (n, D))).astype(np.float16)


@pytest.fixture
def s(tmp_path, monkeypatch):
    monkeypatch.setattr(report_projection, "POINTS", SHOWN)
    data = tmp_path / "data"
    make_image_tree(str(data), num_classes=CLASSES, per_class=PER_CLASS, size=(24, 20))
    rng = np.random.default_rng(3)
    level = np.repeat(np.linspace(0.2, 0.8, CLASSES), PER_CLASS) + rng.normal(0, 0.1, N)
    hdir = write_full_history(data / "file_list.txt", tmp_path / "run", level, K, rng, noise=0.25)
    return dict(run=tmp_path / "run", hdir=hdir, list=data / "file_list.txt", out=tmp_path / "report")


def run_cli(s, *extra):
    return run_main(report.main, ["--input", s["run"], "--dataset_file_list", s["list"], "--output", s["out"],
                                  "--window", 3, "--fraction", *FRACTIONS, *extra])


def kept_on_shown(s, indices, fraction):
    """Each method's kept images among `indices`: select.top on scores computed here (the
    embedding methods from the latest embeddings, as the report's default methods are)."""
    def load(epoch, kind):
        return np.load(os.path.join(s["hdir"], f"{kind}_{epoch}.npy"))

    def embedded():
        return load_embeddings(str(s["hdir"]), N), open_index(str(s["list"])).labels
    scores = score_history(list(METHODS), K, N, load, ScoreParams(window=3), embedded=embedded)
    keep = int(N * float(fraction))
    return {m: np.isin(indices, top(scores[m], keep)) for m in METHODS}


def test_section_counts_and_variance(s):
    np.save(os.path.join(s["hdir"], "embed_2.npy"), embeddings(1))  # an earlier epoch: not the one shown
    latest = embeddings(2)
    np.save(os.path.join(s["hdir"], f"embed_{K - 1}.npy"), latest)
    code, _, err = run_cli(s)
    assert code == 0, err
    shown = json.loads((s["out"] / "report.json").read_text())["projection"]
    assert (shown["file"], shown["epoch"], shown["dim"]) == (f"embed_{K - 1}.npy", K - 1, D)
    assert shown["fraction"] == "0.25" and shown["keep"] == N // 4  # the smallest fraction by default
    indices = np.array(shown["indices"])
    assert shown["points"] == SHOWN == len(np.unique(indices)) and np.all(np.diff(indices) > 0)
    assert indices.min() >= 0 and indices.max() < N

    kept = kept_on_shown(s, indices, "0.25")
    assert list(shown["panels"]) == list(METHODS)
    for m, panel in shown["panels"].items():
        assert (panel["kept"], panel["pruned"]) == (kept[m].sum(), SHOWN - kept[m].sum()), m
        assert panel["caption"] == f"{m}: {kept[m].sum()} kept, {SHOWN - kept[m].sum()} pruned"
    assert len({p["kept"] for p in shown["panels"].values()}) > 1  # the methods keep different shown images

    # The share of variance of the two axes: the covariance's two largest eigenvalues over its trace.
    rows = latest[indices].astype(np.float64)
    eigen = np.linalg.eigh(np.cov(rows, rowvar=False))[0][::-1]
    assert shown["explained"] == pytest.approx(eigen[:2] / eigen.sum(), rel=1e-6)

    with Image.open(s["out"] / "projection.png") as image:
        assert image.format == "PNG" and image.size == report_projection.figure_size(len(METHODS))
        # both colours are drawn
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    for hex_colour in (report_projection.KEPT_COLOUR, report_projection.PRUNED_COLOUR):
        assert tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)) in colours
    page = (s["out"] / "index.html").read_text()
    assert '<a href="#projection">' in page and '<h2 id="projection">' in page and 'src="projection.png"' in page
    assert f"the {SHOWN} images shown" in page and f"{100 * shown['explained'][0]:.1f}%" in page


def test_projection_fraction_flag(s):
    np.save(os.path.join(s["hdir"], "embed_0.npy"), embeddings(4))
    code, _, err = run_cli(s, "--projection-fraction", "0.6")  # not one of the report's fractions
    assert code == 0, err
    shown = json.loads((s["out"] / "report.json").read_text())["projection"]
    assert shown["fraction"] == "0.6" and shown["keep"] == int(N * 0.6)
    kept = kept_on_shown(s, np.array(shown["indices"]), "0.6")
    assert {m: p["kept"] for m, p in shown["panels"].items()} == {m: int(k.sum()) for m, k in kept.items()}


def test_without_embeddings_one_line_and_the_rest_unchanged(s):
    # the methods of training dynamics only: with embeddings, the default would add the embedding methods
    dynamics = ["--method", *(m for m in METHODS if METHODS[m].embed is None)]
    code, _, err = run_cli(s, *dynamics)
    assert code == 0, err
    without = {name: (s["out"] / name).read_bytes() for name in os.listdir(s["out"])}
    page = without["index.html"].decode()
    section = page.split('<h2 id="projection">')[1].split("<h2")[0]
    assert re.fullmatch(r"[^\n]*</h2>\n<p>[^\n]*PRODUCE\.EMBED_DIM and PRODUCE\.EMBED_EPOCHS[^\n]*</p>\n", section)
    assert "projection.png" not in without and "projection" not in json.loads(without["report.json"])

    np.save(os.path.join(s["hdir"], "embed_3.npy"), embeddings(5))
    code, _, err = run_cli(s, *dynamics)
    assert code == 0, err
    with_embeddings = {name: (s["out"] / name).read_bytes() for name in os.listdir(s["out"])}
    assert set(with_embeddings) == set(without) | {"projection.png"}
    for name in set(without) - {"index.html", "report.json"}:
        assert with_embeddings[name] == without[name], name  # every other figure, byte for byte
    numbers = json.loads(with_embeddings["report.json"])
    del numbers["projection"]
    assert numbers == json.loads(without["report.json"])

    def outside(text):
        head, rest = text.split('<h2 id="projection">')
        return head + rest[rest.index("<h2"):]
    assert outside(with_embeddings["index.html"].decode()) == outside(page)


@pytest.mark.parametrize("case, message", [
    ("flag_without", "embed_<epoch>.npy is missing"),
    ("not_a_number", "--projection-fraction: 'half' is not a number"),
    ("outside", "--projection-fraction: fraction must be in (0, 1], got 1.5"),
    ("rows", f"has {N - 1} rows but the training file list has {N} lines"),
    ("nan", "row 4 holds a NaN value"),
])
def test_refusals(s, case, message):
    values = embeddings(6, N - 1 if case == "rows" else N)
    values[4, 2] = np.nan
    if case in ("rows", "nan"):
        np.save(os.path.join(s["hdir"], "embed_1.npy"), values)
    extra = {"flag_without": ["--projection-fraction", "0.5"], "not_a_number": ["--projection-fraction", "half"],
             "outside": ["--projection-fraction", "1.5"]}.get(case, [])
    code, _, err = run_cli(s, *extra)
    assert code == 2 and message in err, err
    if case == "flag_without":
        assert "PRODUCE.EMBED_DIM" in err
    assert not s["out"].exists()


class RowReads:
    """An N x D array that records every read; whole-array reads are refused."""

    def __init__(self, values):
        self.values, self.reads, self.shape = values, [], values.shape

    def __len__(self):
        return len(self.values)

    def __getitem__(self, key):
        assert isinstance(key, np.ndarray) and key.ndim == 1, "only rows by index are read"
        self.reads.append(key)
        return self.values[key]


def test_only_the_drawn_rows_are_read():
    values = np.random.default_rng(0).normal(size=(10_000, 8)).astype(np.float16)
    array = RowReads(values)
    projection = report_projection.project(array, seed=3, points=40)
    assert len(array.reads) == 1 and np.array_equal(array.reads[0], projection.indices)
    assert len(projection.indices) == 40 and projection.coords.shape == (40, 2)
    again = report_projection.project(values, seed=3, points=40)  # the same draw and projection from a plain array
    assert np.array_equal(again.indices, projection.indices) and np.array_equal(again.coords, projection.coords)


def test_pca_axes_against_eigh():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(300, 5)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1]) @ np.linalg.qr(rng.normal(size=(5, 5)))[0]
    coords, explained = report_projection.pca_2d(rows)
    values, vectors = np.linalg.eigh(np.cov(rows, rowvar=False))
    top2 = vectors[:, ::-1][:, :2]
    expected = (rows - rows.mean(axis=0)) @ top2
    assert np.allclose(np.abs(coords), np.abs(expected), atol=1e-8)  # eigenvectors have no fixed sign
    assert explained == pytest.approx(values[::-1][:2] / values.sum(), rel=1e-9)
    # Each axis's sign: its largest loading positive, so the first axis runs along the widest column, whichever way.
    wide = rng.normal(size=(200, 3)) * np.array([4.0, 2.0, 1.0])
    for sign in (1.0, -1.0):
        turned = wide * np.array([sign, 1.0, 1.0])
        coords = report_projection.pca_2d(turned)[0]
        assert np.corrcoef(coords[:, 0], turned[:, 0])[0, 1] > 0.9
    # One dimension, or identical rows: the missing axis is zero, not NaN.
    coords, explained = report_projection.pca_2d(np.arange(6, dtype=float)[:, None])
    assert explained == (1.0, 0.0) and np.all(coords[:, 1] == 0)
    assert report_projection.pca_2d(np.ones((4, 3)))[1] == (0.0, 0.0)
