"""Pruning scores from one epoch's recorded embeddings (N x D, one row per line of the
list): the geometry methods of the method table (dynunc/scoring/methods.py's METHODS rows
with needs ("embed",)). Higher score = kept first, as everywhere.

- `moderate_scores` (Xia et al., ICLR 2023): distance of each embedding to its class's
  coordinate-wise median; the kept set is the band of distances around the median
  distance, over all samples (the authors' code: one global band);
- `prototype_scores` (Sorscher et al., NeurIPS 2022): cosine distance to the nearest of
  k spherical k-means centroids (no labels; the best of several k-means runs); the
  farthest first, and, by Sorscher's rule (`prototype_keeps_easiest`), the nearest first
  for budgets below a switch fraction;
- `kcenter_scores` (Sener and Savarese, ICLR 2018): the greedy k-center pick order;
- `d2_scores` (Maharana et al., ICLR 2024): forward message passing of a difficulty
  score over a kNN graph, then greedy selection with reverse message passing; the pick
  order.

The pick-order methods score each sample N - (its position in the order), so every
fraction's coreset is a prefix of one order: the kept sets of several fractions are
nested. Ties (equal distances or densities) go to the lower tie priority
(dynunc.ranking.tie_priority: a seeded hash of the index), never to the lower line index.
"""
import heapq
import math
from typing import Optional

import numpy as np

from dynunc.scoring import knn
from dynunc.ranking import tie_priority

KCENTER_CLUSTER_ROWS = 1024  # approximate k-center: greedy inside k-means clusters of about this many rows
D2_KNN = 10  # the authors' code default (--n-neighbor)
D2_GAMMA_FORWARD = 1.0  # their code's forward weight exp(-distance): gamma 1
D2_GAMMA_REVERSE = 1.0  # --gamma of their DataComp run (unit-norm CLIP embeddings, like ours here)


def _check(embeddings: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be N x D with N >= 1, got shape {embeddings.shape}")
    if labels is not None and len(labels) != len(embeddings):
        raise ValueError(f"{len(labels)} labels for {len(embeddings)} embeddings")


def order_scores(order: np.ndarray, n: int) -> np.ndarray:
    """float64 scores from a pick order (indices, first picked first): N - position;
    samples not in the order score NaN (ranked last)."""
    scores = np.full(n, np.nan)
    scores[order] = np.arange(n, n - len(order), -1, dtype=np.float64)
    return scores


# -----------------------------------------------------------------------------
# moderate
# -----------------------------------------------------------------------------
def class_median_distances(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of each row to the coordinate-wise median of its
    class's rows."""
    _check(embeddings, labels)
    labels = np.asarray(labels)
    by_class = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[by_class])) + 1
    distances = np.empty(len(labels), dtype=np.float64)
    for members in np.split(by_class, bounds):
        rows = np.asarray(embeddings[np.sort(members)], dtype=np.float64)
        centre = np.median(rows, axis=0)
        distances[np.sort(members)] = np.sqrt(np.square(rows - centre).sum(axis=1))
    return distances


def moderate_scores(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """-|2r - (N - 1)|, r the rank of the sample's class-median distance among all N
    (ascending, equal distances in tie-priority order): the top `keep` are the `keep`
    ranks centred on the median rank, the authors' band sorted[round(N (1 - f) / 2) :
    round(N (1 + f) / 2)] whenever N - keep is even (otherwise the one sample at the
    band's edge is drawn between its two sides by --seed)."""
    distances = class_median_distances(embeddings, labels)
    n = len(distances)
    order = np.lexsort((tie_priority(np.arange(n), seed), distances))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return -np.abs(2 * rank - (n - 1)).astype(np.float64)


# -----------------------------------------------------------------------------
# prototype
# -----------------------------------------------------------------------------
def cosine_to_nearest(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """1 - cos(row, its nearest centroid), float64: FAISS finds the nearest centroid, the
    value is recomputed in float64."""
    nearest = knn.nearest_centroid(embeddings, knn.float32_copy(centroids, normalise=True), normalise=True)
    c = np.asarray(centroids, dtype=np.float64)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    out = np.empty(len(embeddings), dtype=np.float64)
    for rows in knn.chunks(len(embeddings)):
        x = np.asarray(embeddings[rows], dtype=np.float64)
        norms = np.linalg.norm(x, axis=1)
        cos = np.einsum("ij,ij->i", x, c[nearest[rows]])
        out[rows] = 1.0 - np.divide(cos, norms, out=np.zeros_like(cos), where=norms > 0)
    return out


PROTOTYPE_RESTARTS = 5  # k-means runs; the centroids of the lowest objective are kept
PROTOTYPE_SWITCH = 0.2  # Sorscher's rule: the easiest kept below this fraction (docs/pruning_curve.md)
PROTOTYPE_KEEP = ("auto", "easy", "hard")


def prototype_scores(embeddings: np.ndarray, k: int, seed: int = 0, restarts: int = PROTOTYPE_RESTARTS) -> np.ndarray:
    """Cosine distance to the nearest of k spherical k-means centroids of the
    L2-normalised embeddings (labels unused); the centroids of the best of `restarts`
    k-means runs (knn.kmeans)."""
    _check(embeddings)
    return cosine_to_nearest(embeddings, knn.kmeans(embeddings, k, seed, spherical=True, restarts=restarts))


def prototype_keeps_easiest(rule: str, switch: float, keep: int, n: int) -> bool:
    """Whether a coreset of `keep` of `n` samples keeps the lowest prototype distances
    (the easiest, most prototypical) rather than the highest. Sorscher et al.: keep the
    easy examples when data is scarce, the hard ones when it is abundant; `rule` 'auto'
    keeps the easiest when keep < int(n x switch) (the budget of the fraction `switch`),
    'easy' and 'hard' force either side."""
    if rule == "easy":
        return True
    if rule == "hard":
        return False
    return keep < int(n * switch)


# -----------------------------------------------------------------------------
# kcenter
# -----------------------------------------------------------------------------
def greedy_kcenter(points: np.ndarray, first: int, priority: np.ndarray):
    """(order, radius): every row of `points` (float64) in greedy k-center order, from
    row `first`: each next pick is the row farthest (Euclidean) from those picked
    (equal distances: the lowest `priority`), and `radius` its distance then (+inf for
    the first). O(n^2 D): one matrix-vector product per pick, squared distances as
    |x|^2 - 2 x.y + |y|^2 (float64)."""
    n = len(points)
    norms = np.einsum("ij,ij->i", points, points)
    order = np.empty(n, dtype=np.int64)
    radius = np.empty(n, dtype=np.float64)
    nearest = np.full(n, np.inf)  # squared distance to the nearest pick
    squared = np.empty(n, dtype=np.float64)
    pick, farthest = first, np.inf
    for step in range(n):
        order[step], radius[step] = pick, math.sqrt(max(farthest, 0.0))
        np.dot(points, points[pick], out=squared)
        squared *= -2.0
        squared += norms
        squared += norms[pick]
        np.minimum(nearest, squared, out=nearest)
        nearest[pick] = -np.inf  # picked: never again
        if step + 1 == n:
            break
        pick = int(np.argmax(nearest))
        farthest = nearest[pick]
        if np.count_nonzero(nearest == farthest) > 1:
            tied = np.flatnonzero(nearest == farthest)
            pick = int(tied[np.argmin(priority[tied])])
    return order, radius


def kcenter_scores(embeddings: np.ndarray, seed: int = 0, cluster_rows: int = KCENTER_CLUSTER_ROWS) -> np.ndarray:
    """The greedy k-center pick order as scores. Exact (one greedy over all N, from a
    seeded random first pick) when N <= 2 x cluster_rows; above, the greedy runs inside
    each of round(N / cluster_rows) k-means clusters (cost N x cluster_rows x D instead of
    N^2 x D), each from its own seeded random first pick, and the clusters' orders are
    merged by the radius at which each point was picked (largest first; the clusters'
    first picks, at radius +inf, first of all, in cluster order): the global greedy's
    order, except that a point is covered only by centres of its own cluster."""
    _check(embeddings)
    n = len(embeddings)
    rng = np.random.default_rng(seed)
    priority = tie_priority(np.arange(n), seed)
    if n <= 2 * cluster_rows:
        order, _ = greedy_kcenter(np.asarray(embeddings, dtype=np.float64), int(rng.integers(n)), priority)
        return order_scores(order, n)
    clusters = max(2, round(n / cluster_rows))
    assigned = knn.nearest_centroid(embeddings, knn.kmeans(embeddings, clusters, seed))
    by_cluster = np.argsort(assigned, kind="stable")
    bounds = np.flatnonzero(np.diff(assigned[by_cluster])) + 1
    radius = np.empty(n, dtype=np.float64)
    step = np.empty(n, dtype=np.int64)
    for members in np.split(by_cluster, bounds):
        members = np.sort(members)
        local, r = greedy_kcenter(np.asarray(embeddings[members], dtype=np.float64),
                                  int(rng.integers(len(members))), priority[members])
        radius[members[local]] = r
        step[members[local]] = np.arange(len(members))
    order = np.lexsort((assigned, step, -radius))
    return order_scores(order, n)


# -----------------------------------------------------------------------------
# d2
# -----------------------------------------------------------------------------
def d2_forward(difficulty: np.ndarray, neighbours: np.ndarray, distances: np.ndarray,
               gamma_forward: float) -> np.ndarray:
    """s_i + sum over i's k nearest j of exp(-gamma_f d_ij) s_j (the authors' 'sum' graph
    mode over the directed kNN graph), float64; NaN-scored neighbours send nothing."""
    sent = np.nan_to_num(difficulty, nan=0.0)
    weights = np.exp(-gamma_forward * distances.astype(np.float64))
    return difficulty + (weights * sent[neighbours]).sum(axis=1)


def d2_order(density: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, gamma_reverse: float,
             seed: int = 0) -> np.ndarray:
    """Greedy selection with reverse message passing: repeatedly pick the sample of
    highest density (equal: lowest tie priority) and lower each of its k nearest
    neighbours' densities by exp(-gamma_r d) x the picked density. NaN densities are never
    picked. Returns the pick order. A heap with stale entries skipped: O(N k log N)."""
    density = np.array(density, dtype=np.float64)
    n = len(density)
    priority = tie_priority(np.arange(n), seed)
    weights = np.exp(-gamma_reverse * distances.astype(np.float64))
    version = np.zeros(n, dtype=np.int64)
    picked = np.isnan(density)
    heap = [(-float(density[i]), int(priority[i]), i, 0) for i in np.flatnonzero(~picked)]
    heapq.heapify(heap)
    order = []
    while heap:
        _, _, i, v = heapq.heappop(heap)
        if picked[i] or v != version[i]:
            continue
        picked[i] = True
        order.append(i)
        sent = density[i]
        for j, w in zip(neighbours[i].tolist(), weights[i].tolist()):
            if not picked[j] and w > 0.0:
                density[j] -= w * sent
                version[j] += 1
                heapq.heappush(heap, (-float(density[j]), int(priority[j]), j, int(version[j])))
    return np.asarray(order, dtype=np.int64)


def d2_difficulty(difficulty: np.ndarray, what: str = "the difficulty score") -> np.ndarray:
    """The difficulty D2 passes over its graph: `difficulty` (float64) as it is when no
    score is negative, else shifted by its minimum (the lowest becomes 0), as the
    authors' code shifts AUM by its minimum before the graph (d2pruning,
    core/data/Coreset.py). D2's messages are linear in the score: a pick lowers each
    neighbour by a share of its own density, so a negative density would raise its
    neighbours (a signed score runs the diversity backwards). NaN (no data) stays NaN.
    ValueError naming `what` where shifting means nothing: an infinite score (no finite
    shift; forgetting's never-learned), or a signed score that is one value at every
    scored line (shifted, 0 everywhere: nothing to pass)."""
    difficulty = np.asarray(difficulty, dtype=np.float64)
    if np.isinf(difficulty).any():
        i = int(np.flatnonzero(np.isinf(difficulty))[0])
        raise ValueError(f"{what} is infinite at line {i} (and {int(np.isinf(difficulty).sum()) - 1} others): "
                         "D2's messages need finite scores; choose another score for d2")
    scored = difficulty[~np.isnan(difficulty)]
    if not len(scored) or scored.min() >= 0:
        return difficulty
    low = float(scored.min())
    if scored.max() == low:
        raise ValueError(f"{what} is {low:g} at every scored line: shifted by its minimum (D2 needs non-negative "
                         "scores) it is 0 everywhere and D2 would pass nothing; choose another score for d2")
    return difficulty - low


def d2_scores(embeddings: np.ndarray, difficulty: np.ndarray, k: int = D2_KNN, gamma_forward: float = D2_GAMMA_FORWARD,
              gamma_reverse: float = D2_GAMMA_REVERSE, seed: int = 0, what: str = "the difficulty score") -> np.ndarray:
    """D2's pick order as scores, over the kNN graph (FAISS, knn.knn_graph) of the
    L2-normalised embeddings. `difficulty`: one score per row (higher = harder), shifted
    by its minimum where it has a negative value (d2_difficulty); NaN (no data) is
    neither picked nor sends messages (scores NaN); +-inf is refused."""
    _check(embeddings)
    difficulty = np.asarray(difficulty, dtype=np.float64)
    if len(difficulty) != len(embeddings):
        raise ValueError(f"{what}: {len(difficulty)} scores for {len(embeddings)} embeddings")
    difficulty = d2_difficulty(difficulty, what)
    neighbours, distances = knn.knn_graph(embeddings, min(k, len(embeddings) - 1), seed, normalise=True)
    density = d2_forward(difficulty, neighbours, distances, gamma_forward)
    return order_scores(d2_order(density, neighbours, distances, gamma_reverse, seed), len(difficulty))


def check_gamma(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value
