"""pruning/dedup.py against brute force: every pair compared (the full N x N similarity
matrix in float64), groups found by a breadth-first search over a Python adjacency list,
the kept image chosen by a plain min(). Synthetic embeddings, stored as the produce run
stores them (float16)."""
from collections import deque

import numpy as np
import pytest

from pruning import dedup


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
    result = dedup.duplicate_groups(dedup.normalised(x), assigned, centroids, threshold, block=block)
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
    assert np.isfinite(dedup.normalised(x)).all()


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


def test_default_clusters_is_sqrt_n():
    assert dedup.default_clusters(1) == 1
    assert dedup.default_clusters(4000) == 63
    assert dedup.default_clusters(1_281_167) == 1132
