"""dynunc/scoring/dedup.py against brute force: every pair compared (the full N x N similarity
matrix in float64), groups found by a breadth-first search over a Python adjacency list,
the kept image chosen by a plain min(). Synthetic embeddings, stored as the produce run
stores them (float16)."""
from collections import deque

import numpy as np
import pytest

from dynunc.scoring import dedup, knn


def unit64(embeddings):
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def reference_groups(embeddings, threshold, assigned=None, centroids=None):
    """{frozenset(members): kept} by brute force. `assigned` None: every pair is compared
    (no clusters) and the kept one is the lower line; else only pairs within a cluster,
    and the kept one is the least similar to its cluster's centroid, then the lower line.
    Also asserts that no compared pair lies within 1e-4 of the threshold (the premise
    that float32 and float64 arithmetic agree on every edge)."""
    x = unit64(embeddings)
    n = len(x)
    sims = x @ x.T
    same = np.ones((n, n), dtype=bool) if assigned is None else assigned[:, None] == assigned[None, :]
    off_diagonal = ~np.eye(n, dtype=bool)
    assert not (np.abs(sims - threshold)[same & off_diagonal] < 1e-4).any(), "a pair sits on the threshold"
    adjacency = [[j for j in range(n) if j != i and same[i, j] and sims[i, j] >= threshold] for i in range(n)]
    seen, groups = set(), {}
    for start in range(n):
        if start in seen or not adjacency[start]:
            continue
        component, queue = {start}, deque([start])
        while queue:
            for j in adjacency[queue.popleft()]:
                if j not in component:
                    component.add(j)
                    queue.append(j)
        seen |= component
        if assigned is None:
            kept = min(component)
        else:
            c = unit64(centroids[assigned[start]][None])[0]
            kept = min(component, key=lambda i: (float(x[i] @ c), i))
        groups[frozenset(component)] = kept
    return groups


def found_groups(result):
    groups = {}
    for g in np.unique(result.group):
        members = result.index[result.group == g]
        kept = members[result.kept[result.group == g]]
        assert len(kept) == 1
        groups[frozenset(members.tolist())] = int(kept[0])
    return groups


def planted_embeddings(seed, clusters=6, per_cluster=40, dim=24, spread=0.6, copies=0.25, chains=4):
    """Clustered float16 embeddings with near-copies of a quarter of the points and a
    few chains (a, a', a'') whose ends may be further apart than the threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)) * 3
    base = np.repeat(centres, per_cluster, axis=0) + rng.normal(0, spread * 3, (clusters * per_cluster, dim))
    sources = rng.choice(len(base), int(copies * len(base)), replace=False)
    near = base[sources] + rng.normal(0, 0.05, (len(sources), dim))
    chain = []
    for s in rng.choice(len(base), chains, replace=False):
        step = rng.normal(0, 0.25, dim)
        chain += [base[s] + step, base[s] + 2 * step]
    x = np.concatenate([base, near, np.array(chain)])
    return x[rng.permutation(len(x))].astype(np.float16)


@pytest.mark.parametrize("threshold", [0.9, 0.97, 0.995])
@pytest.mark.parametrize("block", [7, dedup.DEFAULT_BLOCK])
def test_groups_within_given_clusters_match_brute_force(threshold, block):
    """Arbitrary clusters and centroids (random, not k-means): the pair, component and
    kept-one logic alone, with blocks of 7 similarities (one row at a time, a cluster
    split into many row blocks) and with the default block."""
    x = planted_embeddings(seed=1)
    rng = np.random.default_rng(2)
    assigned = rng.integers(0, 5, len(x))
    centroids = unit64(rng.normal(0, 1, (5, x.shape[1]))).astype(np.float32)
    result = dedup.duplicate_groups(x, assigned, centroids, threshold, block=block)
    expected = reference_groups(x, threshold, assigned, centroids)
    assert len(expected) >= 3
    assert found_groups(result) == expected


def test_deduplicate_on_separated_clusters_finds_every_pair_brute_force_finds():
    """With clusters far apart, k-means puts every duplicate group in one cluster, and
    SemDeDup's groups are brute force's over all N^2 pairs (the kept one aside, which
    depends on the centroids: checked above)."""
    rng = np.random.default_rng(5)
    dim, clusters = 32, 8
    centres = np.eye(dim)[:clusters] * 10
    points = np.repeat(centres, 30, axis=0) + rng.normal(0, 1.0, (clusters * 30, dim))
    copies = points[::3] + rng.normal(0, 0.03, (len(points[::3]), dim))
    x = np.concatenate([points, copies]).astype(np.float16)
    result = dedup.deduplicate(x, 0.97, clusters=clusters, seed=0)
    expected = reference_groups(x, 0.97)
    assert len(expected) >= 60
    assert set(found_groups(result)) == set(expected)


def test_duplicates_layout():
    x = planted_embeddings(seed=3)
    result = dedup.deduplicate(x, 0.95, clusters=4)
    assert result.num_groups == len(np.unique(result.group)) > 0
    starts = np.flatnonzero(np.concatenate([[True], result.group[1:] != result.group[:-1]]))
    assert np.array_equal(result.group[starts], np.arange(result.num_groups))  # numbered 0, 1, ... in order
    assert result.kept[starts].all() and result.kept.sum() == len(starts)  # the kept one first in its group
    kept_lines = result.index[starts]
    assert np.all(np.diff(kept_lines) > 0)  # groups in the order of their kept line
    assert np.all(result.cosine_to_kept[result.kept] == 1.0)
    x64 = unit64(x)
    per_member_kept = kept_lines[result.group]
    np.testing.assert_allclose(result.cosine_to_kept[~result.kept],
                               np.einsum("ij,ij->i", x64[result.index], x64[per_member_kept])[~result.kept], atol=1e-5)
    removed = np.zeros(len(x), dtype=bool)
    removed[result.index[~result.kept]] = True
    assert np.array_equal(result.removed, removed)
    assert result.num_removed == len(result.index) - result.num_groups


def test_a_chain_joined_in_any_order_is_one_component():
    n = 50
    rng = np.random.default_rng(0)
    order = rng.permutation(n - 1)
    parent = dedup.merge_components(np.arange(n + 2), order + 1, order)  # edges (i+1, i), shuffled
    assert np.all(parent[:n] == 0) and parent[n] == n and parent[n + 1] == n + 1


def test_no_duplicates_and_zero_rows():
    x = np.eye(6, dtype=np.float16)
    x[5] = 0  # an all-zero embedding is similar to nothing, not NaN
    result = dedup.deduplicate(x, 0.5, clusters=2)
    assert result.num_groups == 0 and not result.removed.any() and len(result.index) == 0
    assert np.isfinite(knn.float32_copy(x, normalise=True)).all()


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(4)
    train = rng.normal(0, 1, (500, 16)).astype(np.float16)
    val = rng.normal(0, 1, (70, 16)).astype(np.float16)
    found, cosine = dedup.nearest_neighbours(train, val, chunk=16)
    sims = unit64(val) @ unit64(train).T
    assert np.array_equal(found, sims.argmax(axis=1))
    np.testing.assert_allclose(cosine, sims.max(axis=1), atol=1e-5)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.01, float("nan")])
def test_threshold_outside_0_1_is_refused(value):
    with pytest.raises(ValueError, match=r"--dedup: .*\(0, 1\]"):
        dedup.check_threshold("--dedup", value)


def test_a_threshold_in_semdedups_eps_range_is_refused_with_both_spellings():
    """SemDeDup's eps is 1 - cosine (0.07 in its paper's range): typed as --dedup it would
    join most of a list."""
    with pytest.raises(ValueError) as e:
        dedup.check_threshold("--dedup", 0.07, eps_flag="--dedup-eps")
    assert str(e.value) == ("--dedup 0.07: this is a cosine similarity (pairs with cosine >= 0.07 are joined, most "
                            "of a list), refused below 0.5; SemDeDup's eps is 1 - cosine: for eps 0.07 write "
                            "--dedup 0.93 or --dedup-eps 0.07")
    assert dedup.check_threshold("--dedup", 0.5) == 0.5
    assert dedup.eps_threshold("--dedup-eps", 0.07) == 1 - 0.07 and dedup.eps_threshold("--dedup-eps", 0) == 1.0
    for eps in (-0.01, 0.51, float("nan")):
        with pytest.raises(ValueError, match=r"--dedup-eps: SemDeDup's eps \(1 - cosine similarity\) must be in "
                                             r"\[0, 0.5\], got"):
            dedup.eps_threshold("--dedup-eps", eps)


def exact_copies(seed, n=1000, dim=32, copied=100):
    """float16 embeddings in which `copied` rows each have one exact copy (200 identical
    rows), as a produce run records two identical images; the copies' {frozenset}."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, dim)).astype(np.float16)
    sources = rng.choice(n, copied, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), copied, replace=False)
    x[targets] = x[sources]
    return x, {frozenset((int(a), int(b))) for a, b in zip(sources, targets)}


def test_identical_rows_brute_force():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (300, 8)).astype(np.float16)
    x[[10, 50, 299]] = x[3]  # a group of four
    x[[20, 21]] = 0  # all-zero rows: no direction, never copies
    x[40] = x[30]
    x[40, 2], x[30, 2] = np.float16(-0.0), np.float16(0.0)  # -0 equals 0
    for chunk in (7, None):
        root = dedup.identical_rows(x, chunk=chunk)
        expected = [min(j for j in range(300) if np.array_equal(x[i], x[j]) and x[i].any()) if x[i].any() else i
                    for i in range(300)]
        assert root.tolist() == expected
    assert root[[3, 10, 50, 299]].tolist() == [3] * 4 and root[40] == 30 and root[21] == 21


@pytest.mark.parametrize("threshold", [1.0, 0.999, 0.9])
def test_exact_copies_are_found_at_any_threshold(threshold):
    """float32 rounds a unit row's similarity with itself to either side of 1, so a
    threshold of 1 (cosine >= 1) missed part of the exact copies; they are grouped at
    every threshold now, each pair as brute force groups identical rows."""
    x, pairs = exact_copies(seed=8)
    unit = knn.float32_copy(x, normalise=True)
    self_similarity = np.einsum("ij,ij->i", unit, unit)
    assert (self_similarity < 1).any()  # the premise: float32 puts some below 1
    result = dedup.deduplicate(x, threshold, seed=0)
    found = set(found_groups(result))
    assert pairs <= found
    if threshold == 1.0:
        assert found == pairs and result.num_removed == 100
    for group, kept in found_groups(result).items():  # the kept one: least similar to its cluster's centroid
        if group in pairs:
            assert kept == min(group)  # identical rows: equally similar, the lower line


def test_dedup_eps_is_one_minus_the_threshold(run):
    assert coreset_cli(run, "--fraction", "0.5", "--dedup", "0.93", output=run["out"] / "a.txt")[0] == 0
    code, out, err = coreset_cli(run, "--fraction", "0.5", "--dedup-eps", "0.07", output=run["out"] / "b.txt")
    assert code == 0, err
    assert open(run["out"] / "a.txt").read() == open(run["out"] / "b.txt").read()
    assert read_groups(run["out"] / "a.txt.dedup_groups.tsv") == read_groups(run["out"] / "b.txt.dedup_groups.tsv")
    assert "duplicate groups at cosine >= 0.93" in out


def test_default_clusters_is_sqrt_n():
    assert dedup.default_clusters(1) == 1
    assert dedup.default_clusters(4000) == 63
    assert dedup.default_clusters(1_281_167) == 1132


# -----------------------------------------------------------------------------
# get_coreset.py --dedup
# -----------------------------------------------------------------------------
CLASSES, PER_CLASS, EPOCHS = 4, 15, 5


@pytest.fixture
def run(tmp_path):
    """A list of 60 images, a history of 5 epochs and embeddings (epoch 4) in which 12
    lines are near-copies of 12 others (well-separated clusters, so that SemDeDup finds
    exactly brute force's groups)."""
    from conftest import make_image_tree, write_full_history

    data = tmp_path / "data"
    make_image_tree(str(data), num_classes=CLASSES, per_class=PER_CLASS)
    listing = data / "file_list.txt"
    rng = np.random.default_rng(0)
    n = CLASSES * PER_CLASS
    hdir = write_full_history(listing, tmp_path / "run", rng.random(n), EPOCHS, rng)
    dim = 16
    x = np.repeat(np.eye(dim)[:CLASSES] * 8, PER_CLASS, axis=0) + rng.normal(0, 1.0, (n, dim))
    copies = rng.choice(n, 12, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), copies), 12, replace=False)
    x[copies] = x[sources] + rng.normal(0, 0.02, (12, dim))
    np.save(f"{hdir}/embed_{EPOCHS - 1}.npy", x.astype(np.float16))
    return dict(tmp=tmp_path, run=tmp_path / "run", hdir=hdir, list=listing, x=x.astype(np.float16), n=n,
                out=tmp_path / "out")


def coreset_cli(run, *extra, output=None):
    import get_coreset
    from conftest import run_main

    output = output or run["out"] / "coreset.txt"
    return run_main(get_coreset.main, ["--input", run["run"], "--dataset_file_list", run["list"], "--window", "2",
                                       "--output", output, "--dedup-clusters", CLASSES, *extra])


def read_groups(path):
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert tuple(rows[0]) == dedup.GROUPS_HEADER
    return rows[1:]


def kept_indices(run, path):
    from dynunc.lists.file_list import read_file_list

    names = {read_file_list(str(run["list"])).name(i): i for i in range(run["n"])}
    return sorted(names[line.rsplit(" ", 1)[0]] for line in open(path).read().splitlines())


def test_get_coreset_dedup_writes_groups_and_selects_from_the_rest(run):
    code, out, err = coreset_cli(run, "--fraction", "0.5", "--dedup", "0.98")
    assert code == 0, err
    groups_path = run["out"] / "coreset.txt.dedup_groups.tsv"
    rows = read_groups(groups_path)
    lines = open(run["list"]).read().splitlines()
    found = {}
    for group, index, line, path, cosine, kept in rows:
        i = int(index)
        assert lines[int(line) - 1].rsplit(" ", 1)[0] == path  # line is 1-based, path as written
        found.setdefault(int(group), []).append((i, kept, float(cosine)))
    expected = reference_groups(run["x"], 0.98)
    assert len(expected) == 12
    assert {frozenset(i for i, _, _ in members) for members in found.values()} == set(expected)
    x64 = unit64(run["x"])
    removed = set()
    for members in found.values():
        assert members[0][1] == "yes" and all(k == "no" for _, k, _ in members[1:])
        for i, _, cosine in members[1:]:
            assert abs(cosine - float(x64[i] @ x64[members[0][0]])) < 1e-3
            removed.add(i)
    # the coreset: the top half of the scores among the lines left (no ties in float scores)
    scores = np.load(str(run["out"] / "coreset.txt.scores.npy"))
    pool = [i for i in range(run["n"]) if i not in removed]
    expected_kept = sorted(sorted(pool, key=lambda i: -scores[i])[:run["n"] // 2])
    assert kept_indices(run, run["out"] / "coreset.txt") == expected_kept
    assert "12 duplicate groups at cosine >= 0.98" in out and f"the other {len(pool)}" in out
    assert f"embeddings of epoch {EPOCHS - 1}" in out


def test_dedup_budget_beyond_the_pool_keeps_the_whole_pool(run):
    code, out, err = coreset_cli(run, "--fraction", "1", "0.5", "--dedup", "0.98",
                                 output=run["out"] / "c_{fraction}.txt")
    assert code == 0, err
    rows = read_groups(run["out"] / "c_all.txt.dedup_groups.tsv")
    removed = {int(r[1]) for r in rows if r[5] == "no"}
    assert kept_indices(run, run["out"] / "c_1.txt") == [i for i in range(run["n"]) if i not in removed]
    assert f"int(N * fraction) = {run['n']} exceeds the {run['n'] - len(removed)} lines left after --dedup: all kept" \
        in out


def test_dedup_class_balanced_keeps_class_shares_of_the_pool(run):
    code, _, err = coreset_cli(run, "--fraction", "0.5", "--dedup", "0.98", "--class-balanced")
    assert code == 0, err
    removed = {int(r[1]) for r in read_groups(run["out"] / "coreset.txt.dedup_groups.tsv") if r[5] == "no"}
    kept = kept_indices(run, run["out"] / "coreset.txt")
    assert not removed & set(kept) and len(kept) == run["n"] // 2


def test_dedup_with_nothing_above_the_threshold_changes_no_coreset(run):
    assert coreset_cli(run, "--fraction", "0.5", output=run["out"] / "plain.txt")[0] == 0
    assert coreset_cli(run, "--fraction", "0.5", "--dedup", "1", output=run["out"] / "d.txt")[0] == 0
    assert open(run["out"] / "plain.txt").read() == open(run["out"] / "d.txt").read()
    assert read_groups(run["out"] / "d.txt.dedup_groups.tsv") == []


@pytest.mark.parametrize("case, message", [
    ("threshold0", "--dedup: the cosine-similarity threshold must be in (0, 1], got 0.0"),
    ("threshold2", "--dedup: the cosine-similarity threshold must be in (0, 1], got 1.5"),
    ("clusters", "--dedup-clusters must be >= 1, got 0"),
    ("eps as a threshold", "--dedup 0.07: this is a cosine similarity"),
    ("eps range", "--dedup-eps: SemDeDup's eps (1 - cosine similarity) must be in [0, 0.5], got 0.93"),
    ("both", "give --dedup (a cosine similarity) or --dedup-eps (1 - cosine), not both"),
    ("missing", "PRODUCE.EMBED_DIM"),
    ("rows", "has 59 rows but the training file list has 60 lines"),
    ("nan", "row 7 holds a NaN value"),
])
def test_dedup_refusals_write_nothing(run, case, message):
    import os

    extra = {"threshold0": ["--dedup", "0"], "threshold2": ["--dedup", "1.5"],
             "clusters": ["--dedup", "0.9", "--dedup-clusters", "0"], "eps as a threshold": ["--dedup", "0.07"],
             "eps range": ["--dedup-eps", "0.93"], "both": ["--dedup", "0.93", "--dedup-eps", "0.07"],
             }.get(case, ["--dedup", "0.9"])
    embed = f"{run['hdir']}/embed_{EPOCHS - 1}.npy"
    if case == "missing":
        os.remove(embed)
    elif case == "rows":
        np.save(embed, run["x"][:-1])
    elif case == "nan":
        bad = run["x"].copy()
        bad[7, 3] = np.nan
        np.save(embed, bad)
    code, _, err = coreset_cli(run, "--fraction", "0.5", *extra)
    assert code == 2 and message in err
    assert not run["out"].exists() or os.listdir(run["out"]) == []


# -----------------------------------------------------------------------------
# report.py --dedup, --leakage
# -----------------------------------------------------------------------------
LEAKED = 5


@pytest.fixture
def val(run):
    """A validation tree of 4 x 5 images whose first LEAKED embeddings are near-copies of
    training rows (the others drawn apart from every training row)."""
    from conftest import make_image_tree

    data = run["tmp"] / "val"
    make_image_tree(str(data), num_classes=CLASSES, per_class=5, seed=1)
    rng = np.random.default_rng(9)
    v = rng.normal(0, 1.0, (CLASSES * 5, run["x"].shape[1]))
    v[:, -1] += 12  # a direction no training row has
    sources = rng.choice(run["n"], LEAKED, replace=False)
    v[:LEAKED] = run["x"][sources].astype(np.float64) + rng.normal(0, 0.02, (LEAKED, v.shape[1]))
    np.save(f"{run['hdir']}/val_embed_{EPOCHS - 1}.npy", v.astype(np.float16))
    return dict(list=data / "file_list.txt", v=v.astype(np.float16), sources=sources)


def report_cli(run, *extra):
    from conftest import run_main
    from dynunc.report import page as report

    return run_main(report.main, ["--input", run["run"], "--dataset_file_list", run["list"], "--window", "2",
                                  "--method", "dynunc", "--fraction", "0.5", "--output", run["out"],
                                  "--dedup-clusters", CLASSES, *extra])


def test_report_shows_duplicate_groups_and_leaked_pairs(run, val):
    import csv
    import json

    from PIL import Image

    from dynunc.report import duplicates as report_dedup, figures as report_figures

    code, _, err = report_cli(run, "--dedup", "0.98", "--leakage", "0.95", "--val_file_list", val["list"])
    assert code == 0, err
    out = run["out"]
    numbers = json.load(open(out / "report.json"))
    # the groups file is get_coreset's
    assert coreset_cli(run, "--fraction", "0.5", "--dedup", "0.98", output=run["tmp"] / "c.txt")[0] == 0
    assert open(out / "dedup_groups.tsv").read() == open(run["tmp"] / "c.txt.dedup_groups.tsv").read()
    d = numbers["dedup"]
    assert (d["groups"], d["removed"], d["epoch"], d["clusters"]) == (12, 12, EPOCHS - 1, CLASSES)
    assert d["removed_share"] == 12 / run["n"] and len(d["shown"]) == 12
    assert Image.open(out / "dedup_groups.png").size == report_figures.image_grid_size(8, 12)
    # leakage: brute force nearest training row of every validation row
    sims = unit64(val["v"]) @ unit64(run["x"]).T
    nearest, best = sims.argmax(axis=1), sims.max(axis=1)
    expected = sorted(np.flatnonzero(best >= 0.95).tolist(), key=lambda v: -best[v])
    assert sorted(expected) == list(range(LEAKED))  # the planted leaks, and only they
    rows = list(csv.reader(open(out / "leakage.csv")))
    assert tuple(rows[0]) == report_dedup.LEAKAGE_HEADER
    assert [int(r[0]) for r in rows[1:]] == expected
    assert [int(r[3]) for r in rows[1:]] == nearest[expected].tolist() == [int(s) for s in
                                                                           val["sources"][expected]]
    np.testing.assert_allclose([float(r[6]) for r in rows[1:]], best[expected], atol=1e-3)
    leak = numbers["leakage"]
    assert (leak["pairs"], leak["val_images"], leak["share"]) == (LEAKED, CLASSES * 5, LEAKED / (CLASSES * 5))
    assert Image.open(out / "leakage.png").size == report_figures.image_grid_size(8, 2)
    page = open(out / "index.html").read()
    for text in ('id="dedup"', 'id="leakage"', 'href="dedup_groups.tsv"', 'href="leakage.csv"',
                 'src="dedup_groups.png"', 'src="leakage.png"', "removes 12 images, 20.0% of the list",
                 "5 of 20 validation images (25.0%)", "<b>Caution:</b> 25% of the validation images"):
        assert text in page


def test_report_without_the_flags_has_no_such_sections(run):
    import os

    assert report_cli(run)[0] == 0
    assert not {"dedup_groups.tsv", "leakage.csv"} & set(os.listdir(run["out"]))
    assert 'href="#dedup"' not in open(run["out"] / "index.html").read()


@pytest.mark.parametrize("case, message", [
    ("no_list", "--leakage needs --val_file_list"),
    ("threshold", "--leakage: the cosine-similarity threshold must be in (0, 1], got 0.0"),
    ("no_val_embed", "val_embed_<epoch>.npy is missing"),
    ("val_rows", "has 19 rows but the validation file list has 20 lines"),
    ("dedup_threshold", "--dedup: the cosine-similarity threshold must be in (0, 1], got 2.0"),
])
def test_report_refusals_write_nothing(run, val, case, message):
    import os

    extra = ["--leakage", "0.0" if case == "threshold" else "0.9"]
    if case != "no_list":
        extra += ["--val_file_list", val["list"]]
    if case == "dedup_threshold":
        extra += ["--dedup", "2"]
    path = f"{run['hdir']}/val_embed_{EPOCHS - 1}.npy"
    if case == "no_val_embed":
        os.remove(path)
    elif case == "val_rows":
        np.save(path, val["v"][:-1])
    code, _, err = report_cli(run, *extra)
    assert code == 2 and message in err, err
    if case == "no_val_embed":
        assert "PRODUCE.EMBED_DIM" in err
    assert not run["out"].exists()


def test_a_group_too_large_to_be_copies_is_warned_about(run):
    """Embeddings that collapse a class (all 15 images of class 0 within cosine 0.9999 of
    one another) make one group of at least 15 at --dedup 0.99: a warning naming its size
    once it reaches LARGE_GROUP, none below; the coreset is written either way."""
    import re

    x = run["x"].astype(np.float32)
    x[:PER_CLASS] = x[0] + np.random.default_rng(1).normal(0, 1e-3, (PER_CLASS, x.shape[1]))
    np.save(f"{run['hdir']}/embed_{EPOCHS - 1}.npy", x.astype(np.float16))
    original = dedup.LARGE_GROUP
    try:
        code, out, err = coreset_cli(run, "--fraction", "0.5", "--dedup", "0.99")
        largest = int(re.search(r"the largest group (\d+) images", out).group(1))
        assert code == 0 and largest >= PER_CLASS and "warning" not in err
        assert "Caution" not in report_page(run)
        dedup.LARGE_GROUP = largest
        code, out, err = coreset_cli(run, "--fraction", "0.5", "--dedup", "0.99")
        page = report_page(run)
    finally:
        dedup.LARGE_GROUP = original
    assert code == 0 and f"warning: a duplicate group holds {largest} images" in err
    assert f"<b>Caution:</b> a duplicate group holds {largest} images" in page


def report_page(run):
    code, _, err = report_cli(run, "--dedup", "0.99")
    assert code == 0, err
    return open(run["out"] / "index.html").read()


def test_leakage_caution_only_when_matches_are_too_common_to_be_copies():
    from dynunc.report.duplicates import LEAKAGE_CAUTION_SHARE, leakage_warning

    assert leakage_warning(0, 50_000, 0.95) is None
    assert leakage_warning(int(50_000 * LEAKAGE_CAUTION_SHARE) - 1, 50_000, 0.95) is None
    caution = leakage_warning(int(50_000 * LEAKAGE_CAUTION_SHARE), 50_000, 0.95)
    assert caution.startswith("5% of the validation images have a training image at cosine >= 0.95")
