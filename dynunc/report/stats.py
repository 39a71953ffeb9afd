"""The numbers of the pruning report (report.py), computed from each method's scores
and the history, in O(N) memory per method and O(N log N) time.

Every method's scores are sorted once (dynunc/ranking.py's `rank`: highest first, ties
in the seeded random order that get_coreset.py uses with the same --seed, NaN last); a sample's position in that order says, for every
fraction at once, whether it is kept (position < int(N * fraction), exactly the set
`select.top` keeps) and which score decile it falls in. Spearman's correlation uses the
average position of each group of tied scores (NaN scores form one group, ranked last,
as the selection ranks them).
"""
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dynunc.ranking import Cut, rank, tie_group_starts, top_cut

DECILES = 10
CHUNK = 1 << 20  # elements per chunk of the dot products (small float64 temporaries)


@dataclass
class MethodOrder:
    """One method's scores and where each sample falls in their ranking. A method that
    keeps the lowest scores at some budgets (prototype's Sorscher rule: `keeps_lowest`)
    is ranked a second time, on the negated scores, as get_coreset.py ranks it there;
    `side(keep)` is the ranking whose first `keep` are the set kept at `keep`."""

    scores: np.ndarray  # float64, one per sample
    order: np.ndarray  # sample indices, highest score first
    position: np.ndarray  # position[i]: where sample i is in `order`
    twice_rank: np.ndarray  # 2 x the average position of i's tie group (an integer)
    seed: int = 0
    keeps_lowest: Callable[[int], bool] = field(default=lambda keep: False, repr=False)
    _lowest_first: Optional["MethodOrder"] = field(default=None, repr=False)

    @classmethod
    def of(cls, scores: np.ndarray, seed: int = 0,
           keeps_lowest: Callable[[int], bool] = lambda keep: False) -> "MethodOrder":
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        index_type = np.int32 if n < 2 ** 30 else np.int64
        order = rank(scores, seed).astype(index_type)
        position = np.empty(n, dtype=index_type)
        position[order] = np.arange(n, dtype=index_type)
        return cls(scores, order, position, tie_twice_ranks(scores, order, index_type), seed, keeps_lowest)

    def side(self, keep: int) -> "MethodOrder":
        """The ranking whose first `keep` samples are the ones kept at `keep`: this one, or
        the ranking of the negated scores (lowest first, ties drawn by the same seed)."""
        if not self.keeps_lowest(keep):
            return self
        if self._lowest_first is None:
            self._lowest_first = MethodOrder.of(-self.scores, self.seed)
        return self._lowest_first

    def kept(self, keep: int) -> np.ndarray:
        """Boolean mask of the `keep` samples kept (get_coreset.py's set)."""
        return self.side(keep).position < keep

    def cut(self, keep: int) -> float:
        """The score of the last kept sample (the threshold drawn on the histogram): the
        lowest kept, or the highest when `keep` keeps the lowest scores."""
        return float(self.scores[self.side(keep).order[keep - 1]])

    def tie(self, keep: int) -> Cut:
        """How the cut of `keep` meets ties: M images at the cut score, K kept at random."""
        if not self.keeps_lowest(keep):
            return top_cut(self.scores, keep)
        cut = top_cut(-self.scores, keep)
        return replace(cut, score=None if cut.score is None else -cut.score)

    def deciles(self) -> np.ndarray:
        """uint8 score decile of each sample: 0 = the highest-scored tenth."""
        n = len(self.position)
        return (self.position.astype(np.int64) * DECILES // n).astype(np.uint8)


def tie_twice_ranks(scores: np.ndarray, order: np.ndarray, dtype=np.int64) -> np.ndarray:
    """Twice the average 0-based position in `order` of each sample's group of equal
    scores (NaNs are one group): ties share (first + last) positions, an integer, so
    ranks stay exact in an integer array."""
    n = len(order)
    starts = np.flatnonzero(tie_group_starts(scores[order]))
    ends = np.append(starts[1:], n) - 1
    twice = np.empty(n, dtype=dtype)
    twice[order] = np.repeat((starts + ends).astype(dtype), ends - starts + 1)
    return twice


def spearman_matrix(orders: Sequence[MethodOrder]) -> np.ndarray:
    """Spearman rank correlation (average ranks for ties) between every pair of methods:
    the Pearson correlation of their tie-averaged ranks. NaN for a method whose scores
    are all tied."""
    m = len(orders)
    n = len(orders[0].twice_rank) if m else 0
    mean = float(n - 1)  # the mean of twice the average ranks, whatever the ties
    gram = np.zeros((m, m))
    for lo in range(0, n, CHUNK):
        centred = np.stack([o.twice_rank[lo:lo + CHUNK].astype(np.float64) - mean for o in orders])
        gram += centred @ centred.T
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = gram / np.outer(norms, norms)
    return np.clip(corr, -1.0, 1.0)


def overlap_matrix(orders: Sequence[MethodOrder], keep: int) -> np.ndarray:
    """|kept_a & kept_b| / keep for every pair of methods at one budget."""
    kept = [o.kept(keep) for o in orders]
    m = len(kept)
    shared = np.zeros((m, m))
    for a in range(m):
        for b in range(a, m):
            shared[a, b] = shared[b, a] = np.count_nonzero(kept[a] & kept[b]) / keep
    return shared


def class_kept_fractions(order: MethodOrder, keep: int, labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per class label, the fraction of its samples kept (NaN for a label with none)."""
    kept = np.bincount(labels[order.side(keep).order[:keep]], minlength=len(sizes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, kept / np.maximum(sizes, 1), np.nan)


def hardest_hit(fractions: np.ndarray, count: int, fraction: float) -> np.ndarray:
    """The labels of at most `count` classes kept below `fraction` (under-kept), lowest kept
    fraction first (ties: lower label; labels with no sample left out)."""
    candidates = np.flatnonzero(~np.isnan(fractions))
    candidates = candidates[fractions[candidates] < fraction]
    return candidates[np.argsort(fractions[candidates], kind="stable")[:count]]


def flipped_kept_share(order: MethodOrder, keep: int, flipped: np.ndarray) -> float:
    """The share of the flipped (relabelled) samples that the method keeps at `keep`."""
    return float(np.count_nonzero(order.kept(keep)[flipped])) / len(flipped) if len(flipped) else float("nan")


@dataclass
class EpochCurves:
    """p(true label) over epochs: the mean per score decile of each method (NaN where no
    sample of the decile was seen), and the values of a few sampled images."""

    decile_mean: Dict[str, np.ndarray]  # method -> (DECILES, K)
    sampled: np.ndarray  # (len(sample), K), NaN where unseen


def epoch_curves(orders: Dict[str, MethodOrder], num_epochs: int, load_prob: Callable[[int], np.ndarray],
                 sample: np.ndarray) -> EpochCurves:
    """One pass over the epochs' probability files (each read once, one held at a time)."""
    deciles = {name: o.deciles() for name, o in orders.items()}
    means = {name: np.full((DECILES, num_epochs), np.nan) for name in orders}
    sampled = np.full((len(sample), num_epochs), np.nan)
    for epoch in range(num_epochs):
        prob = load_prob(epoch)
        seen = prob == prob  # False at NaN
        weights = np.where(seen, prob, 0.0)
        counts_weight = seen.astype(np.float64)
        for name, dec in deciles.items():
            total = np.bincount(dec, weights=weights, minlength=DECILES)
            count = np.bincount(dec, weights=counts_weight, minlength=DECILES)
            np.divide(total, count, out=means[name][:, epoch], where=count > 0)
        sampled[:, epoch] = prob[sample]
    return EpochCurves(means, sampled)


def sample_sides(order: MethodOrder, keep: int, per_side: int, rng: np.random.Generator) -> List[np.ndarray]:
    """`per_side` samples drawn uniformly from the kept side and from the pruned side
    (fewer if a side is smaller), each ascending."""
    ranked = order.side(keep).order
    sides = (ranked[:keep], ranked[keep:])
    return [np.sort(rng.choice(side, size=min(per_side, len(side)), replace=False)) for side in sides]


def extremes(order: MethodOrder, count: int) -> List[np.ndarray]:
    """The `count` highest-scored samples (highest first) and the `count` lowest-scored
    ones with a score (lowest first)."""
    scored = order.order[~np.isnan(order.scores[order.order])]
    return [scored[:count], scored[::-1][:count]]
