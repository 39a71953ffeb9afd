"""Which samples a coreset keeps, given one score per sample (higher = kept first).

- top: the `keep` highest scores; NaN (no data) ranks last (found by partition, O(N),
  for each budget);
- class-balanced: each class keeps its share of `keep` in proportion to its size
  (largest remainders, ties to the lower class index), chosen within the class by the
  rule above or below;
- CCS, coverage-centric selection (Zheng et al. 2023, ICLR): drop the int(beta * n)
  hardest (highest-ranked) candidates, split the rest into `bins` equal-width score
  bins, and spread the budget over the bins, smallest bin first: each takes
  min(its size, remaining budget // bins left), sampled uniformly with a seeded
  generator. NaN-scored samples are never candidates.

Ties at a cut are broken by a seeded uniform draw, never by position in the list
(ImageNet lists are sorted by class, so "lower index first" would prune whole classes
when scores are coarse, as forgetting counts are): each sample gets a pseudo-random
priority from (seed, its index), `tie_priority`, and among equal scores the lower
priority ranks first. The priority of a sample does not depend on the other samples,
so the kept sets of several fractions are nested, and a score without ties at the cut
selects exactly what it did before. `Cut` says how many kept images were drawn.

`Ranking` sorts a method's scores at most once, so that several fractions share the sort.
Every selection returns the kept indices in ascending order and depends only on
(scores, keep, labels, rule, seed).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs look uniform."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tie_priority(indices: np.ndarray, seed: int) -> np.ndarray:
    """uint64 priority of each sample index for breaking ties (lower first): a seeded
    hash of the index, so any subset of tied samples is put in a uniformly random
    order, the same whichever other samples are tied with it."""
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * _GOLDEN + _GOLDEN)
        return _mix64(np.asarray(indices).astype(np.uint64) * _GOLDEN + key)


@dataclass(frozen=True)
class Cut:
    """Where a budget cuts the ranking. `tied` images score exactly at a cut that falls
    inside a group of equal scores, and `drawn` of them are kept, chosen at random
    (0 and 0 when the cut falls between two different scores). `score`: the lowest
    kept score (None for class-balanced selection, where each class has its own cut;
    then `tied` and `drawn` are summed over the classes)."""

    score: Optional[float]
    tied: int
    drawn: int

    def describe(self) -> str:
        if not self.tied:
            return "no tie at the cut"
        where = f" at score {self.score:.6g}" if self.score is not None else " at the classes' cuts"
        return f"inside a tie of {self.tied} images{where}; {self.drawn} kept at random"


@dataclass(frozen=True)
class CCS:
    beta: float  # fraction of the hardest samples dropped first, in [0, 1)
    bins: int = 50
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"--ccs: BETA must be in [0, 1), got {self.beta}")
        if self.bins < 1:
            raise ValueError(f"--ccs-bins must be >= 1, got {self.bins}")


def tie_group_starts(ordered: np.ndarray) -> np.ndarray:
    """For values in sorted order: True at each position that starts a new group of
    equal values (NaNs are one group)."""
    same = ordered[1:] == ordered[:-1]
    same |= np.isnan(ordered[1:]) & np.isnan(ordered[:-1])
    return np.concatenate([[True], ~same])[:len(ordered)]


def rank(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices from the first kept to the last: highest score first, ties in the order
    of tie_priority(index, seed), NaN last."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    starts = tie_group_starts(scores[order])
    in_tie = ~starts
    in_tie[:-1] |= ~starts[1:]  # every member of a group of two or more
    tied = np.flatnonzero(in_tie)
    if len(tied):
        group = np.cumsum(starts)[tied]
        members = order[tied]
        order[tied] = members[np.lexsort((tie_priority(members, seed), group))]
    return order


def _partition_cut(scores: np.ndarray, keep: int):
    """(kth score, indices strictly above it, indices equal to it) for the keep-th
    highest score, NaN counting as lowest; O(N)."""
    neg = -np.asarray(scores, dtype=np.float64)
    kth = np.partition(neg, keep - 1)[keep - 1]
    if np.isnan(kth):
        return kth, np.flatnonzero(~np.isnan(neg)), np.flatnonzero(np.isnan(neg))
    return kth, np.flatnonzero(neg < kth), np.flatnonzero(neg == kth)


def _cut(kth: float, above: np.ndarray, at: np.ndarray, keep: int) -> Cut:
    need = keep - len(above)
    return Cut(float(-kth), len(at), need) if need < len(at) else Cut(float(-kth), 0, 0)


def _top(scores: np.ndarray, keep: int, seed: int) -> Tuple[np.ndarray, Cut]:
    """top() and its Cut from one partition."""
    kth, above, at = _partition_cut(scores, keep)
    cut = _cut(kth, above, at, keep)
    if cut.tied:
        at = at[np.argsort(tie_priority(at, seed), kind="stable")[:cut.drawn]]
    return np.sort(np.concatenate([above, at])), cut


def top(scores: np.ndarray, keep: int, seed: int = 0) -> np.ndarray:
    """The first `keep` of rank(scores, seed), ascending, in O(N): a partition finds the
    keep-th score, then every score above it and the ties at it with the lowest
    priority are kept (NaN, partitioned last, only if needed)."""
    return _top(scores, keep, seed)[0]


def top_cut(scores: np.ndarray, keep: int) -> Cut:
    """The Cut of top(scores, keep, seed) (it does not depend on the seed)."""
    return _cut(*_partition_cut(scores, keep), keep)


def class_quotas(labels: np.ndarray, keep: int) -> np.ndarray:
    """Per class label, how many of `keep` it gets: floor(keep * n_c / N), then one more
    for the classes with the largest remainders (ties: lower class index) until the
    quotas sum to `keep`. Exact integer arithmetic."""
    sizes = np.bincount(labels).astype(np.int64)
    total = int(sizes.sum())
    if not 0 <= keep <= total:
        raise ValueError(f"keep must be in [0, {total}], got {keep}")
    product = sizes * keep  # < N^2: exact in int64 for any N below 3e9
    quotas = product // total
    short = keep - int(quotas.sum())
    # largest remainder first; the stable sort keeps lower class indices first among equals
    quotas[np.argsort(-(product % total), kind="stable")[:short]] += 1
    return quotas


def ccs_select(scores: np.ndarray, ranked: np.ndarray, keep: int, rule: CCS, rng: np.random.Generator,
               what: str = "the samples") -> np.ndarray:
    """CCS among the candidates `ranked` (indices, hardest first). ValueError if fewer
    than `keep` remain after the hardest are dropped."""
    drop = int(rule.beta * len(ranked))
    pool = ranked[drop:]
    pool = pool[~np.isnan(scores[pool])]
    if keep > len(pool):
        raise ValueError(f"dropping the hardest {drop} of {len(ranked)} {what} leaves {len(pool)} with a score, "
                         f"fewer than the {keep} to keep")
    if keep == 0:
        return np.empty(0, dtype=np.int64)
    pool = np.sort(pool)  # members in index order, so that draws do not depend on tie order
    values = scores[pool]
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
    if hi > lo:
        position = np.clip((values - lo) / (hi - lo) * rule.bins, 0, rule.bins - 1)  # +-inf: the end bins
        bin_of = np.floor(position).astype(np.int64)
    else:
        bin_of = np.where(values > lo, rule.bins - 1, 0)
    by_bin = np.argsort(bin_of, kind="stable")
    sizes = np.bincount(bin_of, minlength=rule.bins)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    filled = [b for b in sorted(range(rule.bins), key=lambda b: (sizes[b], b)) if sizes[b] > 0]
    chosen, left = [], keep
    for i, b in enumerate(filled):
        take = min(int(sizes[b]), left // (len(filled) - i))
        members = pool[by_bin[starts[b]:starts[b + 1]]]
        chosen.append(rng.choice(members, size=take, replace=False))
        left -= take
    assert left == 0, "the smallest-bin-first rule fills any budget up to the pool size"
    return np.sort(np.concatenate(chosen))


class Ranking:
    """One method's scores, sorted once (when a rule needs the order) and shared by
    every budget; `select` gives the kept indices for one budget."""

    def __init__(self, scores: np.ndarray, labels: Optional[np.ndarray] = None, seed: int = 0):
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {self.scores.shape}")
        self.labels = labels
        self.seed = seed
        self._order = None
        self._by_class = None

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = rank(self.scores, self.seed)
        return self._order

    def _grouped(self):
        """The ranking grouped by class (each class's samples in rank order) and the
        start of each class in it."""
        if self._by_class is None:
            if self.labels is None or len(self.labels) != len(self.scores):
                raise ValueError("class-balanced selection needs one label per score")
            grouped = self.order[np.argsort(self.labels[self.order], kind="stable")]
            sizes = np.bincount(self.labels)
            self._by_class = grouped, np.concatenate([[0], np.cumsum(sizes)])
        return self._by_class

    def _class_top(self, keep: int) -> Tuple[np.ndarray, np.ndarray]:
        """Class-balanced top selection: (kept indices ascending, each class's quota)."""
        grouped, starts = self._grouped()
        quotas = class_quotas(self.labels, keep)
        label_of = self.labels[grouped]
        rank_in_class = np.arange(len(grouped)) - starts[label_of]
        return np.sort(grouped[rank_in_class < quotas[label_of]]), quotas

    def _class_cut(self, kept: np.ndarray, quotas: np.ndarray) -> Cut:
        """The Cut of a class-balanced selection: ties at each class's lowest kept score."""
        classes = np.flatnonzero(quotas)
        grouped, starts = self._grouped()
        last = grouped[starts[classes] + quotas[classes] - 1]  # each class's lowest kept sample
        cut = np.full(len(quotas), np.nan)
        cut[classes] = self.scores[last]
        member_cut = cut[self.labels]
        at = (self.scores == member_cut) | (np.isnan(self.scores) & np.isnan(member_cut) & (quotas[self.labels] > 0))
        tied = np.bincount(self.labels[at], minlength=len(quotas))
        kept_at = np.bincount(self.labels[kept[at[kept]]], minlength=len(quotas))
        broken = kept_at < tied
        return Cut(None, int(tied[broken].sum()), int(kept_at[broken].sum()))

    def choose(self, keep: int, class_balanced: bool = False,
               ccs: Optional[CCS] = None) -> Tuple[np.ndarray, Optional[Cut]]:
        """(kept indices ascending, how the cut meets ties); the Cut is None under CCS,
        which samples within score bins."""
        n = len(self.scores)
        if not 1 <= keep <= n:
            raise ValueError(f"keep must be in [1, {n}], got {keep}")
        if ccs is None:
            if not class_balanced:
                return _top(self.scores, keep, self.seed)
            kept, quotas = self._class_top(keep)
            return kept, self._class_cut(kept, quotas)
        if not class_balanced:
            return ccs_select(self.scores, self.order, keep, ccs, np.random.default_rng(ccs.seed)), None
        grouped, starts = self._grouped()
        quotas = class_quotas(self.labels, keep)
        rng = np.random.default_rng(ccs.seed)
        parts = [ccs_select(self.scores, grouped[starts[c]:starts[c + 1]], int(quotas[c]), ccs, rng,
                            what=f"samples of class {c}")
                 for c in range(len(quotas)) if quotas[c] > 0]
        return np.sort(np.concatenate(parts)), None

    def select(self, keep: int, class_balanced: bool = False, ccs: Optional[CCS] = None) -> np.ndarray:
        return self.choose(keep, class_balanced, ccs)[0]

    def cut(self, keep: int, class_balanced: bool = False) -> Cut:
        """How the top / class-balanced selection of `keep` meets ties."""
        return self.choose(keep, class_balanced)[1]
