"""Which samples a coreset keeps, given one score per sample (higher = kept first).

- top: the `keep` highest scores; ties go to the lower index; NaN (no data) ranks last
  (found by partition, O(N), for each budget);
- class-balanced: each class keeps its share of `keep` in proportion to its size
  (largest remainders, ties to the lower class index), chosen within the class by the
  rule below;
- CCS, coverage-centric selection (Zheng et al. 2023, ICLR): drop the int(beta * n)
  hardest (highest-ranked) candidates, split the rest into `bins` equal-width score
  bins, and spread the budget over the bins, smallest bin first: each takes
  min(its size, remaining budget // bins left), sampled uniformly with a seeded
  generator. NaN-scored samples are never candidates.

`Ranking` sorts a method's scores at most once, so that several fractions share the sort.
Every selection returns the kept indices in ascending order and depends only on
(scores, keep, labels, rule, seed).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np


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


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices from the first kept to the last: highest score first, ties to the lower
    index (a stable sort of the negated scores), NaN last."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    return np.argsort(-scores, kind="stable")


def top(scores: np.ndarray, keep: int) -> np.ndarray:
    """The first `keep` of rank(scores), ascending, in O(N): a partition finds the
    keep-th score, then every score above it and the lowest-index ties at it are kept
    (what a stable sort would put first; NaN, partitioned last, only if needed)."""
    neg = -np.asarray(scores, dtype=np.float64)
    kth = np.partition(neg, keep - 1)[keep - 1]
    if np.isnan(kth):
        above, at = np.flatnonzero(~np.isnan(neg)), np.flatnonzero(np.isnan(neg))
    else:
        above, at = np.flatnonzero(neg < kth), np.flatnonzero(neg == kth)
    return np.sort(np.concatenate([above, at[: keep - len(above)]]))


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

    def __init__(self, scores: np.ndarray, labels: Optional[np.ndarray] = None):
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {self.scores.shape}")
        self.labels = labels
        self._order = None
        self._by_class = None

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = rank(self.scores)
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

    def select(self, keep: int, class_balanced: bool = False, ccs: Optional[CCS] = None) -> np.ndarray:
        n = len(self.scores)
        if not 1 <= keep <= n:
            raise ValueError(f"keep must be in [1, {n}], got {keep}")
        if not class_balanced:
            if ccs is None:
                return top(self.scores, keep)
            return ccs_select(self.scores, self.order, keep, ccs, np.random.default_rng(ccs.seed))
        grouped, starts = self._grouped()
        quotas = class_quotas(self.labels, keep)
        if ccs is None:
            label_of = self.labels[grouped]
            rank_in_class = np.arange(n) - starts[label_of]
            return np.sort(grouped[rank_in_class < quotas[label_of]])
        rng = np.random.default_rng(ccs.seed)
        parts = [ccs_select(self.scores, grouped[starts[c]:starts[c + 1]], int(quotas[c]), ccs, rng,
                            what=f"samples of class {c}")
                 for c in range(len(quotas)) if quotas[c] > 0]
        return np.sort(np.concatenate(parts))
