"""report.py on a small hand-made history and image tree: the files it writes, the
numbers it shows (checked against an independent computation), and its refusals."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_tree, run_main, write_full_history
from pruning import report, report_figures
from pruning.report_stats import MethodOrder, spearman_matrix, tie_twice_ranks
from pruning.scores import METHODS, ScoreParams, score_history
from pruning.select import top

K, CLASSES, PER_CLASS = 7, 5, 12
N = CLASSES * PER_CLASS
FRACTIONS = ["0.5", "0.25"]


def run_cli(args):
    return run_main(report.main, args)


def make_history(run_dir, list_path, kinds=("margin", "el2n"), seed=3):
    """prob with class-dependent levels (so classes are hit unequally), ties in correct
    (forgetting) and some unseen entries."""
    rng = np.random.default_rng(seed)
    level = np.repeat(np.linspace(0.2, 0.8, CLASSES), PER_CLASS) + rng.normal(0, 0.1, N)
    return write_full_history(list_path, run_dir, level, K, rng, noise=0.25, kinds=kinds)


@pytest.fixture
def s(tmp_path):
    data = tmp_path / "data"
    make_image_tree(str(data), num_classes=CLASSES, per_class=PER_CLASS, size=(24, 20))
    listing = data / "file_list.txt"
    hdir = make_history(tmp_path / "run", listing)
    flipped = np.sort(np.random.default_rng(7).choice(N, 9, replace=False)).astype(np.int64)
    np.save(tmp_path / "flipped.npy", flipped)
    return dict(tmp=tmp_path, run=tmp_path / "run", hdir=hdir, list=listing, flipped=flipped,
                flipped_path=tmp_path / "flipped.npy", out=tmp_path / "report")


def base(s, *extra):
    return ["--input", s["run"], "--dataset_file_list", s["list"], "--output", s["out"], *extra]


def expected_scores(s, methods, window=3):
    def load(epoch, kind):
        return np.load(os.path.join(s["hdir"], f"{kind}_{epoch}.npy"))
    return score_history(methods, K, N, load, ScoreParams(window=window))


def average_ranks(x):
    """Tie-averaged ranks by brute force, O(N^2); NaN ranks lowest (as the selection ranks it)."""
    x = np.where(np.isnan(x), -np.inf, x)
    return np.array([(x < v).sum() + ((x == v).sum() - 1) / 2 for v in x])


def test_report_files_numbers_and_html(s):
    code, out, err = run_cli(base(s, "--window", 3, "--fraction", *FRACTIONS, "--flipped", s["flipped_path"]))
    assert code == 0, err
    assert os.path.join(str(s["out"]), "index.html") in out
    methods = list(METHODS)
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["methods"] == methods and numbers["fractions"] == FRACTIONS

    # Every figure, with its size.
    sizes = {f"hist_{m}.png": report_figures.histogram_size() for m in methods}
    sizes.update({f"curves_{m}.png": report_figures.curves_size() for m in methods})
    sizes.update({f"images_{m}.png": report_figures.image_grid_size(16) for m in methods})
    sizes.update({f"overlap_{f}.png": report_figures.heatmap_size(len(methods)) for f in FRACTIONS})
    sizes["spearman.png"] = report_figures.heatmap_size(len(methods))
    sizes["class_kept.png"] = report_figures.class_kept_size(len(methods), len(FRACTIONS))
    for name, size in sizes.items():
        with Image.open(s["out"] / name) as image:
            image.load()
            assert image.format == "PNG" and image.size == size, name
    assert set(os.listdir(s["out"])) == set(sizes) | {"index.html", "report.json"}

    # The page links only to files beside it and to its own sections, and shows every figure.
    page = (s["out"] / "index.html").read_text()
    linked = set(re.findall(r'(?:src|href)="([^"]*)"', page))
    anchors = {link for link in linked if link.startswith("#")}
    assert linked - anchors == set(sizes) | {"report.json"}
    assert anchors == {f"#{anchor}" for anchor in re.findall(r' id="([^"]+)"', page)} and len(anchors) >= 6
    assert "http" not in page.lower()
    # Paths relative to the report folder, never absolute; no negative zero.
    assert str(s["tmp"]) not in page and "../run" in page and "../data/file_list.txt" in page
    assert not re.search(r"-0\.0+(?![0-9])", page)

    # Kept counts, overlap, per-class fractions and flipped shares from select.top.
    scores = expected_scores(s, methods)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    kept = {(m, f): np.isin(np.arange(N), top(scores[m], int(N * float(f)))) for m in methods for f in FRACTIONS}
    for f in FRACTIONS:
        keep = int(N * float(f))
        assert numbers["keep"][f] == keep
        for a, ma in enumerate(methods):
            assert numbers["kept_counts"][ma][f] == keep
            assert numbers["flipped"]["kept_share"][ma][f] == pytest.approx(kept[ma, f][s["flipped"]].mean())
            for b, mb in enumerate(methods):
                assert numbers["overlap"][f][a][b] == pytest.approx((kept[ma, f] & kept[mb, f]).sum() / keep)
    reference = numbers["reference_fraction"]
    assert reference == "0.5"
    for m in methods:
        per_class = {f: np.array([kept[m, f][labels == c].mean() for c in range(CLASSES)]) for f in FRACTIONS}
        hardest = numbers["hardest_hit"][m]
        under = [c for c in np.argsort(per_class[reference], kind="stable") if per_class[reference][c] < 0.5]
        assert [c["label"] for c in hardest] == under  # under-kept classes only, lowest first
        for c in hardest:
            assert c["class"] == f"c{c['label']:02d}" and c["size"] == PER_CLASS
            for f in FRACTIONS:
                assert c["kept"][f] == pytest.approx(per_class[f][c["label"]])
        assert numbers["class_kept_summary"][m]["0.25"]["min"] == pytest.approx(per_class["0.25"].min())

    # Spearman (average ranks for ties), against a brute-force rank and scipy where present.
    expected = np.corrcoef([average_ranks(scores[m]) for m in methods])
    assert np.allclose(np.array(numbers["spearman"], dtype=float), expected, atol=1e-12)
    for a, m in enumerate(methods):
        assert f"{expected[a, 1]:.3f}" in page
    stats = pytest.importorskip("scipy.stats")
    rho = stats.spearmanr(np.stack([np.where(np.isnan(scores[m]), -np.inf, scores[m]) for m in methods],
                                   axis=1)).statistic
    assert np.allclose(np.array(numbers["spearman"], dtype=float), rho, atol=1e-12)


def test_images_and_curves_listed(s):
    code, _, err = run_cli(base(s, "--method", "confidence", "random", "--fraction", "0.5"))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    scores = expected_scores(s, ["confidence"])["confidence"]
    order = np.argsort(-scores, kind="stable")
    order = order[~np.isnan(scores[order])]
    assert [x["index"] for x in numbers["images"]["confidence"]["highest"]] == list(order[:16])
    assert [x["index"] for x in numbers["images"]["confidence"]["lowest"]] == list(order[::-1][:16])
    # The mean curve of the top decile, computed directly.
    decile0 = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")[: N // 10]
    prob = np.stack([np.load(os.path.join(s["hdir"], f"prob_{e}.npy")) for e in range(K)], axis=1)
    assert np.allclose(numbers["decile_curves"]["confidence"][0], np.nanmean(prob[decile0], axis=0))
    assert numbers["unreadable_images"] == []
    assert "flipped" not in numbers


def test_unreadable_image_is_named_not_fatal(s):
    args = base(s, "--method", "random", "--fraction", "0.5")
    assert run_cli(args)[0] == 0
    shown = json.loads((s["out"] / "report.json").read_text())["images"]["random"]["lowest"][0]["path"]
    os.remove(os.path.join(s["list"].parent, shown.lstrip("/")))
    code, _, err = run_cli(args)
    assert code == 0, err
    unreadable = json.loads((s["out"] / "report.json").read_text())["unreadable_images"]
    assert len(unreadable) == 1 and shown.lstrip("/") in unreadable[0]
    assert "Could not be read" in (s["out"] / "index.html").read_text()


def test_default_methods_are_those_recorded(s, tmp_path):
    run = tmp_path / "old"
    make_history(run, s["list"], kinds=())
    code, _, err = run_cli(["--input", run, "--dataset_file_list", s["list"], "--output", s["out"]])
    assert code == 0, err
    assert "dynunc is left out" in err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["methods"] == ["forgetting", "variability", "confidence", "random"]
    assert numbers["fractions"] == list(report.DEFAULT_FRACTIONS)


def test_tie_ranks_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 300).astype(float)
    x[rng.random(300) < 0.1] = np.nan
    x[:3] = np.inf
    order = MethodOrder.of(x)
    # twice_rank counts positions from the highest score; the brute force from the lowest.
    assert np.array_equal(tie_twice_ranks(x, order.order), 2 * (len(x) - 1 - average_ranks(x)))
    y = rng.random(300)
    rho = spearman_matrix([order, MethodOrder.of(y)])[0, 1]
    assert rho == pytest.approx(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1], abs=1e-12)


@pytest.mark.parametrize("extra, message", [
    (["--method", "nope"], "--method: unknown method 'nope'"),
    (["--method", "dynunc"], "--window is required by method dynunc"),
    (["--window", "7"], "--window 7 is too large for 7 epochs"),
    (["--fraction", "0"], "fraction must be in (0, 1], got 0.0"),
    (["--fraction", "0.5", "0.5"], "--fraction: '0.5' is given twice"),
    (["--method", "el2n", "--epochs", "5:99"], "--epochs '5:99'"),
])
def test_refusals(s, extra, message):
    code, _, err = run_cli(base(s, *extra))
    assert code == 2 and message in err, err
    assert not s["out"].exists()


def test_refused_flipped_file(s):
    for values, message in ((np.array([0, N]), f"index {N} is outside"), (np.array([1.0, 2.0]), "integer"),
                            (np.array([3, 3]), "repeated")):
        np.save(s["flipped_path"], values)
        code, _, err = run_cli(base(s, "--method", "random", "--flipped", s["flipped_path"]))
        assert code == 2 and str(s["flipped_path"]) in err and message in err, err
    assert not s["out"].exists()


def test_refused_history(s, tmp_path):
    run = tmp_path / "old"
    make_history(run, s["list"], kinds=())
    code, _, err = run_cli(["--input", run, "--dataset_file_list", s["list"], "--output", s["out"], "--method", "aum"])
    assert code == 2 and "margin_0.npy is missing: method aum" in err
    other = tmp_path / "other.txt"
    other.write_text("\n".join(s["list"].read_text().splitlines()[::-1]) + "\n")  # same lines, another order
    code, _, err = run_cli(["--input", s["run"], "--dataset_file_list", other, "--output", s["out"],
                            "--method", "random"])
    assert code == 2 and "is not the file list the history was recorded on" in err
    assert not s["out"].exists()
