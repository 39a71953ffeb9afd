"""Label errors from one run (dynunc/scoring/label_issues.py, get_coreset.py --label-issues,
the top-k recorder): each score against its authors' arithmetic written out here from the
logits, plainly (loops over samples and epochs), independent of the recorder's and the
scorers' vectorised code."""
import csv
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import get_coreset
from conftest import run_main, write_full_history
from dynunc.history import (history_dir, list_topk_epochs, load_topk, read_topk_meta, remove_epochs_from,
                            topk_path, write_epoch, write_fingerprint, write_topk, write_topk_meta)
from dynunc.scoring.label_issues import dense_probs, methods_scored, read_tsv, score_label_issues, suggested_labels
from dynunc.scoring.methods import ScoreParams, score_history
from dynunc.training.recorder import ROWS, Recorder, batch_records
from dynunc.training.topk import TopKRecorder, check_config, topk_epochs
from utils.config import get_defaults

N, K, C = 48, 6, 5


def softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def make_run(tmp_path, n=N, k_epochs=K, c=C, topk=None, seed=0):
    """A list of n lines, random logits (n x K x C) with a learnable signal for the first 3/4
    of the samples, some samples unseen in some epochs (one never), and the history the
    recorder's batch_records gives for them (prob, correct, margin, el2n; with `topk`,
    its top-k files for every epoch). Returns (list path, run dir, logits, labels, seen)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)  # every class present
    logits = rng.normal(0, 1.5, (n, k_epochs, c))
    clean = np.arange(n) < 3 * n // 4
    for i in np.flatnonzero(clean):
        logits[i, :, labels[i]] += np.linspace(0.5, 4, k_epochs)
    seen = rng.random((n, k_epochs)) > 0.15
    seen[n - 1] = False  # never seen
    lines = [f"/c{y}/img_{i:03d}.png {y}" for i, y in enumerate(labels)]
    list_path = tmp_path / "list.txt"
    list_path.write_text("".join(line + "\n" for line in lines))
    run = tmp_path / "run"
    hdir = history_dir(str(run))
    os.makedirs(hdir)
    if topk:
        write_topk_meta(hdir, topk, c)
    for e in range(k_epochs):
        rec = batch_records(torch.tensor(logits[:, e], dtype=torch.float32), torch.tensor(labels)).numpy()
        values = {kind: rec[j].copy() for j, kind in enumerate(ROWS)}
        for kind in ("prob", "margin", "el2n"):
            values[kind][~seen[:, e]] = np.nan
        values["correct"] = np.where(seen[:, e], values["correct"], -1).astype(np.int8)
        if topk:
            p, cl = torch.softmax(torch.tensor(logits[:, e], dtype=torch.float32), -1).topk(topk, -1)
            p, cl = p.numpy().copy(), cl.numpy().copy()
            p[~seen[:, e]], cl[~seen[:, e]] = -1, -1
            write_topk(hdir, e, p, cl, c)
        write_epoch(hdir, e, **values)
    from dynunc.lists.index import open_index
    write_fingerprint(hdir, open_index(str(list_path)).fingerprint())
    return list_path, run, logits, labels, seen


# -----------------------------------------------------------------------------
# The authors' arithmetic, from the logits
# -----------------------------------------------------------------------------
def reference_aum(logits, labels, seen):
    """Pleiss et al. 2020: AUM = mean over the epochs of z_y - max_{i != y} z_i."""
    out = []
    for i in range(len(labels)):
        margins = [logits[i, t, labels[i]] - max(v for j, v in enumerate(logits[i, t]) if j != labels[i])
                   for t in range(logits.shape[1]) if seen[i, t]]
        out.append(sum(margins) / len(margins) if margins else float("nan"))
    return np.array(out)


def reference_confidence(logits, labels, seen):
    """Swayamdipta et al. 2020: the mean over the epochs of p(given label)."""
    out = []
    for i in range(len(labels)):
        p = [softmax(list(logits[i, t]))[labels[i]] for t in range(logits.shape[1]) if seen[i, t]]
        out.append(sum(p) / len(p) if p else float("nan"))
    return np.array(out)


def reference_forgetting(logits, labels, seen):
    """Toneva et al. 2019: over a sample's presentations, the count of correct -> wrong; a
    sample never correct is unforgettable's opposite, +inf."""
    out = []
    for i in range(len(labels)):
        acc = [int(np.argmax(logits[i, t]) == labels[i]) for t in range(logits.shape[1]) if seen[i, t]]
        if 1 not in acc:
            out.append(float("inf"))
        else:
            out.append(sum(1 for a, b in zip(acc, acc[1:]) if a == 1 and b == 0))
    return np.array(out, dtype=float)


def reference_el2n(logits, labels, seen, epoch):
    """Paul et al. 2021: ||softmax - one-hot(y)||_2 at one epoch (a sample unseen then: its
    next seen epoch, as the method's docstring states)."""
    out = []
    for i in range(len(labels)):
        ts = [t for t in range(epoch, logits.shape[1]) if seen[i, t]]
        if not ts:
            out.append(float("nan"))
            continue
        p = softmax(list(logits[i, ts[0]]))
        out.append(math.sqrt(sum((p[j] - (j == labels[i])) ** 2 for j in range(len(p)))))
    return np.array(out)


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def scores_of(run_dir, n, names, k=K):
    from dynunc.history import contiguous_epoch_files, record_loader
    hdir = history_dir(str(run_dir))
    load = record_loader(hdir, contiguous_epoch_files(hdir), n)
    return score_history(names, k, n, load, ScoreParams())


def test_scores_match_the_authors_arithmetic(run):
    list_path, run_dir, logits, labels, seen = run
    s = scores_of(run_dir, N, ["aum", "confidence", "forgetting", "el2n"])
    np.testing.assert_allclose(-s["aum"], reference_aum(logits, labels, seen), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(1 - s["confidence"], reference_confidence(logits, labels, seen), atol=1e-6)
    np.testing.assert_array_equal(s["forgetting"], reference_forgetting(logits, labels, seen))
    np.testing.assert_allclose(s["el2n"], reference_el2n(logits, labels, seen, max(1, K // 10)), atol=1e-6)
    assert np.isnan(s["aum"][N - 1]) and np.isnan(s["confidence"][N - 1])  # never seen: no score


@pytest.mark.parametrize("score", ["aum", "confidence", "forgetting", "el2n"])
def test_cuts_and_order(run, score):
    """Each score's suspects are its stated rule, most suspicious first, ties to the lower index."""
    list_path, run_dir, logits, labels, seen = run
    issues = score_label_issues(score, scores_of(run_dir, N, methods_scored(score)), labels,
                                history_dir(str(run_dir)))
    ref = {"aum": lambda: reference_aum(logits, labels, seen) < 0,
           "confidence": lambda: reference_confidence(logits, labels, seen) < 0.5,
           "forgetting": lambda: np.isinf(reference_forgetting(logits, labels, seen)),
           "el2n": lambda: reference_el2n(logits, labels, seen, max(1, K // 10)) > 1}[score]()
    ref &= seen.any(axis=1)  # a sample never seen is never a suspect
    np.testing.assert_array_equal(issues.flagged, ref)
    assert not issues.flagged[N - 1]  # never seen: never a suspect
    expected = sorted(np.flatnonzero(ref), key=lambda i: (-issues.suspicion[i], i))
    np.testing.assert_array_equal(issues.order, expected)
    assert issues.suggested is None  # no top-k records


def test_dense_probs_and_suggestions_against_a_loop(tmp_path):
    list_path, run_dir, logits, labels, seen = make_run(tmp_path, topk=2)
    hdir = history_dir(str(run_dir))
    records = [load_topk(hdir, e, N) for e in range(K)]
    dense, was_seen = dense_probs(records, C)
    for i in range(N):
        rows = []
        for t in range(K):
            if not seen[i, t]:
                continue
            p = softmax(list(logits[i, t]))
            top = sorted(range(C), key=lambda j: -p[j])[:2]
            rest = (1 - p[top[0]] - p[top[1]]) / (C - 2)
            rows.append([p[j] if j in top else rest for j in range(C)])
        if rows:
            np.testing.assert_allclose(dense[i], np.mean(rows, axis=0), atol=2e-3)  # float16 storage
            assert was_seen[i]
            # suggested: the best other class among those recorded
            recorded = {j for t in range(K) if seen[i, t] for j in np.argsort(-logits[i, t])[:2]} - {labels[i]}
            got = suggested_labels(records, C, labels, np.array([i]))[0]
            if recorded:
                best = max(recorded, key=lambda j: (dense[i, j], -j))
                assert dense[i, got] == pytest.approx(dense[i, best], abs=1e-9)
            else:
                assert got == -1
        else:
            assert not was_seen[i]
            assert suggested_labels(records, C, labels, np.array([i]))[0] == -1


def test_cleanlab_on_full_topk_is_cleanlab_on_the_mean_softmax(tmp_path):
    """k = C: the rebuilt probabilities are the mean softmax over the seen epochs, and the
    suspects are cleanlab's own find_label_issues on it."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    list_path, run_dir, logits, labels, seen = make_run(tmp_path, topk=C)
    issues = score_label_issues("cleanlab", scores_of(run_dir, N, methods_scored("cleanlab")), labels,
                                history_dir(str(run_dir)))
    rows = np.flatnonzero(seen.any(axis=1))
    mean = np.array([np.mean([softmax(list(logits[i, t])) for t in range(K) if seen[i, t]], axis=0) for i in rows])
    expected = np.zeros(N, dtype=bool)
    expected[rows] = find_label_issues(labels[rows], mean)
    np.testing.assert_array_equal(issues.flagged, expected)
    quality = get_label_quality_scores(labels[rows], mean, method="self_confidence")
    np.testing.assert_allclose(issues.suspicion[rows], 1 - quality, atol=2e-3)
    assert np.isnan(issues.suspicion[N - 1])


# -----------------------------------------------------------------------------
# The top-k recorder
# -----------------------------------------------------------------------------
def test_topk_recorder_writes_the_top_k_of_the_softmax(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, C)
    n = 10
    x = torch.randn(n, 4)
    y = torch.randint(0, C, (n,))
    hdir = history_dir(str(tmp_path))
    topk = TopKRecorder(n, 3, C, [1], hdir, torch.device("cpu"), True)
    rec = Recorder(str(tmp_path), n, device=torch.device("cpu"), topk=topk)
    for epoch in range(2):
        with torch.no_grad():
            rec.update(torch.arange(6), model(x[:6]), y[:6])  # samples 6..9 unseen
        rec.end_epoch(epoch)
    assert list_topk_epochs(hdir) == [1] and read_topk_meta(hdir) == (3, C)
    probs, classes = load_topk(hdir, 1, n)
    want_p, want_c = torch.softmax(model(x[:6]), -1).topk(3, -1)
    np.testing.assert_allclose(probs[:6].astype(np.float32), want_p.detach().numpy(), atol=1e-3)
    np.testing.assert_array_equal(classes[:6], want_c.numpy())
    assert (classes[6:] == -1).all() and (probs[6:] == -1).all()
    remove_epochs_from(hdir, 1)  # a restart from epoch 1 rewrites the top-k records too
    assert list_topk_epochs(hdir) == [] and not os.path.exists(topk_path(hdir, 1, "topk_class"))


def test_topk_config_checks():
    config = get_defaults()
    config.defrost()
    config.MODEL.NUM_CLASSES, config.TRAIN.EPOCHS = 10, 5
    config.PRODUCE.TOPK.K = 11
    assert check_config(config) == ["PRODUCE.TOPK.K 11 is larger than MODEL.NUM_CLASSES 10"]
    config.PRODUCE.TOPK.K, config.PRODUCE.TOPK.EPOCHS = 3, [0, 7]
    assert "PRODUCE.TOPK.EPOCHS: epoch 7 is outside" in check_config(config)[0]
    config.PRODUCE.TOPK.EPOCHS = [0, -1]
    assert check_config(config) == [] and topk_epochs([0, -1], 5) == [0, 4] and topk_epochs([], 5) == [4]
    from dynunc.training import threshold
    config.PRODUCE.THRESHOLD_SAMPLES = 3
    assert threshold.check_config(config) == ["PRODUCE.THRESHOLD_SAMPLES must be 0 (none), 1 or 2 (AUM's two disjoint "
                                              "sets), got 3"]


# -----------------------------------------------------------------------------
# get_coreset.py --label-issues
# -----------------------------------------------------------------------------
def cli(args):
    return run_main(get_coreset.main, args)


def test_cli_writes_the_suspects(tmp_path):
    list_path, run_dir, logits, labels, seen = make_run(tmp_path, topk=2)
    out = tmp_path / "issues.tsv"
    code, stdout, stderr = cli(["--input", run_dir, "--dataset_file_list", list_path, "--label-issues", out])
    assert code == 0, stderr
    flagged = reference_aum(logits, labels, seen) < 0
    assert f"label issues: {int(flagged.sum())} of {N} labels suspected wrong" in stdout
    assert "rule: mean margin < 0" in stdout
    with open(out, newline="") as f:
        header = next(csv.reader(f, delimiter="\t"))
    assert header == ["index", "line", "path", "label", "score", "suggested"]
    t = read_tsv(str(out))
    assert sorted(t["index"]) == list(np.flatnonzero(flagged))
    assert (np.diff(t["score"]) <= 0).all()
    lines = list_path.read_text().splitlines()
    for i, line, path, label in zip(t["index"], t["line"], t["path"], t["label"]):
        assert lines[line - 1] == f"{path} {label}" and line == i + 1 and label == labels[i]
    np.testing.assert_allclose(t["score"], -reference_aum(logits, labels, seen)[t["index"]], rtol=1e-5, atol=1e-5)
    assert ((t["suggested"] != t["label"]) & (t["suggested"] >= 0)).all()


def test_cli_drop_label_issues_keeps_fractions_of_the_full_list(tmp_path):
    list_path, run_dir, logits, labels, seen = make_run(tmp_path)
    flagged = np.flatnonzero(reference_aum(logits, labels, seen) < 0)
    out = tmp_path / "core_{fraction}.txt"
    code, stdout, stderr = cli(["--input", run_dir, "--dataset_file_list", list_path, "--fraction", "0.25", "0.95",
                                "--method", "confidence", "--drop-label-issues", "--output", out])
    assert code == 0, stderr
    lines = list_path.read_text().splitlines()
    small = (tmp_path / "core_0.25.txt").read_text().splitlines()
    assert len(small) == int(N * 0.25) and not {lines[i] for i in flagged} & set(small)
    big = (tmp_path / "core_0.95.txt").read_text().splitlines()
    assert len(big) == N - len(flagged) and "exceeds the" in stdout and "--drop-label-issues: all kept" in stdout


def refused(tmp_path, args, written):
    code, stdout, stderr = cli(args)
    assert code == 2
    message = stderr.strip().splitlines()[-1]
    assert all(not os.path.exists(p) for p in written)
    return message


def test_cli_refusals(tmp_path):
    list_path, run_dir, logits, labels, seen = make_run(tmp_path)
    out = tmp_path / "issues.tsv"
    base = ["--input", run_dir, "--dataset_file_list", list_path]
    # no top-k records for cleanlab
    assert "holds no top-k class probabilities" in refused(tmp_path, base + ["--label-issues", out, "--label-score",
                                                                             "cleanlab"], [out])
    # --drop-label-issues and --output need --fraction; nothing asked for at all
    assert "--drop-label-issues needs --fraction" in refused(tmp_path, base + ["--drop-label-issues"], [])
    assert "--fraction is required" in refused(tmp_path, base, [])
    # the TSV may not overwrite the list
    assert "would overwrite --dataset_file_list" in refused(tmp_path, base + ["--label-issues", list_path], [out])
    # top-k records whose k exceeds the classes
    hdir = history_dir(str(run_dir))
    (tmp_path / "run" / "pred_prob_history" / "topk.json").write_text('{"k": 9, "num_classes": 5}\n')
    assert "k 9 must lie in 1..5" in refused(tmp_path, base + ["--label-issues", out], [out])
    os.remove(os.path.join(hdir, "topk.json"))


def test_cli_refuses_a_history_without_margins(tmp_path):
    lines = [f"/c{i % 3}/img_{i:03d}.png {i % 3}" for i in range(30)]
    list_path = tmp_path / "list.txt"
    list_path.write_text("".join(line + "\n" for line in lines))
    write_full_history(list_path, tmp_path / "run", np.linspace(0, 1, 30), 4, np.random.default_rng(0),
                       kinds=("el2n",))
    out = tmp_path / "issues.tsv"
    message = refused(tmp_path, ["--input", tmp_path / "run", "--dataset_file_list", list_path,
                                 "--label-issues", out], [out])
    assert "margin_0.npy is missing: method aum needs margin_{epoch}.npy" in message


# -----------------------------------------------------------------------------
# report.py --label-issues
# -----------------------------------------------------------------------------
def test_report_section_matches_get_coreset(tmp_path):
    import json

    import report

    list_path, run_dir, logits, labels, seen = make_run(tmp_path, topk=2)
    flipped = np.arange(3 * N // 4, N - 1)  # the samples without a signal for their label, seen at least once
    np.save(tmp_path / "flipped.npy", flipped)
    tsv = tmp_path / "issues.tsv"
    assert cli(["--input", run_dir, "--dataset_file_list", list_path, "--label-issues", tsv])[0] == 0
    out = tmp_path / "report"
    code, stdout, stderr = run_main(report.main, ["--input", run_dir, "--dataset_file_list", list_path, "--method",
                                                  "aum", "--fraction", "0.5", "--output", out, "--flipped",
                                                  tmp_path / "flipped.npy", "--label-issues"])
    assert code == 0, stderr
    assert (out / "label_issues.tsv").read_bytes() == tsv.read_bytes()
    section = json.loads((out / "report.json").read_text())["label_issues"]
    suspects = read_tsv(str(tsv))["index"]
    assert section["count"] == len(suspects) and section["rule"] == "mean margin < 0"
    hits = int(np.isin(suspects, flipped).sum())
    assert section["flipped"]["found"] == hits
    assert section["flipped"]["precision"] == pytest.approx(hits / len(suspects))
    assert section["flipped"]["recall"] == pytest.approx(hits / len(flipped))
    counts = {c["label"]: c["suspects"] for c in section["per_class"]}
    assert counts == {int(y): int(np.sum(labels[suspects] == y)) for y in np.unique(labels[suspects])}
    assert [s["index"] for s in section["shown"]] == list(suspects[:len(section["shown"])])
    assert all(s["suggested"] != s["label"] for s in section["shown"])
    page = (out / "index.html").read_text()
    assert 'id="label_issues"' in page and "label_issues.png" in page and (out / "label_issues.png").exists()


# -----------------------------------------------------------------------------
# scripts/label_errors.py: its noise and its metrics
# -----------------------------------------------------------------------------
def benchmark_script():
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("label_errors", os.path.join(ROOT, "scripts", "label_errors.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_pair_noise_and_metrics():
    script = benchmark_script()
    labels = np.repeat(np.arange(10), 40)
    noisy, flipped = script.pair_noise(labels, 0.3, seed=3)
    assert len(flipped) == 120 and set(np.flatnonzero(noisy != labels)) == set(flipped)
    targets = {int(c): set(noisy[flipped][labels[flipped] == c].tolist()) for c in range(10)}
    assert all(len(t) == 1 and c not in t for c, t in targets.items())  # one other class per class
    assert sorted(t.pop() for t in targets.values()) == list(range(10))  # a permutation of the classes
    truth = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    suspicion = np.array([0.9, 0.2, 0.8, 0.1, np.nan, np.inf])
    m = script.ranking_metrics(suspicion, suspicion > 0.5, truth)
    # ranked: 5 (inf), 0, 2, 1, 3, 4 (never seen, last); the top 3 hold 2 of the 3 flips
    assert m["precision_at_k"] == pytest.approx(2 / 3) and m["estimate"] == 3
    assert m["precision_cut"] == pytest.approx(2 / 3) and m["recall_cut"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(8 / 9)  # of the 9 (flip, clean) pairs, only (1, 2) is misordered


# -----------------------------------------------------------------------------
# AUM's threshold samples
# -----------------------------------------------------------------------------
def test_threshold_sets_are_disjoint_and_sized():
    from dynunc.training.threshold import threshold_indices

    one, two = threshold_indices(1000, 9, 1), threshold_indices(1000, 9, 2)
    assert len(one) == len(two) == 100 and not set(one) & set(two)
    assert (np.diff(one) > 0).all() and (threshold_indices(1000, 9, 1) == one).all()
    with pytest.raises(ValueError, match="PRODUCE.THRESHOLD_SAMPLES"):
        threshold_indices(1000, 9, 3)


def test_threshold_cut_is_the_99th_percentile_of_the_threshold_samples(tmp_path):
    """Pleiss et al.: a sample is flagged when its AUM is below the 99th percentile of the
    threshold samples' AUMs; the threshold samples themselves are not judged."""
    from dynunc.history import write_threshold

    list_path, run_dir, logits, labels, seen = make_run(tmp_path)
    hdir = history_dir(str(run_dir))
    rows = np.arange(3 * N // 4, N - 1)  # the samples without a signal: AUMs as a relabelled image's
    write_threshold(hdir, C, 1, rows)
    issues = score_label_issues("aum", scores_of(run_dir, N, methods_scored("aum")), labels, hdir)
    aum = reference_aum(logits, labels, seen)
    cut = np.percentile(aum[rows], 99)
    expected = (aum < cut) & seen.any(axis=1)
    expected[rows] = False
    np.testing.assert_array_equal(issues.flagged, expected)
    assert np.isnan(issues.suspicion[rows]).all() and "99th percentile of the 11 threshold samples'" in issues.rule
    # the CLI says the rule; a coreset from such a run, and cleanlab, are refused; so is a list with the extra class
    out = tmp_path / "issues.tsv"
    code, stdout, stderr = cli(["--input", run_dir, "--dataset_file_list", list_path, "--label-issues", out])
    assert code == 0 and f"rule: mean margin < {cut:.4g}, the 99th percentile" in stdout
    os.remove(out)
    base = ["--input", run_dir, "--dataset_file_list", list_path]
    assert "is for label errors only" in refused(tmp_path, base + ["--fraction", "0.5", "--window", "2",
                                                                   "--output", tmp_path / "c.txt"], [tmp_path / "c.txt"])
    write_topk_meta(hdir, 2, C + 1)
    for e in range(K):
        write_topk(hdir, e, np.full((N, 2), 0.4), np.tile([0, 1], (N, 1)), C + 1)
    assert "cannot score a threshold-sample run" in refused(tmp_path, base + ["--label-issues", out, "--label-score",
                                                                              "cleanlab"], [out])
    write_threshold(hdir, C - 1, 1, rows)  # the list has label C - 1: not the list the extra class was added to
    assert "a threshold-sample run (threshold.json: extra class 4) scored with a list that has label 4" in refused(
        tmp_path, base + ["--label-issues", out], [out])
    os.remove(os.path.join(hdir, "threshold_samples.npy"))
    assert "threshold_samples.npy is missing" in refused(tmp_path, base + ["--label-issues", out], [out])


def test_benchmark_combines_aum_two_runs(tmp_path):
    """AUM's two runs in the benchmark: minus-AUM averaged over the runs that judge a sample,
    flagged when every such run flags it."""
    from dynunc.history import write_threshold

    script = benchmark_script()
    n = 30
    labels = np.arange(n) % 3
    list_path = tmp_path / "list.txt"
    list_path.write_text("".join(f"/c{y}/i{i}.png {y}\n" for i, y in enumerate(labels)))
    per_run = []
    for which, rows in ((1, np.arange(0, 7)), (2, np.arange(7, 14))):
        rng = np.random.default_rng(which)
        hdir = write_full_history(list_path, tmp_path / f"aum{which}", rng.random(n), 4, rng)
        write_threshold(hdir, 3, which, rows)
        scored = scores_of(tmp_path / f"aum{which}", n, methods_scored("aum"), k=4)
        per_run.append(score_label_issues("aum", scored, labels, hdir))
    suspicion, flagged = script.aum_threshold(str(tmp_path), labels)
    for i in range(n):
        judged = [r for r in per_run if not np.isnan(r.suspicion[i])]
        assert suspicion[i] == pytest.approx(np.mean([r.suspicion[i] for r in judged]))
        assert flagged[i] == all(r.flagged[i] for r in judged)
