"""Coreset stability while producing (dynunc/training/stability.py): the tracked coreset is
get_coreset.py's on the history truncated to the epochs so far, the overlap and the
Spearman coefficient against plain references, the stopping rule's streak, and the
PRODUCE config checks."""
import shutil

import numpy as np
import pytest

import get_coreset
from conftest import run_main, write_full_history
from dynunc.uncertainty import WindowScores, dynamic_uncertainty_scores
from dynunc.history import FILE_LIST_NAME, load_epoch_prob
from dynunc.ranking import top_cut
from dynunc.training.stability import (SPEARMAN_KEY, VS_EPOCH_KEY, StabilityTracker, StopWhenStable, average_ranks,
                               check_config, effective_window, overlap_key, spearman)
from utils.config import load_config

N, K, WINDOW = 120, 8, 3
FRACTIONS = (0.5, 0.75)


def write_list(path, n=N):
    path.write_text("".join(f"/c{i % 4}/img_{i:04d}.png {i % 4}\n" for i in range(n)))


def history_with_ties(tmp_path):
    """A history in which a third of the samples hold one constant probability
    (score 0: a tie at every cut) and about 10% are unseen each epoch."""
    write_list(tmp_path / "train.txt")
    rng = np.random.default_rng(3)
    level = rng.random(N)
    hdir = write_full_history(tmp_path / "train.txt", tmp_path / "run", level, K, rng)
    for epoch in range(K):  # rewrite prob with the constant quarter
        prob = load_epoch_prob(f"{hdir}/prob_{epoch}.npy", N).copy()
        prob[: N // 3] = 0.25
        np.save(f"{hdir}/prob_{epoch}.npy", prob)
    return hdir


def coreset_rows(path, lines):
    kept = path.read_text().splitlines()
    return np.array(sorted(lines.index(line) for line in kept))


def test_tracked_coreset_is_get_coresets_on_the_truncated_history(tmp_path):
    hdir = history_with_ties(tmp_path)
    lines = (tmp_path / "train.txt").read_text().splitlines()
    probs = [load_epoch_prob(f"{hdir}/prob_{epoch}.npy", N) for epoch in range(K)]
    tracker = StabilityTracker(N, WINDOW, FRACTIONS, delta=1, threads=2)
    selected = {}  # epoch -> {fraction: rows get_coreset keeps from epochs 0..epoch}
    try:
        for epoch, prob in enumerate(probs):
            metrics = tracker.push(epoch, prob)
            if epoch < WINDOW:  # epochs 0..epoch give no window (the last one is not used)
                assert metrics == {}
                continue
            truncated = tmp_path / f"upto{epoch}"
            truncated.mkdir()
            for e in range(epoch + 1):
                shutil.copy(f"{hdir}/prob_{e}.npy", truncated)
            shutil.copy(f"{hdir}/{FILE_LIST_NAME}", truncated)
            out = tmp_path / f"c{epoch}_{{fraction}}.txt"
            code, _, err = run_main(get_coreset.main, ["--input", truncated, "--dataset_file_list",
                                                       tmp_path / "train.txt", "--window", WINDOW, "--fraction",
                                                       *map(str, FRACTIONS), "--output", out])
            assert code == 0, err
            scores = np.load(str(out).replace("{fraction}", "all") + ".scores.npy")
            assert np.array_equal(tracker.scores(), scores)  # bit for bit
            selected[epoch] = {f: coreset_rows(tmp_path / f"c{epoch}_{f}.txt", lines) for f in FRACTIONS}
            for f in FRACTIONS:
                assert np.array_equal(np.flatnonzero(tracker.earlier[-1][2][f]), selected[epoch][f])
            if epoch == WINDOW:
                assert metrics == {}  # nothing earlier to compare with
                continue
            assert metrics[VS_EPOCH_KEY] == epoch - 1
            for f in FRACTIONS:
                both = len(np.intersect1d(selected[epoch][f], selected[epoch - 1][f]))
                assert metrics[overlap_key(f)] == both / len(selected[epoch][f])
            previous = dynamic_uncertainty_scores(probs[:epoch], N, WINDOW)
            assert metrics[SPEARMAN_KEY] == pytest.approx(spearman(scores, previous), abs=1e-12)
    finally:
        tracker.close()
    assert len(selected) == K - WINDOW
    # The constant third ties at score 0 across the cut at 0.75: the tie rule was exercised.
    assert top_cut(scores, int(N * 0.75)).drawn > 0
    assert 0 < len(np.intersect1d(selected[K - 1][0.75], np.arange(N // 3))) < N // 3


def test_delta_compares_with_the_epoch_that_many_back_and_replay_restores_the_state(tmp_path):
    hdir = history_with_ties(tmp_path)
    probs = [load_epoch_prob(f"{hdir}/prob_{epoch}.npy", N) for epoch in range(K)]
    whole = StabilityTracker(N, WINDOW, FRACTIONS, delta=2, threads=1)
    resumed = StabilityTracker(N, WINDOW, FRACTIONS, delta=2, threads=1)
    try:
        results = [whole.push(epoch, prob) for epoch, prob in enumerate(probs)]
        assert [r.get(VS_EPOCH_KEY) for r in results] == [None] * (WINDOW + 2) + list(range(WINDOW, K - 2))
        resumed.replay(probs[:5])
        assert [resumed.push(epoch, probs[epoch]) for epoch in range(5, K)] == results[5:]
        with pytest.raises(ValueError, match="epoch 3 fed after epoch 7"):
            whole.push(3, probs[3])
    finally:
        whole.close()
        resumed.close()


def test_window_scores_prefix_equals_the_function_on_the_prefix():
    rng = np.random.default_rng(0)
    probs = [np.where(rng.random(500) < 0.1, np.nan, rng.random(500)).astype(np.float32) for _ in range(9)]
    with WindowScores(500, 4, chunk_rows=64, threads=3) as stream:
        for k, prob in enumerate(probs):
            stream.push(prob)
            for last in (False, True):
                if k + 1 >= 4 + (0 if last else 1):
                    expected = dynamic_uncertainty_scores(probs[:k + 1], 500, 4, include_last=last, threads=1)
                    assert np.array_equal(stream.scores(include_last=last), expected)
                else:
                    with pytest.raises(ValueError, match="give no window"):
                        stream.scores(include_last=last)


def brute_average_ranks(values):
    """Rank i = 1 + (# values below) + (# equal others) / 2: the mean rank of a tie group."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([1 + np.sum(values < v) + (np.sum(values == v) - 1) / 2 for v in values])


def test_average_ranks_and_spearman_against_plain_references():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 6, 200).astype(np.float64)  # many ties
    np.testing.assert_array_equal(average_ranks(values), brute_average_ranks(values))
    a, b = rng.random(300), rng.random(300)  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    d = brute_average_ranks(a) - brute_average_ranks(b)
    assert spearman(a, b) == pytest.approx(1 - 6 * np.sum(d ** 2) / (300 * (300 ** 2 - 1)), abs=1e-12)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(300)))


def test_stop_rule_needs_patience_consecutive_epochs_at_or_above_the_threshold():
    rule = StopWhenStable(overlap=0.9, patience=3, fraction=0.5)
    key = overlap_key(0.5)
    seen = [rule.update(r) for r in [{}, {key: 0.95}, {key: 0.9}, {key: 0.89}, {key: 0.91}, {key: 0.92},
                                     {key: 1.0}]]
    assert seen == [False, False, False, False, False, False, True]
    resumed = StopWhenStable(overlap=0.9, patience=3, fraction=0.5)
    resumed.replay([{key: 0.91}, {key: 0.92}])
    assert resumed.update({key: 0.93}) is True


def test_effective_window_and_config_checks(tmp_path):
    assert [effective_window(10, k) for k in (2, 3, 8, 11, 90)] == [0, 2, 7, 10, 10]
    assert check_config(load_config(None).PRODUCE) == []
    for opts, problem in [
        (["PRODUCE.TRACK_FRACTIONS", "[0.5, 1.5]"], "PRODUCE.TRACK_FRACTIONS: 1.5 is not a fraction in (0, 1]"),
        (["PRODUCE.TRACK_FRACTIONS", "[0.5, 0.5]"], "a fraction is given twice"),
        (["PRODUCE.TRACK_DELTA", "0"], "PRODUCE.TRACK_DELTA must be >= 1"),
        (["PRODUCE.TRACK_WINDOW", "1"], "PRODUCE.TRACK_WINDOW must be >= 2"),
        (["PRODUCE.STOP_WHEN_STABLE.ENABLE", "True", "PRODUCE.STOP_WHEN_STABLE.FRACTION", "0.3"],
         "PRODUCE.STOP_WHEN_STABLE.FRACTION 0.3 is not one of PRODUCE.TRACK_FRACTIONS"),
        (["PRODUCE.STOP_WHEN_STABLE.ENABLE", "True", "PRODUCE.STOP_WHEN_STABLE.PATIENCE", "0"],
         "PATIENCE must be >= 1"),
    ]:
        problems = check_config(load_config(None, opts).PRODUCE)
        assert problems and problem in problems[0], (opts, problems)
