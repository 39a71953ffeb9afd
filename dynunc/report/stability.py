"""Coreset stability against epochs on the page's own settings: after each recorded epoch
from which a dynamic-uncertainty score exists, the coreset the page selects (its
--window, --include-last-window, --epochs and --seed, at each of its fractions) from the
epochs so far, against the one from the epoch before: the share of kept images both
keep, and the Spearman coefficient of the two score vectors.

The produce run logs the same quantities while it trains (dynunc/training/stability.py),
but at PRODUCE.TRACK_WINDOW and PRODUCE.TRACK_FRACTIONS, which need not be what the page
selects with (the demo tracks window 10 and selects with --window 4). This is fed the
probability files during the report's second pass over the history (the curves pass),
so it reads nothing more: per epoch one ranking of N scores (MethodOrder, the page's tie
rule), O(N x J) state for the window and O(N) for the earlier epoch's ranking.
"""
from typing import Dict, List, Optional

import numpy as np

from dynunc.report.stats import MethodOrder
from dynunc.uncertainty import WindowScores


class PageStability:
    """Fed each recorded epoch's p(true label) in order (`feed`); `series()` gives the
    overlap per fraction and the Spearman coefficient for every epoch that has a score
    and an earlier one to compare with."""

    def __init__(self, num_samples: int, window: int, include_last: bool, epochs: Optional[range],
                 keeps: Dict[str, int], seed: int):
        self.window, self.include_last, self.epochs = window, include_last, epochs
        self.keeps, self.seed = dict(keeps), seed
        self.stream = WindowScores(num_samples, window)
        self.earlier: Optional[tuple] = None  # (epoch, twice ranks, {fraction: kept mask})
        self.rows: List[dict] = []

    def close(self) -> None:
        self.stream.close()

    def feed(self, epoch: int, prob: np.ndarray) -> np.ndarray:
        """Count one epoch (epochs outside --epochs are passed over); returns `prob`, so
        that it can wrap the curves pass's loader."""
        if self.epochs is not None and epoch not in self.epochs:
            return prob
        self.stream.push(prob)
        if self.stream.count(self.include_last) == 0:
            return prob
        order = MethodOrder.of(self.stream.scores(self.include_last), self.seed)
        kept = {f: order.kept(keep) for f, keep in self.keeps.items()}
        ranks = order.twice_rank.astype(np.float64)
        if self.earlier is not None:
            then, then_ranks, then_kept = self.earlier
            self.rows.append({"epoch": epoch, "vs_epoch": then,
                              "overlap": {f: int(np.count_nonzero(kept[f] & then_kept[f])) / keep
                                          for f, keep in self.keeps.items()},
                              "spearman": _pearson(ranks, then_ranks)})
        self.earlier = (epoch, ranks, kept)
        return prob

    def series(self, stopped_after: Optional[int] = None) -> Optional[dict]:
        """The figure's series (dynunc/report/cost.py's layout, plus the window), None
        when no epoch had an earlier score to compare with."""
        if not self.rows:
            return None
        return {"window": self.window, "epochs": [r["epoch"] for r in self.rows],
                "vs_epochs": [r["vs_epoch"] for r in self.rows],
                "overlap": {f: [r["overlap"][f] for r in self.rows] for f in self.keeps},
                "spearman": [r["spearman"] for r in self.rows], "stopped_after": stopped_after}


def _pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Pearson's coefficient of two rank vectors (Spearman's of the scores); None when one
    is constant (every score tied)."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else None
