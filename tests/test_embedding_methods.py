"""The embedding methods (moderate, prototype, kcenter, d2) and their engine (dynunc/scoring/knn.py),
each against a plain-numpy, brute-force reimplementation of the paper's (or the
authors' code's) arithmetic on small synthetic embeddings; then through get_coreset.py
and report.py on a history with embed_{epoch}.npy files, and their refusals."""
import json
import os

import numpy as np
import pytest

import get_coreset
from conftest import run_main, write_full_history
from dynunc.scoring import geometry as es
from dynunc.report import page as report
from dynunc.scoring import knn
from dynunc.ranking import tie_priority, top


def blobs(n, d, centres, rng, spread=0.3):
    """Rows around `centres` random unit centres (float16, as recorded), and each row's centre."""
    c = rng.normal(size=(centres, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    which = rng.integers(0, centres, n)
    return (c[which] + spread * rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float16), which


def pairwise(x):
    """Euclidean distances by broadcasting, float64, N x N (the tests' sizes only)."""
    x = x.astype(np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1))


def kept(scores, keep, seed=0):
    return set(top(scores, keep, seed).tolist())


# -----------------------------------------------------------------------------
# moderate: the authors' code, step by step
# -----------------------------------------------------------------------------
def moderate_reference(x, labels, keep):
    """Xia et al.'s code: per-class coordinate-wise median, L2 distance to it, then the
    band sorted[round(N (0.5 - r/2)) : round(N (0.5 + r/2))] of all samples, r = keep / N."""
    x = x.astype(np.float64)
    medians = {c: np.median(x[labels == c], axis=0) for c in np.unique(labels)}
    distance = np.array([np.linalg.norm(row - medians[c]) for row, c in zip(x, labels)])
    n, rate = len(x), keep / len(x)
    order = distance.argsort()
    return set(order[int(round(n * (0.5 - rate / 2))):int(round(n * (0.5 + rate / 2)))].tolist())


def test_moderate_is_the_authors_band_around_the_median_distance():
    rng = np.random.default_rng(3)
    n = 301
    x = rng.normal(size=(n, 12)).astype(np.float16)
    labels = rng.integers(0, 5, n)
    scores = es.moderate_scores(x, labels, seed=0)
    for keep in (1, 51, 149, 251, 301):  # N - keep even: the band is centred exactly
        assert kept(scores, keep) == moderate_reference(x, labels, keep), keep
    for keep in (50, 150, 300):  # N - keep odd: one sample at the band's edge is drawn by the seed
        assert len(kept(scores, keep) ^ moderate_reference(x, labels, keep)) <= 2, keep


# -----------------------------------------------------------------------------
# prototype
# -----------------------------------------------------------------------------
def test_cosine_to_nearest_centroid_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 10)).astype(np.float16)
    centroids = rng.normal(size=(7, 10)).astype(np.float32)
    scores = es.cosine_to_nearest(x, centroids)
    xx, cc = x.astype(np.float64), centroids.astype(np.float64)
    cos = (xx @ cc.T) / np.outer(np.linalg.norm(xx, axis=1), np.linalg.norm(cc, axis=1))
    reference = 1 - cos.max(axis=1)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-12)  # float64 both; sums in another order
    for keep in (40, 200, 399):
        assert kept(scores, keep) == set(np.argsort(-reference)[:keep].tolist())


def test_kmeans_finds_planted_clusters_and_prototype_keeps_the_farthest():
    rng = np.random.default_rng(5)
    x, which = blobs(1200, 16, 6, rng, spread=0.25)
    assigned = knn.nearest_centroid(x, knn.kmeans(x, 6, seed=1, spherical=True), normalise=True)
    # the same partition as the planted one, up to the clusters' names
    pairs = set(zip(which.tolist(), assigned.tolist()))
    assert len(pairs) == 6 and len({a for _, a in pairs}) == 6
    scores = es.prototype_scores(x, 6, seed=1)
    xx = x.astype(np.float64)
    xx /= np.linalg.norm(xx, axis=1, keepdims=True)
    means = np.stack([xx[assigned == c].mean(axis=0) for c in range(6)])  # a Lloyd step's centroids
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    reference = 1 - (xx @ means.T).max(axis=1)
    # FAISS's centroids after its iterations vs one Lloyd step from the converged partition
    np.testing.assert_allclose(scores, reference, atol=2e-3)
    assert len(kept(scores, 120) & set(np.argsort(-reference)[:120].tolist())) >= 110


def uneven_blobs(seed):
    """Six well-separated blobs of uneven sizes (float16): k-means from one random start
    often puts two centroids in a large blob and one over two small ones."""
    rng = np.random.default_rng(seed)
    sizes = [300, 150, 60, 30, 300, 100]
    which = np.repeat(np.arange(len(sizes)), sizes)
    x = (np.eye(16)[:len(sizes)][which] * 6 + rng.normal(0, 0.5, (len(which), 16))).astype(np.float16)
    return x, which


def objective_reference(x, centroids):
    """The k-means objective in float64 by brute force: each row's squared distance to its nearest centroid, summed."""
    d = ((x.astype(np.float64)[:, None, :] - centroids.astype(np.float64)[None]) ** 2).sum(axis=-1)
    return d.min(axis=1).sum()


def test_kmeans_restarts_keep_the_run_of_the_lowest_objective():
    """FAISS's nredo: run k-means R times, keep the best objective. Each run here is
    FAISS k-means from restart_seed(seed, r) on the same sample (all rows: N < 256 k)."""
    x, which = uneven_blobs(0)
    train = knn.float32_copy(x)
    for seed in (1, 7):
        runs = [knn.kmeans(x, 6, knn.restart_seed(seed, r)) for r in range(8)]
        assert np.array_equal(runs[0], knn.kmeans(x, 6, seed))  # one restart: the k-means of before
        objectives = [objective_reference(train, c) for c in runs]
        best = knn.kmeans(x, 6, seed, restarts=8)
        assert np.array_equal(best, runs[int(np.argmin(objectives))])
        np.testing.assert_allclose(knn.kmeans_objective(train, best), min(objectives), rtol=1e-9)

    def recovered(centroids):  # the planted partition, up to the clusters' names
        assigned = knn.nearest_centroid(x, centroids)
        return len(set(zip(which.tolist(), assigned.tolist()))) == len(set(assigned.tolist())) == 6

    single = [recovered(knn.kmeans(x, 6, seed)) for seed in range(8)]
    restarted = [recovered(knn.kmeans(x, 6, seed, restarts=8)) for seed in range(8)]
    assert sum(single) <= 4 and sum(restarted) >= 7, (single, restarted)


def test_sorschers_rule_keeps_the_easiest_below_the_switch():
    keeps = es.prototype_keeps_easiest
    assert keeps("auto", 0.5, 299, 1000) and not keeps("auto", 0.5, 500, 1000) and not keeps("auto", 0.5, 900, 1000)
    assert keeps("auto", 0.5, 498, 999) and not keeps("auto", 0.5, int(999 * 0.5), 999)  # int(N x 0.5) is hard
    assert keeps("easy", 0.5, 900, 1000) and not keeps("hard", 0.5, 10, 1000)
    assert not keeps("auto", 0.2, 300, 1000)


# -----------------------------------------------------------------------------
# kcenter: greedy by the full distance matrix
# -----------------------------------------------------------------------------
def kcenter_reference(x, first, seed):
    d = pairwise(x)
    n = len(x)
    priority = tie_priority(np.arange(n), seed)
    order = [first]
    covered = d[first].copy()
    while len(order) < n:
        covered[order] = -1
        best = covered.max()
        candidates = [i for i in range(n) if covered[i] == best]
        pick = min(candidates, key=lambda i: priority[i])
        order.append(pick)
        covered = np.minimum(covered, d[pick])
    return order


def test_kcenter_exact_greedy():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(250, 8)).astype(np.float16)
    scores = es.kcenter_scores(x, seed=4)
    first = int(np.random.default_rng(4).integers(250))
    order = np.argsort(-scores, kind="stable")
    assert order.tolist() == kcenter_reference(x, first, seed=4)
    assert sorted(scores) == list(range(1, 251))  # a permutation: every fraction's coreset is a prefix


def test_kcenter_within_clusters_is_the_greedy_of_each_cluster():
    rng = np.random.default_rng(7)
    x, which = blobs(600, 8, 6, rng, spread=0.2)
    scores = es.kcenter_scores(x, seed=2, cluster_rows=100)  # 600 > 2 x 100: 6 k-means clusters
    order = np.argsort(-scores, kind="stable")
    assert sorted(scores) == list(range(1, 601))
    for c in range(6):
        members = np.flatnonzero(which == c)
        picked = [i for i in order.tolist() if which[i] == c]
        local = kcenter_reference(x[members], int(np.flatnonzero(members == picked[0])[0]), seed=0)
        # the reference's ties use the members' local priorities; distinct distances make them moot
        assert picked == members[local].tolist(), c
    # every cluster's first pick comes before any second pick
    firsts = {int(which[i]) for i in order[:6]}
    assert firsts == set(range(6))
    # merged by the radius at which each point was picked in its cluster: largest first
    d = pairwise(x)
    radius = [min(d[i, j] for j in order[:step] if which[j] == which[i]) for step, i in enumerate(order[6:].tolist(), 6)]
    assert all(a >= b for a, b in zip(radius, radius[1:]))


# -----------------------------------------------------------------------------
# d2: forward and reverse message passing over a brute-force kNN graph
# -----------------------------------------------------------------------------
def d2_reference(x, s, k, gamma_f, gamma_r, seed):
    xx = x.astype(np.float64)
    xx /= np.linalg.norm(xx, axis=1, keepdims=True)
    d = pairwise(xx)
    np.fill_diagonal(d, np.inf)
    n = len(x)
    nbrs = [list(np.argsort(d[i], kind="stable")[:k]) for i in range(n)]
    density = np.array([s[i] + sum(np.exp(-gamma_f * d[i, j]) * s[j] for j in nbrs[i]) for i in range(n)])
    priority = tie_priority(np.arange(n), seed)
    alive = np.ones(n, dtype=bool)
    order = []
    for _ in range(n):
        candidates = np.flatnonzero(alive)
        best = density[candidates].max()
        pick = min((i for i in candidates if density[i] == best), key=lambda i: priority[i])
        order.append(int(pick))
        alive[pick] = False
        for j in nbrs[pick]:
            if alive[j]:
                density[j] = density[j] - np.exp(-gamma_r * d[pick, j]) * density[pick]
    return order


@pytest.mark.parametrize("k, gamma_f, gamma_r", [(10, 1.0, 1.0), (5, 0.5, 3.0)])
def test_d2_message_passing(k, gamma_f, gamma_r):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 8)).astype(np.float16)
    s = rng.random(300)
    scores = es.d2_scores(x, s, k, gamma_f, gamma_r, seed=1)
    order = np.argsort(-scores, kind="stable").tolist()
    reference = d2_reference(x, s, k, gamma_f, gamma_r, seed=1)
    # float32 search distances vs float64 here: the same picks unless two densities agree
    # to ~1e-6; the first 250 picks (the decisions that matter) must be equal
    assert order[:250] == reference[:250]
    assert sorted(order) == list(range(300))


def test_d2_unscored_samples_last_infinite_refused():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(60, 4)).astype(np.float16)
    s = rng.random(60)
    s[[3, 17]] = np.nan
    scores = es.d2_scores(x, s, 5)
    assert np.isnan(scores[[3, 17]]).all() and sorted(scores[~np.isnan(scores)]) == list(range(3, 61))
    s[5] = np.inf
    with pytest.raises(ValueError, match="--d2-score forgetting is infinite at line 5"):
        es.d2_scores(x, s, 5, what="--d2-score forgetting")


def neighbour_share(order, x, picks=200, k=10):
    """The share of the first `picks` of `order` that lie among the k nearest neighbours
    (brute force, normalised rows) of an earlier pick: what D2's reverse messages keep low."""
    xx = x.astype(np.float64)
    xx /= np.linalg.norm(xx, axis=1, keepdims=True)
    d = pairwise(xx)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1, kind="stable")[:, :k]
    near, hits = set(), 0
    for i in list(order)[:picks]:
        hits += i in near
        near.update(neighbours[i].tolist())
    return hits / picks


@pytest.mark.parametrize("score", ["aum", "moderate"])
def test_d2_shifts_a_signed_score_by_its_minimum(score):
    """The authors shift AUM by its minimum before the graph (d2pruning's Coreset.py): a
    signed score passed as it is lowers nothing, each pick raises its neighbours, and the
    first picks crowd together; shifted, D2 spreads them (fewer neighbours of earlier picks
    than a random order has)."""
    rng = np.random.default_rng(20)
    n = 500
    x, _ = blobs(n, 16, 8, rng, spread=0.6)
    if score == "aum":  # minus the mean margin: negative for the learned majority
        s = -rng.normal(1.5, 1.5, n)
        assert 0.7 < (s < 0).mean() < 1
    else:  # -|2r - (N-1)| <= 0 everywhere
        s = es.moderate_scores(x, rng.integers(0, 4, n), seed=0)
    order = np.argsort(-es.d2_scores(x, s, seed=1), kind="stable")
    # the authors' arithmetic on the shifted score: the same picks (float32 distances: the first 400)
    assert order[:400].tolist() == d2_reference(x, s - s.min(), 10, 1.0, 1.0, seed=1)[:400]
    spread = neighbour_share(order, x, picks=100)
    backwards = neighbour_share(d2_reference(x, s, 10, 1.0, 1.0, seed=1), x, picks=100)  # the signed score as it is
    random = neighbour_share(np.random.default_rng(0).permutation(n), x, picks=100)
    assert spread < random / 4 and backwards > random, (spread, random, backwards)


def test_d2_leaves_a_non_negative_score_and_refuses_a_constant_signed_one():
    rng = np.random.default_rng(21)
    s = rng.random(50)
    np.testing.assert_array_equal(es.d2_difficulty(s), s)  # no negative value: as it is
    s[[4, 9]] = np.nan
    shifted = es.d2_difficulty(s - 0.5)
    assert np.isnan(shifted[[4, 9]]).all() and np.nanmin(shifted) == 0
    np.testing.assert_allclose(shifted, s - np.nanmin(s))
    with pytest.raises(ValueError, match="--d2-score aum is -2 at every scored line: shifted by its minimum"):
        es.d2_difficulty(np.full(50, -2.0), what="--d2-score aum")


# -----------------------------------------------------------------------------
# the engine
# -----------------------------------------------------------------------------
def test_exact_knn_graph_is_brute_force():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(500, 12)).astype(np.float16)
    neighbours, distances = knn.knn_graph(x, 7, seed=0)
    d = pairwise(x)
    np.fill_diagonal(d, np.inf)
    assert neighbours.tolist() == np.argsort(d, axis=1, kind="stable")[:, :7].tolist()
    np.testing.assert_allclose(distances, np.sort(d, axis=1)[:, :7], rtol=1e-5)


def test_cell_knn_graph_recall():
    rng = np.random.default_rng(11)
    x, _ = blobs(6000, 16, 40, rng, spread=0.5)
    approximate, _ = knn.knn_graph(x, 10, seed=0, exact_max=0)  # the cell search, as above 20,000 rows
    exact, _ = knn.knn_graph(x, 10, seed=0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate.tolist(), exact.tolist())])
    assert recall >= 0.9, recall
    assert (approximate != np.arange(6000)[:, None]).all()  # never its own neighbour


# -----------------------------------------------------------------------------
# through the commands
# -----------------------------------------------------------------------------
N, K, D = 120, 6, 16


@pytest.fixture
def s(tmp_path):
    rng = np.random.default_rng(12)
    labels = np.sort(rng.integers(0, 4, N))
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"/n{c:08d}/img_{i:05d}.JPEG {c}\n" for i, c in enumerate(labels)))
    hdir = write_full_history(listing, tmp_path / "run", rng.random(N), K, rng)
    embeddings = {epoch: blobs(N, D, 4, rng)[0] for epoch in (2, 5)}
    for epoch, e in embeddings.items():
        np.save(os.path.join(hdir, f"embed_{epoch}.npy"), e)
    return dict(tmp=tmp_path, list=listing, run=tmp_path / "run", hdir=hdir, labels=labels, embeddings=embeddings)


def coreset(s, *extra):
    return run_main(get_coreset.main, ["--input", s["run"], "--dataset_file_list", s["list"], *extra])


def test_get_coreset_scores_each_method_from_the_chosen_epoch(s):
    out = s["tmp"] / "out" / "{method}_{fraction}.txt"
    os.makedirs(out.parent)
    code, stdout, err = coreset(s, "--method", "moderate", "prototype", "kcenter", "d2", "--fraction", "0.5", "0.25",
                                "--window", "3", "--output", out, "--seed", "3")
    assert code == 0, err
    latest = s["embeddings"][5]  # the last recorded epoch by default
    expected = {"moderate": es.moderate_scores(latest, s["labels"], 3),
                "prototype": es.prototype_scores(latest, 4, 3),  # k = the list's 4 classes
                "kcenter": es.kcenter_scores(latest, 3)}
    from dynunc.scoring.methods import ScoreParams, score_history
    from dynunc.history import contiguous_epoch_files, record_loader
    paths = contiguous_epoch_files(s["hdir"])
    dynunc = score_history(["dynunc"], K, N, record_loader(s["hdir"], paths, N), ScoreParams(window=3))["dynunc"]
    expected["d2"] = es.d2_scores(latest, dynunc, seed=3)
    for method, scores in expected.items():
        np.testing.assert_array_equal(np.load(f"{s['tmp']}/out/{method}_all.txt.scores.npy"), scores, method)
        assert f"-> {s['tmp']}/out/{method}_0.5.txt" in stdout
    # --embed-epoch chooses another recorded epoch; --prototypes another k
    code, _, err = coreset(s, "--method", "prototype", "--fraction", "0.5", "--embed-epoch", "2", "--prototypes", "3",
                           "--output", s["tmp"] / "p.txt", "--seed", "3")
    assert code == 0, err
    assert ("(prototype; embed-epoch 2; prototypes 3; prototype-restarts 5; prototype-keep auto; "
            "prototype-switch 0.2)") in err
    np.testing.assert_array_equal(np.load(f"{s['tmp']}/p.txt.scores.npy"), es.prototype_scores(s["embeddings"][2], 3, 3))


@pytest.mark.parametrize("flags, lowest", [((), {"0.1": True, "0.3": False, "0.7": False}),
                                           (("--prototype-keep", "hard"), {"0.1": False, "0.3": False, "0.7": False}),
                                           (("--prototype-keep", "easy"), {"0.1": True, "0.3": True, "0.7": True}),
                                           (("--prototype-switch", "0.6"), {"0.1": True, "0.3": True, "0.7": False})])
def test_prototype_coresets_follow_sorschers_rule(s, flags, lowest):
    """The easiest (nearest their prototype) below --prototype-switch, the hardest at or
    above it; --prototype-keep forces a side. The scores file is the distance either way."""
    out = s["tmp"] / "p_{fraction}.txt"
    code, stdout, err = coreset(s, "--method", "prototype", "--fraction", *lowest, "--output", out, "--seed", "2",
                                *flags)
    assert code == 0, err
    scores = np.load(f"{s['tmp']}/p_all.txt.scores.npy")
    np.testing.assert_array_equal(scores, es.prototype_scores(s["embeddings"][5], 4, 2))
    lines = s["list"].read_text().splitlines()
    for fraction, easiest in lowest.items():
        keep = int(N * float(fraction))
        expected = kept(-scores if easiest else scores, keep, seed=2)
        found = {lines.index(line) for line in (s["tmp"] / f"p_{fraction}.txt").read_text().splitlines()}
        assert found == expected, fraction
        said = f"kept {keep} of {N} lines (fraction {fraction}, prototype, the lowest scores kept)"
        assert (said in stdout) == easiest, stdout


@pytest.mark.parametrize("score", ["confidence", "aum"])
def test_d2_passes_the_score_of_another_method(s, score):
    code, _, err = coreset(s, "--method", "d2", "--d2-score", score, "--knn", "4", "--fraction", "0.5",
                           "--output", s["tmp"] / "d2.txt")
    assert code == 0, err
    from dynunc.scoring.methods import ScoreParams, score_history
    from dynunc.history import contiguous_epoch_files, record_loader
    loader = record_loader(s["hdir"], contiguous_epoch_files(s["hdir"]), N)
    difficulty = score_history([score], K, N, loader, ScoreParams())[score]
    expected = es.d2_scores(s["embeddings"][5], difficulty, 4)
    np.testing.assert_array_equal(np.load(f"{s['tmp']}/d2.txt.scores.npy"), expected)
    assert "--window is used by method dynunc only; ignored" not in err
    if score == "aum":  # signed: shifted by its minimum, and said
        assert difficulty.min() < 0 and "d2: --d2-score aum has negative scores" in err
        np.testing.assert_array_equal(expected, es.d2_scores(s["embeddings"][5], difficulty - difficulty.min(), 4))
    else:
        assert "negative scores" not in err


@pytest.mark.parametrize("case", ["no embeddings", "row count", "nan", "epoch not recorded", "infinite score",
                                  "d2 of d2", "knn 0"])
def test_refusals_write_nothing(s, case):
    extra = ["--method", "moderate"]
    if case == "no embeddings":
        for epoch in s["embeddings"]:
            os.remove(os.path.join(s["hdir"], f"embed_{epoch}.npy"))
        message = f"{s['hdir']}/embed_<epoch>.npy is missing: method moderate needs the recorded embeddings; " \
                  "a produce run records them when PRODUCE.EMBED_DIM"
    elif case == "row count":
        np.save(os.path.join(s["hdir"], "embed_5.npy"), s["embeddings"][5][:-1])
        message = f"embed_5.npy: has {N - 1} rows but the training file list has {N} lines"
    elif case == "nan":
        bad = s["embeddings"][5].copy()
        bad[7, 3] = np.nan
        np.save(os.path.join(s["hdir"], "embed_5.npy"), bad)
        message = "embed_5.npy: row 7 holds a NaN value"
    elif case == "epoch not recorded":
        extra += ["--embed-epoch", "4"]
        message = f"--embed-epoch 4: {s['hdir']} holds embeddings (embed_{{epoch}}.npy) for epochs 2, 5"
    elif case == "infinite score":
        extra = ["--method", "d2", "--d2-score", "forgetting"]
        message = "--d2-score forgetting is infinite at line"
    elif case == "d2 of d2":
        extra = ["--method", "d2", "--d2-score", "d2"]
        message = "--d2-score d2: d2 passes a method's own score; d2 reads another method's"
    else:
        extra = ["--method", "d2", "--knn", "0", "--window", "3"]
        message = "--knn must be >= 1, got 0"
    before = sorted(os.listdir(s["tmp"]))
    code, _, err = coreset(s, *extra, "--fraction", "0.5", "--output", s["tmp"] / "c.txt")
    assert code == 2 and message in err, err
    assert sorted(os.listdir(s["tmp"])) == before


def test_report_shows_the_embedding_methods(s):
    out = s["tmp"] / "report"
    code, _, err = run_main(report.main, ["--input", s["run"], "--dataset_file_list", s["list"], "--output", out,
                                          "--window", "3", "--method", "dynunc", "moderate", "kcenter", "d2"])
    assert code == 0, err
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["methods"] == ["dynunc", "moderate", "kcenter", "d2"]
    assert numbers["params"]["embed_epoch"] == 5 and numbers["params"]["d2_score"] == "dynunc"
    assert all((out / f"hist_{m}.png").exists() for m in ("moderate", "kcenter", "d2"))


def test_default_methods_leave_out_the_embedding_methods_without_embeddings(s):
    for epoch in s["embeddings"]:
        os.remove(os.path.join(s["hdir"], f"embed_{epoch}.npy"))
    out = s["tmp"] / "report"
    code, _, err = run_main(report.main, ["--input", s["run"], "--dataset_file_list", s["list"], "--output", out,
                                          "--window", "3"])
    assert code == 0, err
    assert "lacks the embeddings (embed_{epoch}.npy) or records of moderate, prototype, kcenter, d2: left out" in err
    assert "moderate" not in json.loads((out / "report.json").read_text())["methods"]


def test_report_keeps_what_get_coreset_keeps_on_both_sides_of_prototypes_switch(s):
    """Below --prototype-switch the report's kept set is the easiest (as get_coreset.py's),
    its cut the highest kept score, its histogram line labelled <=; above it the hardest."""
    out = s["tmp"] / "report"
    code, _, err = run_main(report.main, ["--input", s["run"], "--dataset_file_list", s["list"], "--output", out,
                                          "--window", "3", "--method", "prototype", "--fraction", "0.1", "0.5",
                                          "--projection-fraction", "0.1", "--seed", "2"])
    assert code == 0, err
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["keeps_lowest"] == {"prototype": ["0.1"]}
    scores = es.prototype_scores(s["embeddings"][5], 4, 2)
    for fraction, lowest in (("0.1", True), ("0.5", False)):
        keep = int(N * float(fraction))
        expected = sorted(kept(-scores if lowest else scores, keep, seed=2))
        assert numbers["cuts"]["prototype"][fraction] == (scores[expected].max() if lowest else scores[expected].min())
    shown = numbers["projection"]  # the panel at keep 0.1: the shown images' kept flags are get_coreset's set
    easiest = kept(-scores, int(N * 0.1), seed=2)
    assert shown["panels"]["prototype"]["kept"] == sum(1 for i in shown["indices"] if i in easiest)
