"""dynunc/scoring/methods.py and dynunc/ranking.py against hand-written histories whose answers
are worked out here."""
import math

import numpy as np
import pytest

from dynunc.uncertainty import dynamic_uncertainty_scores
from dynunc.scoring.methods import (METHODS, ScoreParams, default_el2n_epoch, epochs_read, parse_epoch_slice,
                            score_history)
from dynunc.ranking import CCS, Cut, Ranking, ccs_select, class_quotas, rank, tie_priority, top

nan = np.nan

# 4 samples x 3 epochs. Sample 2 is never seen; sample 1 is unseen in epoch 1.
PROB = np.array([[0.2, 0.5, 0.8],
                 [0.9, nan, 0.7],
                 [nan, nan, nan],
                 [0.4, 0.4, 0.4]], dtype=np.float32)
MARGIN = np.array([[-1.0, 0.5, 2.0],
                   [3.0, nan, 1.0],
                   [nan, nan, nan],
                   [-2.0, -2.0, -2.0]], dtype=np.float32)
EL2N = np.array([[1.0, 0.6, 0.2],
                 [0.1, nan, 0.3],
                 [nan, nan, nan],
                 [0.8, 0.8, 0.8]], dtype=np.float32)
CORRECT = np.array([[0, 1, 1],
                    [1, -1, 1],
                    [-1, -1, -1],
                    [0, 0, 0]], dtype=np.int8)
RECORDS = {"prob": PROB, "margin": MARGIN, "el2n": EL2N, "correct": CORRECT}


def score(names, records=RECORDS, embedded=None, **params):
    n, k = records["prob"].shape
    loads = []

    def load(epoch, kind):
        loads.append((epoch, kind))
        return records[kind][:, epoch]

    out = score_history(names, k, n, load, ScoreParams(**params), embedded=embedded)
    return out, loads


def f32(x):
    return float(np.float32(x))  # the recorded values are float32


def test_confidence():
    s, _ = score(["confidence"])
    np.testing.assert_allclose(s["confidence"], [1 - (f32(0.2) + f32(0.5) + f32(0.8)) / 3,
                                                 1 - (f32(0.9) + f32(0.7)) / 2, nan, 1 - f32(0.4)], rtol=1e-12)


def test_variability_population_std_of_seen_epochs():
    s, _ = score(["variability"])
    p0 = np.array([f32(0.2), f32(0.5), f32(0.8)])
    expected = [math.sqrt(((p0 - p0.mean()) ** 2).mean()), abs(f32(0.9) - f32(0.7)) / 2, nan, 0.0]
    np.testing.assert_allclose(s["variability"], expected, rtol=1e-12, atol=1e-15)
    assert s["variability"][3] == 0.0  # constant: exactly 0 (Welford, no cancellation)


def test_aum_is_minus_the_mean_margin():
    s, _ = score(["aum"])
    np.testing.assert_allclose(s["aum"], [-(-1.0 + 0.5 + 2.0) / 3, -(3.0 + 1.0) / 2, nan, 2.0], rtol=1e-12)


def test_el2n_over_an_epoch_slice_and_the_default():
    s, loads = score(["el2n"], epochs=range(0, 2))
    np.testing.assert_allclose(s["el2n"], [(1.0 + f32(0.6)) / 2, f32(0.1), nan, f32(0.8)], rtol=1e-12)
    assert sorted(loads) == [(0, "el2n"), (1, "el2n")]  # epoch 2 is not read
    # default for K = 3: epoch max(1, 3 // 10) = 1; sample 1, unseen then, takes epoch 2;
    # sample 2 is never seen, so epoch 2 is read as well
    s, loads = score(["el2n"])
    np.testing.assert_allclose(s["el2n"], [f32(0.6), f32(0.3), nan, f32(0.8)], rtol=1e-12)
    assert loads == [(1, "el2n"), (2, "el2n")]
    seen = {kind: v[[0, 3]] for kind, v in RECORDS.items()}  # every sample seen in epoch 1
    s, loads = score(["el2n"], records=seen)
    assert loads == [(1, "el2n")]  # nothing left to fill: later epochs are not read
    assert [default_el2n_epoch(k) for k in (1, 2, 8, 12, 90, 300)] == [0, 1, 1, 1, 9, 30]


# Forgetting: a correctness table with unseen epochs (-1) and never-learned samples.
FORGET = np.array([
    [1, 0, 1, 0, 1, 1],     # forgotten at e=1 and e=3: 2
    [1, -1, 0, 1, 0, 0],    # 1 -> unseen -> 0 counts (consecutive seen presentations); 1 -> 0 at e=4: 2
    [0, 0, -1, 0, 0, 0],    # never correct: +inf
    [-1, -1, -1, -1, -1, -1],  # never seen, so never correct in a seen epoch: +inf
    [0, 1, 1, 1, 1, 1],     # learned, never forgotten: 0
    [1, 1, 1, 1, 1, 0],     # forgotten in the last epoch: 1
    [1, 0, -1, 1, 0, -1],   # e=1 and e=4: 2
], dtype=np.int8)


def test_forgetting_events():
    records = {"correct": FORGET, "prob": np.zeros(FORGET.shape, dtype=np.float32)}
    s, loads = score(["forgetting"], records=records)
    assert s["forgetting"].tolist() == [2.0, 2.0, math.inf, math.inf, 0.0, 1.0, 2.0]
    assert {kind for _, kind in loads} == {"correct"}


def test_random_is_seeded_and_reads_nothing():
    a, loads = score(["random"], seed=3)
    b, _ = score(["random"], seed=3)
    c, _ = score(["random"], seed=4)
    assert loads == []
    assert np.array_equal(a["random"], b["random"]) and not np.array_equal(a["random"], c["random"])


def test_dynunc_through_the_table_is_the_function_itself():
    rng = np.random.default_rng(0)
    prob = rng.random((50, 7)).astype(np.float32)
    prob[rng.random((50, 7)) < 0.2] = nan
    records = {"prob": prob, "correct": np.zeros((50, 7), dtype=np.int8)}
    s, loads = score(["dynunc", "forgetting"], records=records, window=3)
    direct = dynamic_uncertainty_scores((prob[:, k] for k in range(7)), 50, 3)
    assert np.array_equal(s["dynunc"], direct)
    # one pass: each (epoch, kind) read once, in epoch order
    assert loads == [(k, kind) for k in range(7) for kind in ("correct", "prob")]


def test_all_methods_in_one_pass_equal_each_alone():
    rng = np.random.default_rng(1)
    n, k = 300, 9
    records = {"prob": rng.random((n, k)).astype(np.float32), "margin": rng.normal(size=(n, k)).astype(np.float32),
               "el2n": rng.random((n, k)).astype(np.float32),
               "correct": rng.integers(-1, 2, size=(n, k)).astype(np.int8)}
    unseen = rng.random((n, k)) < 0.1
    for kind in ("prob", "margin", "el2n"):
        records[kind][unseen] = nan
    records["correct"][unseen] = -1
    params = dict(window=3, epochs=range(1, 5), seed=2)
    embeddings = rng.normal(size=(n, 6)).astype(np.float16)
    labels = rng.integers(0, 4, n)
    calls = []

    def embedded():
        calls.append(1)
        return embeddings, labels

    together, loads = score(list(METHODS), records=records, embedded=embedded, **params)
    assert len(loads) == len(set(loads))  # every file read at most once
    assert len(calls) == 1  # the embeddings loaded once for every method that reads them
    for name in METHODS:
        alone, _ = score([name], records=records, embedded=embedded, **params)
        assert np.array_equal(alone[name], together[name], equal_nan=True), name


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        score(["bogus"])


def test_epochs_read():
    params = ScoreParams(epochs=range(2, 5))
    assert list(epochs_read("el2n", params, 10)) == [2, 3, 4]
    assert list(epochs_read("aum", params, 10)) == list(range(10))
    assert list(epochs_read("random", params, 10)) == []


@pytest.mark.parametrize("text,k,expected", [
    ("0:3", 10, [0, 1, 2]), (":", 10, list(range(10))), ("5:", 10, [5, 6, 7, 8, 9]), (":2", 10, [0, 1]),
    ("-3:", 10, [7, 8, 9]), ("0:10:3", 10, [0, 3, 6, 9]), ("9:10", 10, [9]), ("-10:-9", 10, [0]),
])
def test_parse_epoch_slice(text, k, expected):
    assert list(parse_epoch_slice(text, k)) == expected


@pytest.mark.parametrize("text,message", [
    ("0:11", "STOP 11 is outside the 10 recorded epochs"), ("10:", "START 10 is outside"),
    ("-11:", "START -11 is outside"), ("3:3", "selects no epoch"), ("5:2", "selects no epoch"),
    ("3", "expected START:STOP"), ("a:b", "must be integers"), ("0:5:0", "STEP must be >= 1"),
    ("0:5:-1", "STEP must be >= 1"),
])
def test_parse_epoch_slice_refusals(text, message):
    with pytest.raises(ValueError, match=message):
        parse_epoch_slice(text, 10)


# -----------------------------------------------------------------------------
# Selection
# -----------------------------------------------------------------------------
def test_rank_ties_by_seeded_priority_nan_last_inf_first():
    scores = np.array([1.0, nan, 3.0, math.inf, 3.0, 1.0])
    for seed in range(8):
        first, second = sorted([2, 4], key=lambda i: tie_priority(np.array([i]), seed)[0])
        low = sorted([0, 5], key=lambda i: tie_priority(np.array([i]), seed)[0])
        assert rank(scores, seed).tolist() == [3, first, second, *low, 1]
        assert Ranking(scores, seed=seed).select(2).tolist() == sorted([3, first])
        assert Ranking(scores, seed=seed).select(5).tolist() == [0, 2, 3, 4, 5]
        assert Ranking(scores, seed=seed).cut(2) == Cut(3.0, 2, 1)
        assert Ranking(scores, seed=seed).cut(3) == Cut(3.0, 0, 0)  # between two scores: no draw


def test_ties_at_a_cut_are_a_uniform_draw_never_list_order():
    """Coarse scores on a class-sorted list (forgetting counts are mostly 0): the kept
    tied images are spread over the list, not its first lines; every tied image is kept
    with the same probability over seeds; fractions are nested; untied cuts unchanged."""
    labels = np.repeat(np.arange(10), 100)
    scores = np.zeros(1000)
    scores[::7] = 2.0  # 143 strictly above the tie of 857 zeros
    for seed in range(3):
        kept = top(scores, 500, seed)
        assert (scores[kept] == 2.0).sum() == 143
        per_class = np.bincount(labels[kept], minlength=10)
        assert per_class.min() >= 30 and per_class.max() <= 70, per_class  # list order would give 100 and 14
        assert Ranking(scores, seed=seed).cut(500) == Cut(0.0, 857, 357)
        assert set(top(scores, 300, seed)) <= set(kept) <= set(top(scores, 700, seed))  # nested
        assert np.array_equal(kept, np.sort(rank(scores, seed)[:500]))
    assert not np.array_equal(top(scores, 500, 0), top(scores, 500, 1))
    # each of 10 tied images kept with probability 3/10 over 4,000 seeds (5-sigma bound)
    tie = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    counts = np.zeros(len(tie))
    for seed in range(4000):
        counts[top(tie, 4, seed)] += 1
    share = counts[1:11] / 4000
    assert np.abs(share - 0.3).max() < 5 * math.sqrt(0.3 * 0.7 / 4000), share
    assert counts[0] == 4000 and counts[11] == 0
    distinct = np.random.default_rng(0).random(1000)  # no ties: the seed changes nothing
    assert np.array_equal(top(distinct, 321, 0), top(distinct, 321, 9))
    assert np.array_equal(top(distinct, 321, 5), np.sort(np.argsort(-distinct)[:321]))


def test_class_balanced_ties_are_drawn_within_each_class():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    scores = np.zeros(100)
    scores[[3, 60]] = 1.0
    ranking = Ranking(scores, labels, seed=4)
    kept = ranking.select(50, class_balanced=True)
    assert np.bincount(labels[kept]).tolist() == [25, 15, 10]
    assert {3, 60} <= set(kept.tolist())
    assert kept[labels[kept] == 0].tolist() != list(range(25))  # not the first lines of the class
    for c, q in ((0, 25), (1, 15), (2, 10)):
        members = np.flatnonzero((labels == c) & (scores == 0))
        need = q - int(((labels == c) & (scores == 1)).sum())
        expected = members[np.argsort(tie_priority(members, 4), kind="stable")[:need]]
        assert sorted(kept[(labels[kept] == c) & (scores[kept] == 0)].tolist()) == sorted(expected.tolist())
    assert ranking.cut(50, class_balanced=True) == Cut(None, 49 + 29 + 20, 24 + 14 + 10)
    assert Ranking(np.arange(100.0), labels).cut(50, class_balanced=True) == Cut(None, 0, 0)


def test_class_quotas_largest_remainder():
    # sizes: class 0: 7, 1: 2, 2: 1, 3: 0, 4: 3 (N = 13)
    labels = np.array([0] * 7 + [1] * 2 + [2] + [4] * 3)
    # keep 6: 6*7/13 = 3.23, 6*2/13 = 0.92, 6/13 = 0.46, 0, 6*3/13 = 1.38 -> floors 3,0,0,0,1 (4);
    # the 2 left go to the largest remainders: class 1 (.92), class 2 (.46)
    assert class_quotas(labels, 6).tolist() == [3, 1, 1, 0, 1]
    assert class_quotas(labels, 13).tolist() == [7, 2, 1, 0, 3]
    assert class_quotas(labels, 1).tolist() == [1, 0, 0, 0, 0]  # 7/13 is the largest remainder
    three = np.repeat([0, 1, 2], 2)
    assert class_quotas(three, 1).tolist() == [1, 0, 0]  # equal remainders: the lower class
    assert class_quotas(three, 4).tolist() == [2, 1, 1]
    assert class_quotas(three, 5).tolist() == [2, 2, 1]


def test_class_balanced_counts_and_top_within_class():
    labels = np.array([0] * 7 + [1] * 2 + [2] + [4] * 3)
    rng = np.random.default_rng(0)
    scores = rng.random(13)
    scores[[0, 3]] = 5.0  # a tie in class 0
    kept = Ranking(scores, labels).select(6, class_balanced=True)
    assert np.bincount(labels[kept], minlength=5).tolist() == [3, 1, 1, 0, 1]
    for c, q in enumerate([3, 1, 1, 0, 1]):
        members = np.flatnonzero(labels == c)
        best = sorted(members, key=lambda i: (-scores[i], i))[:q]
        assert sorted(kept[labels[kept] == c].tolist()) == sorted(best), c
    assert kept.tolist() == sorted(kept.tolist())


def test_class_balanced_is_not_the_global_top():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([9.0, 8.0, 7.0, 1.0, 2.0, 3.0])
    assert Ranking(scores, labels).select(2).tolist() == [0, 1]
    assert Ranking(scores, labels).select(2, class_balanced=True).tolist() == [0, 5]


def ccs_distribution():
    """3 equal-width bins over [0, 3]: 3 samples in [0, 1), 50 in [1, 2), 10 in [2, 3],
    plus 5 very hard samples (score 100), shuffled."""
    values = np.concatenate([[0.0, 0.5, 0.5], np.linspace(1.0, 1.9, 50), np.linspace(2.0, 3.0, 10),
                             np.full(5, 100.0)])
    perm = np.random.default_rng(0).permutation(len(values))
    return values[perm]


def test_ccs_fills_the_smallest_bins_first():
    scores = ccs_distribution()
    rule = CCS(beta=0.08, bins=3, seed=0)  # int(0.08 * 68) = 5: exactly the score-100 samples
    kept = Ranking(scores).select(30, ccs=rule)
    chosen = scores[kept]
    assert len(kept) == 30 and len(set(kept.tolist())) == 30
    assert not (chosen == 100).any()
    # smallest bin (3) all taken, then the 10-bin (27 // 2 = 13 > 10) all, then 17 of the 50
    assert ((chosen >= 0) & (chosen < 1)).sum() == 3
    assert ((chosen >= 2) & (chosen <= 3)).sum() == 10
    assert ((chosen >= 1) & (chosen < 2)).sum() == 17
    # budget smaller than the bins: 9 -> 3 per bin
    chosen = scores[Ranking(scores).select(9, ccs=rule)]
    assert [((chosen >= a) & (chosen < b)).sum() for a, b in ((0, 1), (1, 2), (2, 3.5))] == [3, 3, 3]


def test_ccs_equal_bins_and_seeds():
    scores = np.arange(100, dtype=np.float64)
    rule = CCS(beta=0.2, bins=4, seed=1)  # drops 80..99; bins 0-19, 20-39, 40-59, 60-79
    kept = Ranking(scores).select(40, ccs=rule)
    assert np.bincount(kept // 20, minlength=5).tolist() == [10, 10, 10, 10, 0]
    assert np.array_equal(kept, Ranking(scores).select(40, ccs=rule))  # same seed, same subset
    other = Ranking(scores).select(40, ccs=CCS(beta=0.2, bins=4, seed=2))
    assert not np.array_equal(kept, other)
    # beta 0 and one bin: a uniform sample of all
    assert len(Ranking(scores).select(100, ccs=CCS(0.0, 1))) == 100


def test_ccs_refusals_and_infinite_scores():
    scores = np.arange(10, dtype=np.float64)
    with pytest.raises(ValueError, match="leaves 5 with a score, fewer than the 6 to keep"):
        Ranking(scores).select(6, ccs=CCS(0.5))
    for beta in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"BETA must be in \[0, 1\)"):
            CCS(beta)
    with_inf = np.array([0.0, 1.0, 2.0, math.inf, math.inf, nan])
    kept = ccs_select(with_inf, rank(with_inf), 5, CCS(0.0, bins=2), np.random.default_rng(0))
    assert kept.tolist() == [0, 1, 2, 3, 4]  # NaN is never a candidate; +inf joins the top bin


def test_class_balanced_ccs_per_class():
    labels = np.repeat([0, 1], [40, 20])
    scores = np.concatenate([np.arange(40.0), np.arange(20.0)])
    kept = Ranking(scores, labels).select(30, class_balanced=True, ccs=CCS(0.25, bins=2, seed=0))
    assert np.bincount(labels[kept]).tolist() == [20, 10]
    assert scores[kept[labels[kept] == 0]].max() < 30  # class 0's hardest 10 dropped
    assert scores[kept[labels[kept] == 1]].max() < 15  # class 1's hardest 5 dropped
    with pytest.raises(ValueError, match="of class 0"):
        Ranking(scores, labels).select(45, class_balanced=True, ccs=CCS(0.5, seed=0))


@pytest.mark.parametrize("seed", range(4))
def test_top_by_partition_is_the_stable_ranking(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, 400).astype(np.float64)  # ties everywhere
    scores[rng.random(400) < 0.1] = nan
    scores[rng.random(400) < 0.05] = math.inf
    scores[rng.random(400) < 0.05] = -0.0
    for keep in (1, 7, 100, 350, 399, 400):
        assert Ranking(scores).select(keep).tolist() == sorted(rank(scores)[:keep].tolist()), keep


def _random_history(n, k, seed):
    """Records of n samples x k epochs: NaN gaps in some rows only (so that some chunks
    are fully seen and take the fast path), samples never seen, near-ties."""
    rng = np.random.default_rng(seed)
    prob = rng.random((n, k)).astype(np.float32)
    prob[n // 3: n // 3 + 40] = 0.25  # constant rows: std exactly 0, ties
    unseen = np.zeros((n, k), dtype=bool)
    gappy = slice(n // 2, n // 2 + 300)
    unseen[gappy] = rng.random((300, k)) < 0.3
    unseen[n - 5:] = True  # never seen
    prob[unseen] = nan
    margin = rng.normal(size=(n, k)).astype(np.float32)
    margin[unseen] = nan
    el2n = rng.random((n, k)).astype(np.float32)
    el2n[unseen] = nan
    correct = (rng.random((n, k)) < 0.6).astype(np.int8)
    correct[unseen] = -1
    return {"prob": prob, "margin": margin, "el2n": el2n, "correct": correct}


def _authors_forgetting(correct):
    """Toneva et al.'s arithmetic, per sample over its list of presentations (the
    epochs in which it was seen): a forgetting event is a 1 followed by a 0 in that
    list; a sample never correct is unlearned (+inf: ranked above every count)."""
    out = np.empty(len(correct))
    for i, row in enumerate(correct):
        presented = [int(c) for c in row if c != -1]
        events = sum(1 for a, b in zip(presented, presented[1:]) if a == 1 and b == 0)
        out[i] = events if 1 in presented else math.inf
    return out


def _first_seen_from(values, start):
    """EL2N of one checkpoint: the value at epoch `start`, or at the sample's next seen epoch."""
    out = np.full(len(values), nan)
    for i, row in enumerate(values):
        later = [float(v) for v in row[start:] if not np.isnan(v)]
        if later:
            out[i] = later[0]
    return out


def _reference_scores(records, el2n_epochs):
    """Each method, from its definition, over the whole (n x k) arrays at once
    (forgetting and default EL2N per sample, as their authors' code computes them)."""
    import warnings

    prob, correct = records["prob"].astype(np.float64), records["correct"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        ref = {"confidence": 1.0 - np.nanmean(prob, axis=1),
               "variability": np.nanstd(prob, axis=1),
               "aum": -np.nanmean(records["margin"].astype(np.float64), axis=1),
               "el2n": (_first_seen_from(records["el2n"], default_el2n_epoch(prob.shape[1])) if el2n_epochs is None
                        else np.nanmean(records["el2n"][:, list(el2n_epochs)].astype(np.float64), axis=1))}
    ref["forgetting"] = _authors_forgetting(correct)
    return ref


@pytest.mark.parametrize("threads", [1, 3])
def test_chunked_threaded_pass_equals_the_definitions(monkeypatch, threads):
    """Many small chunks over several threads (fast path for fully seen chunks, masked
    path elsewhere) give each method's definition (1e-12), and the very same bits as one
    chunk on one thread."""
    import dynunc.scoring.methods as scores_module

    records = _random_history(3001, 9, seed=threads)
    names = ["confidence", "variability", "aum", "el2n", "forgetting"]
    whole, _ = score(names, records=records)  # one chunk (3001 < CHUNK_ROWS), default threads
    monkeypatch.setattr(scores_module, "CHUNK_ROWS", 128)

    def load(epoch, kind):
        return np.ascontiguousarray(records[kind][:, epoch])

    chunked = score_history(names, 9, 3001, load, ScoreParams(), threads=threads)
    ref = _reference_scores(records, None)
    for name in names:
        np.testing.assert_array_equal(chunked[name], whole[name], err_msg=name)
        np.testing.assert_allclose(chunked[name], ref[name], rtol=1e-12, atol=1e-15, err_msg=name)
    assert np.isnan(chunked["variability"][-5:]).all() and np.isinf(chunked["forgetting"][-5:]).all()
