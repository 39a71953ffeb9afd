"""Near-duplicates among the recorded embeddings (embed_{epoch}.npy), and images of the
validation list that lie next to a training image.

Deduplication follows SemDeDup (Abbas et al. 2023): the embeddings are L2-normalised,
clustered by spherical k-means (knn.kmeans, FAISS), and within each cluster every pair
whose cosine similarity reaches the threshold is an edge; the connected components of
those edges are the duplicate groups. One image per group is kept: the one least similar to its
cluster's centroid (ties: the lower line), as SemDeDup keeps it, the least prototypical
member, which keeps the cluster's spread rather than another copy of its centre. Pairs
in different clusters are not compared: that is what makes the cost
O(N x (N / clusters) x D) instead of O(N^2 x D). Memory is never N x N: a cluster's
similarities are computed `block` values at a time (a huge cluster in row blocks), and
its groups are merged block by block. The embeddings themselves are read a block or a
cluster at a time (a float16 memory map is never copied whole), so memory beyond the
file's pages is O(N) plus one cluster.

The leakage check is an exact nearest-neighbour search (inner product of normalised
rows, FAISS's flat index): for each validation image, its most similar training image.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from dynunc.scoring import knn

DEFAULT_BLOCK = 1 << 24  # similarities computed at a time: 64 MiB of float32


def latest_embeddings(hdir: str, num_samples: int, kind: str = "embed") -> Tuple[int, np.ndarray]:
    """(epoch, embeddings) of the latest epoch with `kind` files in the history folder,
    read by history.load_embeddings (HistoryError naming the file and PRODUCE.EMBED_DIM
    when there is none, and for a wrong row count, dtype or a non-finite value)."""
    from dynunc.history import list_embed_epochs, load_embeddings

    epochs = list_embed_epochs(hdir, kind)
    embeddings = load_embeddings(hdir, num_samples, epochs[-1] if epochs else None, kind=kind)
    return epochs[-1], embeddings


# The lowest cosine-similarity threshold taken: below, a threshold joins images that are
# not copies (the curve's run: 0.99 already joins 59% of its digits), and a value this low
# is most likely SemDeDup's eps (1 - cosine, e.g. 0.07) typed as a similarity.
LOWEST_THRESHOLD = 0.5


def check_threshold(flag: str, value: float, eps_flag: Optional[str] = None) -> float:
    """A cosine-similarity threshold in [LOWEST_THRESHOLD, 1]; ValueError naming `flag`
    otherwise (below LOWEST_THRESHOLD, the message gives the eps spelling: `eps_flag`)."""
    if not (0.0 < value <= 1.0):  # NaN fails too
        raise ValueError(f"{flag}: the cosine-similarity threshold must be in (0, 1], got {value}")
    if value < LOWEST_THRESHOLD:
        spelled = f"{flag} {1 - value:g}" + (f" or {eps_flag} {value:g}" if eps_flag else "")
        raise ValueError(f"{flag} {value:g}: this is a cosine similarity (pairs with cosine >= {value:g} are joined, "
                         f"most of a list), refused below {LOWEST_THRESHOLD:g}; SemDeDup's eps is 1 - cosine: for "
                         f"eps {value:g} write {spelled}")
    return float(value)


def eps_threshold(flag: str, eps: float) -> float:
    """SemDeDup's eps (1 - cosine similarity, in [0, 1 - LOWEST_THRESHOLD]) as the cosine
    threshold 1 - eps; ValueError naming `flag` otherwise."""
    if not (0.0 <= eps <= 1.0 - LOWEST_THRESHOLD):  # NaN fails too
        raise ValueError(f"{flag}: SemDeDup's eps (1 - cosine similarity) must be in [0, {1 - LOWEST_THRESHOLD:g}], "
                         f"got {eps}")
    return 1.0 - float(eps)


def default_clusters(num_samples: int) -> int:
    """sqrt(N), rounded: it balances the k-means assignment (N x k x D) against the
    pairs compared within clusters (N x N / k x D)."""
    return max(1, round(math.sqrt(num_samples)))


def spherical_clusters(embeddings: np.ndarray, clusters: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, int64; unit-norm centroids, float32): knn.kmeans, spherical,
    on the normalised rows (trained on a seeded sample), then each row's nearest centroid
    (knn.nearest_centroid, a block of rows at a time). No float32 copy of all the rows."""
    centroids = knn.kmeans(embeddings, min(clusters, len(embeddings)), seed, spherical=True)
    return knn.nearest_centroid(embeddings, centroids, normalise=True), centroids


def merge_components(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union of the edges (a[i], b[i]) into the forest `parent` (each node points at its
    component's smallest node, its root): roots are hooked to the smaller root and paths
    compressed until every edge lies inside one component. Returns the new parent array."""
    while True:
        ra, rb = parent[a], parent[b]
        low, high = np.minimum(ra, rb), np.maximum(ra, rb)
        apart = low != high
        if not apart.any():
            return parent
        np.minimum.at(parent, high[apart], low[apart])
        while True:  # every node to its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def identical_rows(embeddings: np.ndarray, chunk: Optional[int] = None) -> np.ndarray:
    """For each row, the lowest index of the rows equal to it, value for value (exact
    copies; -0 equals 0), int64; an all-zero row only itself (it has no direction). A
    64-bit hash of each row (a random odd multiplier per column, the sum modulo 2^64),
    read `chunk` rows at a time (default: 4M values, 32 MiB of hash terms), then rows of
    equal hash compared value for value: O(N) memory, never a copy of all the rows."""
    n, d = embeddings.shape
    chunk = chunk or max(1, (1 << 22) // max(d, 1))
    weights = np.random.default_rng(0).integers(1, 2**63, size=d, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    hashes = np.empty(n, dtype=np.uint64)
    zero = np.zeros(n, dtype=bool)
    for rows in knn.chunks(n, chunk):
        block = knn.as_float32(embeddings, rows) + np.float32(0.0)  # -0 + 0 is +0
        zero[rows] = ~block.any(axis=1)
        hashes[rows] = (block.view(np.uint32).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    root = np.arange(n, dtype=np.int64)
    candidates = np.flatnonzero(~zero)
    order = candidates[np.argsort(hashes[candidates], kind="stable")]  # equal hashes in index order
    sorted_hashes = hashes[order]
    repeated = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    if not len(repeated):
        return root
    starts = np.flatnonzero(np.concatenate([[True], sorted_hashes[1:] != sorted_hashes[:-1]]))
    for begin, end in zip(starts, np.append(starts[1:], len(order))):
        if end - begin < 2:
            continue
        members = order[begin:end]
        rows = knn.as_float32(embeddings, members) + np.float32(0.0)
        _, first, which = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        # members ascend, so each value's first member is its lowest index
        root[members] = members[first[which.reshape(-1)]]
    return root


def cluster_components(rows: np.ndarray, threshold: float, block: int,
                       copies: Optional[np.ndarray] = None) -> np.ndarray:
    """For the unit rows of one cluster: the smallest member index of each member's
    duplicate component (pairs with cosine >= threshold, joined transitively; and, given
    `copies`, each member's lowest identical member, a member index <= its own, joined
    whatever the threshold: float32 rounds a unit row's similarity with itself to either
    side of 1). The similarities are computed for `block` values at a time, upper
    triangle only."""
    m = len(rows)
    parent = np.arange(m) if copies is None else np.asarray(copies, dtype=np.int64).copy()
    step = max(1, block // m)
    for start in range(0, m, step):
        sims = rows[start:start + step] @ rows[start:].T  # row i of the block against members start..m-1
        i, j = np.nonzero(sims >= threshold)
        later = j > i  # j == i is the member itself
        if later.any():
            parent = merge_components(parent, start + i[later], start + j[later])
    return parent


@dataclass(frozen=True)
class Duplicates:
    """The duplicate groups of a list, as one row per member, grouped: `group` (0, 1, ...:
    numbered in the order of their kept line), `index` (the member's entry in the list),
    `kept` (one True per group, first in its group) and `cosine_to_kept` (1 for the kept
    one); `removed`, one bool per entry of the list."""

    threshold: float
    clusters: int
    group: np.ndarray
    index: np.ndarray
    kept: np.ndarray
    cosine_to_kept: np.ndarray
    removed: np.ndarray

    @property
    def num_groups(self) -> int:
        return int(np.count_nonzero(self.kept))

    @property
    def num_removed(self) -> int:
        return int(np.count_nonzero(self.removed))

    @property
    def largest_group(self) -> int:
        return int(np.bincount(self.group).max()) if len(self.group) else 0

    def describe(self) -> str:
        n = len(self.removed)
        return (f"{self.num_groups} duplicate groups at cosine >= {self.threshold:g} ({self.clusters} k-means "
                f"clusters): {self.num_removed} of {n} lines removed ({100 * self.num_removed / max(n, 1):.2f}%), "
                f"the largest group {self.largest_group} images")

    def warning(self) -> Optional[str]:
        """A caution when a group is too large to be copies of one image: the embeddings
        do not tell the images apart at this threshold (a trained classifier's features of
        one class lie close together), so deduplication would remove distinct images."""
        if self.largest_group < LARGE_GROUP:
            return None
        return (f"a duplicate group holds {self.largest_group} images (>= {LARGE_GROUP}): at cosine "
                f"{self.threshold:g} these embeddings likely join distinct images, not copies; look at the groups "
                f"(report.py --dedup) and raise --dedup before training on this")


# A group this large is rarely copies of one image (see Duplicates.warning).
LARGE_GROUP = 20


def duplicate_groups(embeddings: np.ndarray, assigned: np.ndarray, centroids: np.ndarray, threshold: float,
                     block: int = DEFAULT_BLOCK, copies: Optional[np.ndarray] = None) -> Duplicates:
    """The duplicate groups of the rows of `embeddings` given their clusters (see the
    module). One cluster's rows are read and normalised at a time. `copies`
    (identical_rows): exact copies, joined at any threshold; each is put in its lowest
    copy's cluster."""
    n = len(embeddings)
    if copies is not None:
        assigned = np.asarray(assigned)[copies]
    centroids = np.asarray(centroids, dtype=np.float64)
    order = np.argsort(assigned, kind="stable")  # members of a cluster in line order
    bounds = np.flatnonzero(np.diff(assigned[order])) + 1
    members_of, kept_of, cosine_of = [], [], []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        rows = knn.as_float32(embeddings, members, normalise=True)
        local = None if copies is None else np.searchsorted(members, copies[members])
        roots = cluster_components(rows, threshold, block, local)
        grouped = np.flatnonzero(np.bincount(roots, minlength=len(members))[roots] > 1)
        if not len(grouped):
            continue
        # an exact copy takes its lowest copy's value: identical rows tie exactly (BLAS may
        # round two identical rows' products differently), and the tie goes to the lower line
        to_centroid = rows[grouped].astype(np.float64) @ centroids[assigned[members[0]]]
        if local is not None:  # a copy's root is grouped too (same component), at its own position
            by_position = np.empty(len(members))
            by_position[grouped] = to_centroid
            to_centroid = by_position[local[grouped]]
        # within each component: least similar to the centroid first, then the lower line
        ranked = grouped[np.lexsort((grouped, to_centroid, roots[grouped]))]
        first = np.concatenate([[True], roots[ranked][1:] != roots[ranked][:-1]])
        kept = ranked[first][np.cumsum(first) - 1]  # each member's kept one, as a position in the cluster
        members_of.append(members[ranked])
        kept_of.append(members[kept])
        cosine_of.append(np.einsum("ij,ij->i", rows[ranked], rows[kept]))
    if not members_of:
        empty = np.empty(0, dtype=np.int64)
        return Duplicates(threshold, int(len(centroids)), empty, empty, np.empty(0, dtype=bool),
                          np.empty(0, dtype=np.float32), np.zeros(n, dtype=bool))
    members, kept_line, cosine = (np.concatenate(v) for v in (members_of, kept_of, cosine_of))
    group = np.searchsorted(np.unique(kept_line), kept_line)  # numbered in the order of the kept line
    kept = members == kept_line
    final = np.lexsort((members, ~kept, group))  # the kept one first within its group
    group, members, kept, cosine = group[final], members[final], kept[final], cosine[final].astype(np.float32)
    cosine[kept] = 1.0
    removed = np.zeros(n, dtype=bool)
    removed[members[~kept]] = True
    return Duplicates(threshold, int(len(centroids)), group.astype(np.int64), members, kept, cosine, removed)


def deduplicate(embeddings: np.ndarray, threshold: float, clusters: Optional[int] = None, seed: int = 0,
                block: int = DEFAULT_BLOCK) -> Duplicates:
    """SemDeDup on (N, D) embeddings (any float dtype; a float16 memory map is read in
    blocks, never copied whole); identical rows (exact copies) are grouped at any
    threshold."""
    assigned, centroids = spherical_clusters(embeddings, default_clusters(len(embeddings)) if clusters is None else clusters,
                                             seed)
    return duplicate_groups(embeddings, assigned, centroids, threshold, block, copies=identical_rows(embeddings))


def nearest_neighbours(train: np.ndarray, queries: np.ndarray, chunk: int = 1 << 14) -> Tuple[np.ndarray, np.ndarray]:
    """(index of each query's most similar training row, int64; that cosine similarity,
    float32), exact (FAISS flat inner-product index over the normalised rows), queries
    searched `chunk` at a time."""
    import faiss

    base = knn.float32_copy(train, normalise=True)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    del base
    found = np.empty(len(queries), dtype=np.int64)
    cosine = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims, rows = index.search(knn.as_float32(queries, slice(start, start + chunk), normalise=True), 1)
        found[start:start + len(rows)], cosine[start:start + len(rows)] = rows[:, 0], sims[:, 0]
    return found, cosine


GROUPS_HEADER = ("group", "index", "line", "path", "cosine_to_kept", "kept")


def write_groups(f, duplicates: Duplicates, index, keys=None) -> None:
    """The groups as tab-separated text (GROUPS_HEADER, one row per member, the kept one
    first in its group): `index` the entry (row of the embeddings, 0-based), `line` its
    line in the list (1-based), `path` as written in the list. `index`: the list's
    FileListIndex; None for a history without a list: `line` is then the entry + 1 and
    `path` its key (`keys`, sample_keys.txt) or its index. `f`: a text file opened with
    newline=''."""
    import csv

    out = csv.writer(f, delimiter="\t", lineterminator="\n")
    out.writerow(GROUPS_HEADER)
    for g, i, cosine, kept in zip(duplicates.group.tolist(), duplicates.index.tolist(),
                                  duplicates.cosine_to_kept.tolist(), duplicates.kept.tolist()):
        if index is not None:
            line, name = int(index.lines[i]), index.name(i)
        else:
            line, name = i + 1, keys[i] if keys is not None else str(i)
        out.writerow((g, i, line, name, f"{cosine:.4f}", "yes" if kept else "no"))
