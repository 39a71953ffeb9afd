"""report.py on a small hand-made history and image tree: the files it writes, the
numbers it shows (checked against an independent computation), and its refusals."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_tree, run_main, write_full_history
from dynunc.report import page as report, figures as report_figures
from dynunc.report.stats import MethodOrder, spearman_matrix, tie_twice_ranks
from dynunc.scoring.methods import METHODS, ScoreParams, score_history
from dynunc.ranking import top

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
    methods = [m for m in METHODS if METHODS[m].embed is None]  # no embeddings recorded: left out
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["methods"] == methods and numbers["fractions"] == FRACTIONS

    # Every figure, with its size.
    sizes = {f"hist_{m}.png": report_figures.histogram_size() for m in methods}
    sizes.update({f"curves_{m}.png": report_figures.curves_size() for m in methods})
    sizes.update({f"images_{m}.png": report_figures.image_grid_size(16) for m in methods})
    sizes.update({f"overlap_{f}.png": report_figures.heatmap_size(len(methods)) for f in FRACTIONS})
    sizes["stability.png"] = report_figures.stability_curve_size()  # dynunc at --window 3 over 7 epochs
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


def test_page_gives_the_decision_first_and_folds_the_details(s):
    """The reading, then the decision table; per-class data once (no per-method tables,
    no median column); every section after the cost folded under a summary."""
    code, _, err = run_cli(base(s, "--window", 3, "--fraction", *FRACTIONS))
    assert code == 0, err
    page = (s["out"] / "index.html").read_text()
    decision = page.split('id="decision"')[1].split('id="cost"')[0]
    assert decision.index('class="reading"') < decision.index("<table")
    assert "median class kept" not in page and "<h4>" not in page and "Classes kept least" not in page
    assert page.count("kept least at 0.5, lowest first") == 1  # one table for every method
    for anchor in ("histograms", "per-class", "agreement", "curves", "images"):
        after = page.split(f'id="{anchor}"')[1].split("</h2>", 1)[1].lstrip()
        assert after.startswith("<details><summary>"), anchor
    assert "spearman.png" not in page  # the Spearman numbers are a table, not the same again as a figure


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
    args = ["--input", run, "--dataset-file-list", s["list"], "--output", s["out"]]
    # K = 7 epochs: too few for the paper's window of 10, and dynunc is never dropped silently
    code, _, err = run_cli(args)
    assert code == 2 and "--window is required by method dynunc" in err and "2 <= J <= 6" in err, err
    assert not s["out"].exists()
    code, _, err = run_cli(args + ["--window", 3])
    assert code == 0, err
    assert "lacks the records of el2n, aum: left out" in err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["methods"] == ["dynunc", "forgetting", "variability", "confidence", "random"]
    assert numbers["fractions"] == list(report.DEFAULT_FRACTIONS)
    assert numbers["params"]["window"] == 3


def test_window_defaults_to_the_papers_10_from_11_epochs(s, tmp_path):
    run = tmp_path / "long"
    write_full_history(s["list"], run, np.linspace(0.1, 0.9, N), 11, np.random.default_rng(5))
    code, _, err = run_cli(["--input", run, "--dataset_file_list", s["list"], "--output", s["out"],
                            "--method", "dynunc", "--fraction", "0.5"])
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["methods"] == ["dynunc"] and numbers["params"]["window"] == 10


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


def test_output_under_a_file_is_refused_in_one_line(s):
    """--output inside a file (or a file itself): one line, exit 2, before the work and
    without a traceback."""
    (s["tmp"] / "a_file").write_text("x")
    for output, message in ((s["tmp"] / "a_file" / "report", "is a file, not a folder"),
                            (s["tmp"] / "a_file", "exists as a file; a folder is expected")):
        code, _, err = run_cli(["--input", s["run"], "--dataset_file_list", s["list"], "--output", output,
                                "--method", "random"])
        assert code == 2 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()[-1]) and err.strip().splitlines()[-1].startswith("report.py: error:")
    assert (s["tmp"] / "a_file").read_text() == "x"


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


def write_curve_csv(path, rows):
    with open(path, "w") as f:
        f.write("labels,method,fraction,seed,images,top1,top5,flipped_kept\n")
        for method, fraction, seed, top1 in rows:
            f.write(f"clean,{method},{fraction},{seed},{int(N * fraction)},{top1},99.0,\n")


def write_run(folder, acc1s, epochs=None):
    """A main.py run's output: metrics.jsonl (one record per epoch) and config.yaml."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for epoch, acc1 in enumerate(acc1s):
            f.write(json.dumps({"epoch": epoch, "acc1": acc1, "acc5": 99.0}) + "\n")
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(f"TRAIN:\n  EPOCHS: {len(acc1s) if epochs is None else epochs}\n")
    return folder


def test_decision_section_with_accuracies(s):
    """Top-1 per method and fraction (mean and population std over the runs) beside the
    full-data line, the best and those within its seed spread, the curve figure; per-class
    and tie numbers against a direct computation from select.top."""
    accuracy = s["tmp"] / "curve.csv"
    curve = [("full", 1.0, seed, 90 + seed) for seed in range(3)]
    curve += [("forgetting", 0.5, seed, v) for seed, v in enumerate((80.0, 82.0, 84.0))]  # 82 +- 1.63
    curve += [("confidence", 0.5, seed, v) for seed, v in enumerate((85.0, 85.5, 86.0))]  # 85.5 +- 0.41
    curve += [("dynunc-ccs", 0.5, seed, v) for seed, v in enumerate((70.0, 71.0, 72.0))]  # not a report method
    curve += [("confidence", 0.25, 0, 60.0)]
    write_curve_csv(accuracy, curve)
    runs = [write_run(s["tmp"] / f"random_s{i}", [50.0, v]) for i, v in enumerate((83.0, 84.0))]  # 83.5 +- 0.5
    code, _, err = run_cli(base(s, "--method", "forgetting", "confidence", "random", "--fraction", *FRACTIONS,
                                "--accuracy", accuracy, *(f"random:0.5={r}" for r in runs)))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    rows = {(r["method"], r["fraction"]): r for r in numbers["decision"]}
    assert numbers["full_top1"] == pytest.approx({"mean": 91.0, "std": np.std([90, 91, 92]), "runs": 3})
    assert rows["forgetting", "0.5"]["top1"] == pytest.approx({"mean": 82.0, "std": np.std([80, 82, 84]), "runs": 3})
    assert rows["random", "0.5"]["top1"] == pytest.approx({"mean": 83.5, "std": 0.5, "runs": 2})
    # best: confidence (85.5 +- 0.41); random reaches 84.0 < 85.09: below; forgetting reaches 83.63: below;
    # but low confidence empties the easiest classes, and its cell says so.
    assert rows["confidence", "0.5"]["vs_best"] == "best; starves a class"
    assert rows["random", "0.5"]["vs_best"] == rows["forgetting", "0.5"]["vs_best"] == "below"
    assert rows["dynunc-ccs", "0.5"]["in_report"] is False and rows["dynunc-ccs", "0.5"]["vs_best"] == "below"
    assert rows["confidence", "0.25"]["vs_best"] == "only one trained; starves a class"
    assert rows["random", "0.25"]["top1"] is None and ("dynunc-ccs", "0.25") not in rows
    assert "At keep 0.5, confidence is best (85.50 ± 0.41 (3 runs))" in numbers["reading"]
    assert "forgetting, random and dynunc-ccs fall below it by more than the seed spread" in numbers["reading"]
    assert "get_coreset.py --class-balanced" in numbers["reading"]
    with Image.open(s["out"] / "accuracy_curve.png") as image:  # confidence has two fractions: a curve
        assert image.size == report_figures.accuracy_curve_size()
    page = (s["out"] / "index.html").read_text()
    assert 'src="accuracy_curve.png"' in page and "85.50 ± 0.41" in page
    assert '<tr class="best' not in page  # the best starves a class: not bolded

    scores = expected_scores(s, ["forgetting", "confidence", "random"])
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    for (m, f), row in rows.items():
        if not row["in_report"]:
            continue
        keep = int(N * float(f))
        kept = np.isin(np.arange(N), top(scores[m], keep))
        per_class = [kept[labels == c].mean() for c in range(CLASSES)]
        assert row["kept"] == keep
        assert row["class_min"] == pytest.approx(min(per_class))
        assert row["class_median"] == pytest.approx(np.median(per_class))
        lowest_kept = scores[m][kept].min()
        at_cut = scores[m] == lowest_kept
        split = kept[at_cut].sum() < at_cut.sum()  # the cut leaves some images at its score out
        assert row["drawn"] == (kept[at_cut].sum() if split else 0)
        tie = numbers["ties"][m][f]
        assert (tie["tied"], tie["drawn"]) == ((at_cut.sum(), kept[at_cut].sum()) if split else (0, 0))
    assert any(r["drawn"] for r in rows.values() if r["in_report"])  # forgetting's counts tie at the cuts


def test_decision_without_accuracies_reads_classes(s):
    code, _, err = run_cli(base(s, "--method", "confidence", "random", "--fraction", "0.25"))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["reading"].startswith("No accuracies were given (--accuracy)")
    summary = numbers["class_kept_summary"]["confidence"]["0.25"]
    assert summary["classes_emptied"] > 0  # the easiest classes are pruned whole by low confidence
    assert f"confidence empties {summary['classes_emptied']} class" in numbers["reading"]
    assert not (s["out"] / "accuracy_curve.png").exists()
    assert "top-1" not in (s["out"] / "index.html").read_text().split('id="histograms"')[0].lower()


@pytest.mark.parametrize("case, message", [
    ("no_top1", "line 1: no column 'top1'"),
    ("bad_fraction", "curve.csv line 3: fraction '1.5' is not in (0, 1]"),
    ("bad_top1", "curve.csv line 2: top-1 'high' is not a number"),
    ("mixed", "mix label settings (clean, noise0.2)"),
    ("spec", "expected METHOD:FRACTION=RUN, full=RUN, or a CSV file"),
    ("unfinished", "the run stopped at epoch 1 of 5"),
    ("missing", "not found"),
])
def test_refused_accuracy(s, case, message):
    csv_path, run = s["tmp"] / "curve.csv", write_run(s["tmp"] / "run_a", [40.0, 50.0], epochs=5)
    header = "labels,method,fraction,seed,images,top1,top5,flipped_kept\n"
    texts = {"no_top1": "method,fraction,seed\nrandom,0.5,0\n",
             "bad_fraction": header + "clean,random,0.5,0,30,80,99,\nclean,random,1.5,0,30,80,99,\n",
             "bad_top1": header + "clean,random,0.5,0,30,high,99,\n",
             "mixed": header + "clean,random,0.5,0,30,80,99,\nnoise0.2,random,0.5,0,30,80,99,\n"}
    csv_path.write_text(texts.get(case, header + "clean,random,0.5,0,30,80,99,\n"))
    given = {"spec": ["random=" + str(run)], "unfinished": [f"random:0.5={run}"],
             "missing": [str(s["tmp"] / "nope.csv")]}.get(case, [csv_path])
    code, _, err = run_cli(base(s, "--method", "random", "--accuracy", *given))
    assert code == 2 and message in err, err
    assert not s["out"].exists()


def test_number_never_shows_negative_zero():
    assert report_figures.number(-0.0001, ".2f") == "0.00" and report_figures.number(-0.0) == "0"
    assert report_figures.number(-1e-5, ".4g") == "-1e-05" and report_figures.number(-1.25, ".1f") == "-1.2"
    assert report_figures.number(float("-inf")) == "-inf"
    # whole numbers (pick orders, counts) in full, not 3.99e+03
    assert report_figures.number(3993.0, ".3g") == "3993" and report_figures.number(-12.0) == "-12"
    assert report_figures.number(1.5e7, ".3g") == "1.5e+07" and report_figures.number(2.0, ".2f") == "2.00"


def test_every_method_says_what_its_score_is():
    for name, method in METHODS.items():
        assert re.fullmatch(r"\S[^()]* \(.+\)", method.axis), name  # "NAME (UNIT, RANGE)"


def test_cut_labels_say_what_a_cut_keeps():
    from dynunc.ranking import Cut

    assert (report_figures.cut_label("0.5", Cut(-0.0, 3057, 1057), "forgetting events")
            == "keep 0.5: inside a tie of 3057 images at score 0; 1057 kept at random")
    assert report_figures.cut_label("0.7", Cut(0.35141, 0, 0), "EL2N") == "keep 0.7: EL2N >= 0.3514"
    assert report_figures.axis_name(METHODS["forgetting"].axis) == "forgetting events"
