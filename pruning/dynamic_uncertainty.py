"""Dynamic-uncertainty scores (paper section 3, REFERENCE.md section 2) and coreset selection.

For every sample, a buffer holds its last J observed probabilities of the true label
(zeros until J have been observed; an epoch in which the sample was not seen leaves its
buffer unchanged). After each epoch k with J-1 <= k < K-1, the window score
``10 * std(buffer, ddof=1)`` is taken; a sample's score is the mean of its K-J window
scores. The window that ends at the last epoch is NOT used by default: that is what the
paper's code does, and coresets must match it. ``include_last=True`` adds it (K-J+1
windows).

The computation streams the epochs: memory is O(N x J) (the buffer, one float64 per
sample for the running sum, and one epoch's probabilities), never O(N x K). Rows are
processed in chunks so that numpy's temporaries stay small. Each window score is
``np.std`` on the buffer rows, bit-for-bit what ``np.std`` gives on the whole (N, J)
buffer, and window scores are summed in epoch order then divided by their number,
which is what ``np.mean`` over the stacked windows does.

Selection keeps the ``int(N * fraction)`` highest scores; ties go to the lower index
(the paper's ``np.argsort`` leaves ties in no defined order).
"""
from typing import Iterable, Optional

import numpy as np

# Rows per chunk: 64K rows x J float64 keeps each temporary at a few MB.
DEFAULT_CHUNK_ROWS = 1 << 16


def num_windows(num_epochs: int, window: int, include_last: bool = False) -> int:
    """How many windows a history of `num_epochs` epochs gives (K-J, or K-J+1)."""
    return max(0, num_epochs - window + (1 if include_last else 0))


def max_window(num_epochs: int, include_last: bool = False) -> int:
    """The largest window that still gives at least one window score."""
    return num_epochs if include_last else num_epochs - 1


def dynamic_uncertainty_scores(
    prob_arrays: Iterable[np.ndarray],
    num_samples: int,
    window: int,
    include_last: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """Score `num_samples` samples from their per-epoch probabilities.

    `prob_arrays` yields one 1-D array per epoch, in epoch order, of length `num_samples`,
    with NaN where the sample was not seen that epoch (it may be a generator that reads
    files one at a time; only one is held at once). Returns float64 scores, one per
    sample. ValueError if `window` < 2, if an array has the wrong shape, or if the
    history is too short to give a single window.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 (std with ddof=1 of a single value is undefined), got {window}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n = int(num_samples)
    buffer = np.zeros((n, window), dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)  # running sum of the window scores
    windows = 0
    # The window ending at epoch k is scored when epoch k+1 arrives (then k is known
    # not to be the last epoch), just before the buffer is shifted; the last one is
    # scored after the loop only with include_last. This keeps the pass single and
    # the input a plain stream whose length need not be known in advance.
    pending = False
    epochs = 0
    for k, prob in enumerate(prob_arrays):
        prob = np.asarray(prob)
        if prob.shape != (n,):
            raise ValueError(f"epoch {k}: expected {n} values, got shape {prob.shape}")
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            rows = buffer[lo:hi]
            if pending:
                total[lo:hi] += 10.0 * np.std(rows, axis=1, ddof=1)
            p = prob[lo:hi]
            seen = ~np.isnan(p)
            if seen.all():
                rows[:, :-1] = rows[:, 1:]
                rows[:, -1] = p
            elif seen.any():
                idx = np.flatnonzero(seen)
                rows[idx, :-1] = rows[idx, 1:]
                rows[idx, -1] = p[idx]
        if pending:
            windows += 1
        pending = k >= window - 1
        epochs = k + 1
    if include_last and pending:
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            total[lo:hi] += 10.0 * np.std(buffer[lo:hi], axis=1, ddof=1)
        windows += 1
    if windows == 0:
        raise ValueError(
            f"{epochs} epochs give no window of {window} "
            f"(need window <= {max_window(epochs, include_last)}"
            f"{'' if include_last else '; the window ending at the last epoch is not used'})"
        )
    return total / windows


def check_fraction(num_samples: int, fraction: float) -> int:
    """The number of samples to keep, int(N * fraction). ValueError if fraction is not
    in (0, 1] or if that number is 0 (the paper's code then keeps everything)."""
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = int(num_samples * fraction)
    if keep == 0:
        raise ValueError(
            f"fraction {fraction} of {num_samples} samples keeps int({num_samples} * {fraction}) = 0 samples"
        )
    return keep


def select_coreset(scores: np.ndarray, fraction: float, keep: Optional[int] = None) -> np.ndarray:
    """Indices (ascending) of the int(N * fraction) highest scores; ties: lower index wins.

    `keep` overrides the count (then `fraction` is ignored).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if keep is None:
        keep = check_fraction(len(scores), fraction)
    if not (1 <= keep <= len(scores)):
        raise ValueError(f"keep must be in [1, {len(scores)}], got {keep}")
    # A stable sort of the negated scores puts higher scores first and keeps equal
    # scores in index order. NaN (impossible from finite histories) sorts last.
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])
