"""Coreset stability while producing (issue 18): has the produce run done its job?

After each epoch from which a dynamic-uncertainty score exists, rank 0 compares the
coreset that get_coreset.py would select from the epochs recorded so far with the one
from PRODUCE.TRACK_DELTA epochs earlier: for each fraction of PRODUCE.TRACK_FRACTIONS,
the share of the kept set that both keep (`stability_overlap_{fraction}`), and the
Spearman correlation of the two score vectors (`stability_spearman`). "The coreset from
the epochs so far" is exactly get_coreset.py's on the history truncated to those
epochs: the same streamed arithmetic (dynunc.uncertainty.WindowScores, the window
ending at the last epoch left out), the same int(N * fraction) and the same tie rule
(dynunc.ranking.top with get_coreset's default --seed 0).

State: the ring buffer and window sum of WindowScores (O(N x J)), plus, for each of the
last TRACK_DELTA epochs, the score ranks (8N bytes) and one kept mask per fraction (N
bytes each): never O(N x K).

PRODUCE.STOP_WHEN_STABLE ends the produce run once the overlap at its FRACTION has stayed
>= OVERLAP for PATIENCE consecutive epochs (StopWhenStable).
"""
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dynunc.history import OVERLAP_KEY, SPEARMAN_KEY, VS_EPOCH_KEY
from dynunc.uncertainty import WindowScores, check_fraction
from dynunc.ranking import tie_group_starts, top

TIE_SEED = 0  # get_coreset.py's default --seed: the tie rule of the coreset the user will select


def fraction_label(fraction: float) -> str:
    """A fraction as its metrics key writes it: 0.5 -> '0.5', 0.75 -> '0.75'."""
    return f"{float(fraction):g}"


def overlap_key(fraction: float) -> str:
    return OVERLAP_KEY.format(fraction=fraction_label(fraction))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of `values` (float64), equal values sharing the mean of their ranks
    (what Spearman's coefficient ranks by); NaN ranks after every number, as one group."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    starts = tie_group_starts(values[order])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)  # 0-based position where each group starts
    last = np.append(first[1:], len(values)) - 1
    mean_rank = (first + last) / 2.0 + 1.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two float64 vectors (NaN if either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return pearson(average_ranks(a), average_ranks(b))


def effective_window(window: int, epochs: int) -> int:
    """The tracking window: PRODUCE.TRACK_WINDOW, shortened to EPOCHS - 1 (the largest
    window get_coreset accepts on the finished history) where the run is shorter; below
    2, no dynamic-uncertainty score exists and nothing is tracked (0)."""
    window = min(window, epochs - 1)
    return window if window >= 2 else 0


class StabilityTracker:
    """Fed each epoch's p(true label) (float32, NaN = unseen, as written to prob_{epoch}.npy),
    in epoch order from epoch 0; `push` returns that epoch's stability metrics, or {}
    where there is no score yet or no earlier score TRACK_DELTA epochs back."""

    def __init__(self, num_samples: int, window: int, fractions: Sequence[float], delta: int = 1,
                 threads: Optional[int] = None):
        if delta < 1:
            raise ValueError(f"PRODUCE.TRACK_DELTA must be >= 1, got {delta}")
        self.num_samples, self.window, self.delta = int(num_samples), window, delta
        self.keeps = {float(f): check_fraction(self.num_samples, float(f)) for f in fractions}
        self.stream = WindowScores(self.num_samples, window, threads=threads)
        # (epoch, ranks, {fraction: kept mask}) of the last `delta` epochs that had scores
        self.earlier: Deque[Tuple[int, np.ndarray, Dict[float, np.ndarray]]] = deque(maxlen=delta)
        self.epoch = -1

    def close(self) -> None:
        self.stream.close()

    def scores(self) -> np.ndarray:
        """The dynamic-uncertainty scores of the epochs fed so far (ValueError if none yet)."""
        return self.stream.scores()

    def kept(self, scores: np.ndarray) -> Dict[float, np.ndarray]:
        """{fraction: boolean mask of the lines get_coreset.py keeps} for `scores`."""
        masks = {}
        for fraction, keep in self.keeps.items():
            mask = np.zeros(self.num_samples, dtype=bool)
            mask[top(scores, keep, TIE_SEED)] = True
            masks[fraction] = mask
        return masks

    def push(self, epoch: int, prob: np.ndarray) -> Dict[str, float]:
        if epoch != self.epoch + 1:
            raise ValueError(f"stability tracking: epoch {epoch} fed after epoch {self.epoch}")
        self.epoch = epoch
        self.stream.push(prob)
        if self.stream.count() == 0:
            return {}
        scores = self.stream.scores()
        ranks = average_ranks(scores)
        kept = self.kept(scores)
        metrics: Dict[str, float] = {}
        if len(self.earlier) == self.delta:
            then, then_ranks, then_kept = self.earlier[0]
            metrics[VS_EPOCH_KEY] = then
            for fraction, keep in self.keeps.items():
                metrics[overlap_key(fraction)] = int(np.count_nonzero(kept[fraction] & then_kept[fraction])) / keep
            metrics[SPEARMAN_KEY] = pearson(ranks, then_ranks)
        self.earlier.append((epoch, ranks, kept))
        return metrics

    def replay(self, probs: Iterable[np.ndarray]) -> None:
        """Feed the recorded epochs 0.. of a resumed run (their metrics are already logged)."""
        for epoch, prob in enumerate(probs):
            self.push(epoch, prob)


def describe(metrics: Mapping[str, float], fractions: Sequence[float]) -> str:
    """One log line's worth: 'against epoch 4: overlap 0.93 at 0.5, 0.95 at 0.75; Spearman 0.981'."""
    overlaps = ", ".join(f"{metrics[overlap_key(f)]:.4f} at {fraction_label(f)}" for f in fractions)
    return f"against epoch {metrics[VS_EPOCH_KEY]}: kept-set overlap {overlaps}; Spearman {metrics[SPEARMAN_KEY]:.4f}"


@dataclass
class StopWhenStable:
    """PRODUCE.STOP_WHEN_STABLE: stop once the tracked overlap at `fraction` has stayed
    >= `overlap` for `patience` consecutive epochs (an epoch without the key breaks the
    streak)."""

    overlap: float
    patience: int
    fraction: float
    streak: int = 0

    @property
    def key(self) -> str:
        return overlap_key(self.fraction)

    def update(self, record: Mapping[str, object]) -> bool:
        """Count one epoch's metrics record; True when the run should stop after it."""
        value = record.get(self.key)
        self.streak = self.streak + 1 if value is not None and value >= self.overlap else 0
        return self.streak >= self.patience

    def replay(self, records: Iterable[Mapping[str, object]]) -> None:
        """Rebuild the streak from the metrics records of the epochs a resumed run keeps."""
        for record in records:
            self.update(record)


def check_config(produce) -> List[str]:
    """Problems in the PRODUCE section of the config (a CfgNode), each naming its key."""
    problems = []
    for f in produce.TRACK_FRACTIONS:
        if not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            problems.append(f"PRODUCE.TRACK_FRACTIONS: {f!r} is not a fraction in (0, 1]")
    if len(set(map(float, (f for f in produce.TRACK_FRACTIONS if isinstance(f, (int, float)))))) != len(
            produce.TRACK_FRACTIONS):
        problems.append(f"PRODUCE.TRACK_FRACTIONS: a fraction is given twice in {list(produce.TRACK_FRACTIONS)}")
    if produce.TRACK_DELTA < 1:
        problems.append(f"PRODUCE.TRACK_DELTA must be >= 1, got {produce.TRACK_DELTA}")
    if produce.TRACK_WINDOW < 2:
        problems.append(f"PRODUCE.TRACK_WINDOW must be >= 2, got {produce.TRACK_WINDOW}")
    stop = produce.STOP_WHEN_STABLE
    if stop.ENABLE:
        if not 0.0 < stop.OVERLAP <= 1.0:
            problems.append(f"PRODUCE.STOP_WHEN_STABLE.OVERLAP must be in (0, 1], got {stop.OVERLAP}")
        if stop.PATIENCE < 1:
            problems.append(f"PRODUCE.STOP_WHEN_STABLE.PATIENCE must be >= 1, got {stop.PATIENCE}")
        if float(stop.FRACTION) not in [float(f) for f in produce.TRACK_FRACTIONS
                                        if isinstance(f, (int, float))]:
            problems.append(f"PRODUCE.STOP_WHEN_STABLE.FRACTION {stop.FRACTION} is not one of "
                            f"PRODUCE.TRACK_FRACTIONS {list(produce.TRACK_FRACTIONS)}")
    return problems


def earliest_stop(produce, epochs: int) -> Optional[int]:
    """The first epoch after which PRODUCE.STOP_WHEN_STABLE can stop a run of `epochs`
    epochs (0-based), or None where nothing is tracked: the first score comes after epoch
    J (the window, cut as effective_window cuts it), the first comparison TRACK_DELTA
    epochs later, and the rule needs PATIENCE comparisons in a row."""
    window = effective_window(produce.TRACK_WINDOW, epochs)
    if not window or not produce.TRACK_FRACTIONS:
        return None
    return window + produce.TRACK_DELTA + produce.STOP_WHEN_STABLE.PATIENCE - 1


def check_stop_fits(config) -> List[str]:
    """PRODUCE.STOP_WHEN_STABLE that cannot stop before the last of TRAIN.EPOCHS (so that it
    would save nothing): one problem naming the numbers and the ways out."""
    produce, epochs = config.PRODUCE, config.TRAIN.EPOCHS
    stop = produce.STOP_WHEN_STABLE
    if not stop.ENABLE or stop.PATIENCE < 1 or produce.TRACK_DELTA < 1 or produce.TRACK_WINDOW < 2:
        return []  # off, or refused by check_config already
    first = earliest_stop(produce, epochs)
    if first is not None and first < epochs - 1:
        return []
    steps = produce.TRACK_DELTA + stop.PATIENCE
    window = epochs - 1 - steps  # the largest window that lets it stop after epoch EPOCHS - 2
    fixes = [f"PRODUCE.TRACK_WINDOW {window} (and get_coreset.py --window {window})"] if window >= 2 else []
    fixes.append(f"TRAIN.EPOCHS {max(produce.TRACK_WINDOW, 2) + steps + 1} or more")
    if first is None:
        return [f"PRODUCE.STOP_WHEN_STABLE cannot stop this run: with TRAIN.EPOCHS {epochs} and "
                f"PRODUCE.TRACK_FRACTIONS {list(produce.TRACK_FRACTIONS)} no stability is tracked; set "
                + " or ".join(fixes[-1:])]
    return [f"PRODUCE.STOP_WHEN_STABLE cannot stop this run before its last epoch: the window "
            f"{effective_window(produce.TRACK_WINDOW, epochs)} (PRODUCE.TRACK_WINDOW {produce.TRACK_WINDOW}), "
            f"TRACK_DELTA {produce.TRACK_DELTA} and PATIENCE {stop.PATIENCE} allow a stop after epoch {first} at the "
            f"earliest, and TRAIN.EPOCHS {epochs} ends after epoch {epochs - 1}; set " + ", or ".join(fixes)
            + ", or a lower PATIENCE"]
