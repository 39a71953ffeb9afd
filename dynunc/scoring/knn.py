"""k-means and k-nearest-neighbour search over recorded embeddings, by FAISS.

- `kmeans`: Lloyd's k-means (FAISS's, k-means++-free random init from `seed`), trained on
  at most MAX_POINTS_PER_CENTROID points per centroid (FAISS's default sample), spherical
  on request (centroids renormalised each iteration, for cosine geometry);
- `nearest_centroid`: each row's nearest centroid, exact (a flat index over the
  centroids), in chunks;
- `knn_graph`: each row's k nearest other rows (Euclidean). Exact (a flat index) up to
  EXACT_SEARCH_MAX rows; above, the rows are split into the cells of `kmeans`'s
  centroids (about sqrt(N) of them), and each cell's rows are searched exactly among
  the rows of the CELL_PROBE cells nearest it: one dense (BLAS) block per cell instead
  of one inverted-list scan per query, the inverted file's idea with the probing done
  per cell. Never an N x N matrix.

Vectors are read from `x` (a float16 memory map, typically) and handed to FAISS as float32
a block at a time: CHUNK_ROWS rows for the assignment, a seeded sample for k-means, one
cell and its probed neighbours for the graph; the rows are never copied whole (except
into the flat index of the exact search, at most EXACT_SEARCH_MAX rows). Memory beyond
the file's pages is O(N x k) for the graph itself plus one block. Where FAISS sees a GPU
(`faiss.get_num_gpus() > 0`, the faiss-gpu build), k-means and the search run on it.
"""
import math
from typing import Optional, Tuple

import numpy as np

CHUNK_ROWS = 1 << 16
EXACT_SEARCH_MAX = 20_000  # rows: at or below, kNN search is exact (N^2 D flops)
MAX_POINTS_PER_CENTROID = 256  # FAISS's default training sample per centroid
KMEANS_ITERATIONS = 20
CELLS_PER_SQRT_N = 1  # k-means cells of the approximate graph: about sqrt(N) (1,131 at N = 1.28M)
CELL_PROBE = 4  # a cell's rows are searched among the rows of the 4 cells nearest it (itself included)


def _faiss():
    import faiss  # imported here: only the embedding methods need it

    return faiss


def use_gpu() -> bool:
    return _faiss().get_num_gpus() > 0


def as_float32(x: np.ndarray, rows, normalise: bool = False) -> np.ndarray:
    """Rows of `x` (a slice or an index array) as a C-contiguous float32 array,
    L2-normalised on request (a zero row stays zero)."""
    block = np.ascontiguousarray(x[rows], dtype=np.float32)
    if normalise:
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, norms, out=block, where=norms > 0)
    return block


def chunks(n: int, size: int = CHUNK_ROWS):
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


def float32_copy(x: np.ndarray, normalise: bool = False) -> np.ndarray:
    """The whole of `x` as float32 (normalised on request), filled chunk by chunk."""
    out = np.empty(x.shape, dtype=np.float32)
    for rows in chunks(len(x)):
        out[rows] = as_float32(x, rows, normalise)
    return out


def restart_seed(seed: int, restart: int) -> int:
    """FAISS's seed for k-means restart `restart`: `seed` itself for the first (one
    restart is the k-means of before), a draw from (seed, restart) for the others."""
    if restart == 0:
        return seed
    return int(np.random.SeedSequence([seed, restart]).generate_state(1)[0] & 0x7FFFFFFF)


def kmeans_objective(train: np.ndarray, centroids: np.ndarray) -> float:
    """The k-means objective of `centroids` on the rows `train` (float32, as trained on):
    the sum of each row's squared Euclidean distance to its nearest centroid (the nearest
    found by FAISS, the distances summed in float64). Lower is better."""
    nearest = nearest_centroid(train, centroids)
    total = 0.0
    for rows in chunks(len(train)):
        diff = train[rows].astype(np.float64) - centroids[nearest[rows]].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def kmeans(x: np.ndarray, k: int, seed: int, spherical: bool = False,
           iterations: int = KMEANS_ITERATIONS, restarts: int = 1) -> np.ndarray:
    """k centroids (k x D float32) of the rows of `x` (normalised first if `spherical`).
    Trained on a seeded sample of at most MAX_POINTS_PER_CENTROID x k rows. `restarts`
    runs of FAISS k-means from different seeded starts (restart_seed) on that sample keep
    the centroids of the lowest objective (kmeans_objective; equal: the earlier run), as
    FAISS's `nredo` keeps its best run."""
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means: k must be in [1, {n}] (the number of rows), got {k}")
    if restarts < 1:
        raise ValueError(f"k-means: restarts must be >= 1, got {restarts}")
    sample = min(n, MAX_POINTS_PER_CENTROID * k)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False)) if sample < n else None
    train = float32_copy(x if rows is None else x[rows], normalise=spherical)
    faiss = _faiss()
    best, best_objective = None, math.inf
    for restart in range(restarts):
        # min_points_per_centroid 1: below 39 rows per centroid FAISS would print a warning to stdout
        km = faiss.Kmeans(d, k, niter=iterations, seed=restart_seed(seed, restart), spherical=spherical,
                          gpu=use_gpu(), min_points_per_centroid=1, max_points_per_centroid=MAX_POINTS_PER_CENTROID,
                          verbose=False)
        km.train(train)
        centroids = np.array(km.centroids, dtype=np.float32).reshape(k, d)
        if restarts == 1:
            return centroids
        objective = kmeans_objective(train, centroids)
        if objective < best_objective:
            best, best_objective = centroids, objective
    return best


def _index(faiss, index):
    return faiss.index_cpu_to_all_gpus(index) if use_gpu() else index


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, normalise: bool = False) -> np.ndarray:
    """Index of each row's nearest centroid (Euclidean; on normalised rows and centroids,
    the same as the largest cosine), int64."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index = _index(faiss, index)
    out = np.empty(len(x), dtype=np.int64)
    for rows in chunks(len(x)):
        out[rows] = index.search(as_float32(x, rows, normalise), 1)[1][:, 0]
    return out


def _select_neighbours(found: np.ndarray, squared: np.ndarray, own: np.ndarray, k: int):
    """From k + 1 candidates per row (nearest first; -1 where none), the k nearest other
    rows and their Euclidean distances: the row itself moves last and the last column is
    dropped; a missing candidate is the row itself at distance +inf."""
    missing = found < 0
    found = np.where(missing, own, found)
    squared = np.where(missing, np.inf, squared)
    keep = np.argsort(found == own, axis=1, kind="stable")[:, :k]
    neighbours = np.take_along_axis(found, keep, axis=1)
    distances = np.sqrt(np.maximum(np.take_along_axis(squared, keep, axis=1), 0)).astype(np.float32)
    distances[neighbours == own] = np.inf
    return neighbours, distances


def knn_graph(x: np.ndarray, k: int, seed: int, normalise: bool = False,
              exact_max: int = EXACT_SEARCH_MAX, probe: int = CELL_PROBE,
              centroids: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(neighbours, distances): each row's k nearest other rows, nearest first (int64
    N x k) and their Euclidean distances (float32 N x k; of the normalised rows if
    `normalise`). A row's own index is left out; where fewer than k others are searched,
    the missing entries are the row itself at distance +inf (a weight exp(-inf) = 0).

    Up to `exact_max` rows: exact (one flat index). Above: the rows are split into the
    cells of `centroids` (default: `kmeans` with about sqrt(N) centroids), and the rows
    of each cell are searched exactly among the rows of the `probe` cells whose centroids
    are nearest its own (itself included): a dense block search (BLAS) per cell, about
    N x probe x N / C distances in all, with no index beyond one cell's candidates."""
    n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"kNN graph: k must be in [1, {n - 1}] (the number of rows - 1), got {k}")
    faiss = _faiss()
    neighbours = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    if n <= exact_max:
        vectors = float32_copy(x, normalise)
        index = _index(faiss, faiss.IndexFlatL2(d))
        index.add(vectors)
        for rows in chunks(n):
            squared, found = index.search(vectors[rows], k + 1)
            own = np.arange(rows.start, rows.stop)[:, None]
            neighbours[rows], distances[rows] = _select_neighbours(found, squared, own, k)
        return neighbours, distances
    if centroids is None:
        centroids = kmeans(x, max(1, round(CELLS_PER_SQRT_N * math.sqrt(n))), seed, spherical=normalise)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    cell = nearest_centroid(x, centroids, normalise)
    by_cell = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[by_cell], np.arange(len(centroids) + 1))
    between = faiss.IndexFlatL2(d)
    between.add(centroids)
    _, near_cells = between.search(centroids, min(probe, len(centroids)))
    for c in range(len(centroids)):
        members = by_cell[starts[c]:starts[c + 1]]
        if len(members) == 0:
            continue
        candidates = np.concatenate([by_cell[starts[b]:starts[b + 1]] for b in near_cells[c] if b >= 0])
        index = faiss.IndexFlatL2(d)
        index.add(as_float32(x, candidates, normalise))  # the cell's block, read from the file
        squared, found = index.search(as_float32(x, members, normalise), min(k + 1, len(candidates)))
        found = np.where(found >= 0, candidates[np.maximum(found, 0)], -1)
        if found.shape[1] < k + 1:  # fewer candidates than k + 1
            pad = k + 1 - found.shape[1]
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            squared = np.pad(squared, ((0, 0), (0, pad)), constant_values=np.inf)
        neighbours[members], distances[members] = _select_neighbours(found, squared, members[:, None], k)
    return neighbours, distances
