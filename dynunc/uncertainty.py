"""Dynamic-uncertainty scores (paper section 3; docs/semantics.md §3) and coreset selection.

For every sample, a buffer holds its last J observed probabilities of the true label
(zeros until J have been observed; an epoch in which the sample was not seen leaves its
buffer unchanged). After each epoch k with J-1 <= k < K-1, the window score
``10 * std(buffer, ddof=1)`` is taken; a sample's score is the mean of its K-J window
scores. The window that ends at the last epoch is NOT used by default: that is what the
paper's code does, and coresets must match it. ``include_last=True`` adds it (K-J+1
windows).

The computation streams the epochs: memory is O(N x J), never O(N x K). The buffer is
a ring of J rows of N values (row ``k % J`` is overwritten in epoch k), in float32 when
the history is float32 (what produce mode writes: exact, and half the memory), so an
epoch moves one row instead of shifting J columns. A sample unseen in epoch k has its
J values rotated by one slot instead, which keeps its window and puts its oldest value
where epoch k+1 writes. Samples are processed in chunks of columns small enough for
the CPU cache, by a few threads (numpy releases the GIL), while the next epoch is read.

Each window score is computed directly from the J values (no running sums, so no
cancellation: a constant window scores exactly 0), with the same operations in the
same order as ``np.std(buffer, axis=1, ddof=1)`` on the buffer in oldest-to-newest
order, including numpy's pairwise summation; window scores are summed in epoch order
then divided by their number, as ``np.mean`` over the stacked windows does. With
numpy 2.4 on x86-64 the scores are bit-for-bit those of the previous implementation
(a float64 buffer shifted by one column per epoch, ``np.std`` per chunk of rows; kept in
tests/test_get_coreset.py, which requires agreement to 1e-12 relative, and compared
bit for bit by ``benchmarks/bench_get_coreset.py --baseline``).

Selection keeps the ``int(N * fraction)`` highest scores; ties at the cut are drawn at
random from a seed (the paper's ``np.argsort`` leaves ties in no defined order; with
float64 scores they are rare, so the paper's coresets are reproduced exactly).
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional, Sequence

import numpy as np

from dynunc.ranking import top

# Columns (samples) per chunk: the float64 working copy of a chunk (J x 32768 x 8
# bytes, 2.5 MiB for J = 10) stays in the L3 cache while each of the ~50 numpy calls per
# chunk covers enough elements to hide its call overhead and its hold on the GIL
# (smaller chunks were slower: docs/benchmarks.md, "Figures behind code choices").
DEFAULT_CHUNK_ROWS = 1 << 15
# numpy's pairwise summation switches to recursive halving above this many terms.
_PAIRWISE_BLOCK = 128


def max_window(num_epochs: int, include_last: bool = False) -> int:
    """The largest window that still gives at least one window score."""
    return num_epochs if include_last else num_epochs - 1


def default_threads() -> int:
    """The CPU cores this process may use (at most 8: the work is memory-bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _pairwise_sum(rows: Sequence[np.ndarray], out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Sum the 1-D arrays `rows` elementwise into `out`, adding in the order that
    numpy's pairwise summation adds the terms of one reduction (``np.add.reduce`` over
    a contiguous axis), so that the result is bit-for-bit that reduction's.

    `scratch` holds 8 arrays shaped like `out`; `rows` are not modified.
    """
    n = len(rows)
    if n < 8:
        np.copyto(out, rows[0])  # numpy starts from 0.0, and 0.0 + x == x here (x >= 0)
        for row in rows[1:]:
            np.add(out, row, out=out)
        return out
    if n <= _PAIRWISE_BLOCK:
        # Eight partial sums over strides of 8, combined as ((0+1)+(2+3))+((4+5)+(6+7)),
        # then the remainder added one by one.
        whole = n - n % 8
        if whole > 8:
            partial = scratch
            for j in range(8):
                np.add(rows[j], rows[8 + j], out=partial[j])
            for i in range(16, whole, 8):
                for j in range(8):
                    np.add(partial[j], rows[i + j], out=partial[j])
            for j in (0, 2, 4, 6):
                np.add(partial[j], partial[j + 1], out=partial[j])
            np.add(partial[0], partial[2], out=partial[0])
            np.add(partial[4], partial[6], out=partial[4])
            np.add(partial[0], partial[4], out=out)
        else:
            left, right, spare = scratch[0], scratch[1], scratch[2]
            np.add(rows[0], rows[1], out=left)
            np.add(rows[2], rows[3], out=right)
            np.add(left, right, out=left)
            np.add(rows[4], rows[5], out=right)
            np.add(rows[6], rows[7], out=spare)
            np.add(right, spare, out=right)
            np.add(left, right, out=out)
        for row in rows[whole:]:
            np.add(out, row, out=out)
        return out
    half = n // 2
    half -= half % 8
    second = _pairwise_sum(rows[half:], np.empty_like(out), scratch)
    _pairwise_sum(rows[:half], out, scratch)
    return np.add(out, second, out=out)


class _Chunker:
    """The per-epoch work on columns [lo, hi) of the ring buffer, with its own scratch."""

    def __init__(self, buffer: np.ndarray, total: np.ndarray, lo: int, hi: int, chunk_rows: int):
        self.buffer, self.total, self.lo, self.hi, self.chunk_rows = buffer, total, lo, hi, chunk_rows
        window = buffer.shape[0]
        width = min(chunk_rows, max(hi - lo, 1))
        self.values = np.empty((window, width), dtype=np.float64)
        self.mean = np.empty(width, dtype=np.float64)
        self.spread = np.empty(width, dtype=np.float64)
        self.scratch = np.empty((8, width), dtype=np.float64)

    def run(self, oldest: int, score: bool, prob: Optional[np.ndarray]) -> None:
        """Score the current windows (if `score`), then write `prob` into ring row
        `oldest` (if given); `oldest` is the row holding every sample's oldest value."""
        for lo in range(self.lo, self.hi, self.chunk_rows):
            hi = min(lo + self.chunk_rows, self.hi)
            if score:
                self._score(lo, hi, oldest)
            if prob is not None:
                self._write(lo, hi, oldest, prob[lo:hi])

    def _score(self, lo: int, hi: int, oldest: int) -> None:
        window = self.buffer.shape[0]
        width = hi - lo
        values = self.values[:, :width]
        # Oldest to newest, as the shifted buffer of the paper's code holds them.
        np.copyto(values[: window - oldest], self.buffer[oldest:, lo:hi])
        np.copyto(values[window - oldest:], self.buffer[:oldest, lo:hi])
        rows = list(values)
        # np.std(ddof=1): mean = sum / J; sum((x - mean)^2) / (J - 1); sqrt.
        scratch = self.scratch[:, :width]
        mean = _pairwise_sum(rows, self.mean[:width], scratch)
        np.true_divide(mean, window, out=mean)
        np.subtract(values, mean, out=values)
        np.multiply(values, values, out=values)
        spread = _pairwise_sum(rows, self.spread[:width], scratch)
        np.true_divide(spread, window - 1, out=spread)
        np.sqrt(spread, out=spread)
        np.multiply(spread, 10.0, out=spread)
        total = self.total[lo:hi]
        np.add(total, spread, out=total)

    def _write(self, lo: int, hi: int, oldest: int, prob: np.ndarray) -> None:
        unseen = np.isnan(prob)
        cols = np.flatnonzero(unseen) + lo if unseen.any() else None
        if cols is not None:
            # Unseen: keep the window, rotated so that its oldest value moves to the
            # row the next epoch overwrites (oldest + 1).
            kept = np.roll(self.buffer[:, cols], 1, axis=0)
        self.buffer[oldest, lo:hi] = prob
        if cols is not None:
            self.buffer[:, cols] = kept


def _buffer_dtype(prob: np.ndarray) -> type:
    """float32 if every value of `prob` is exactly a float32 (NaN included), else float64."""
    if prob.dtype == np.float32 or prob.dtype == np.float16:
        return np.float32
    return np.float32 if np.array_equal(prob.astype(np.float32), prob, equal_nan=True) else np.float64


class WindowScores:
    """The streamed computation behind dynamic_uncertainty_scores: fed one epoch's
    probabilities at a time (`push`), it holds the ring buffer of the last J values per
    sample and the running sum of window scores, and can give at any point the scores
    of the epochs fed so far (`scores`), bit for bit what dynamic_uncertainty_scores
    returns on that prefix of the history. Memory O(N x J); `threads` split the samples
    (a pool owned by the object: use it as a context manager or call `close`).

    The window ending at epoch k is scored when epoch k+1 arrives (then k is known not
    to be the last epoch), just before the buffer is updated; the one ending at the last
    epoch fed is scored only by `scores(include_last=True)`, on a copy of the sum.
    """

    def __init__(self, num_samples: int, window: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 threads: Optional[int] = None):
        if window < 2:
            raise ValueError(f"window must be >= 2 (std with ddof=1 of a single value is undefined), got {window}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        threads = default_threads() if threads is None else int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.num_samples, self.window, self.chunk_rows = int(num_samples), window, chunk_rows
        self.total = np.zeros(self.num_samples, dtype=np.float64)  # running sum of the window scores
        self.buffer: Optional[np.ndarray] = None  # (window, n) ring, allocated with the first epoch
        self.bounds = np.linspace(0, self.num_samples, threads + 1).astype(np.int64)
        self.workers: List[_Chunker] = []
        self.windows = 0  # window scores summed into total
        self.epochs = 0  # epochs fed
        self.pending = False  # a window ends at the last epoch fed
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __enter__(self) -> "WindowScores":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown()

    def _run_all(self, oldest: int, score: bool, prob: Optional[np.ndarray], total: np.ndarray) -> List:
        if total is not self.total:
            workers = [_Chunker(self.buffer, total, w.lo, w.hi, self.chunk_rows) for w in self.workers]
        else:
            workers = self.workers
        return [self.pool.submit(w.run, oldest, score, prob) for w in workers]

    def begin(self, prob: np.ndarray) -> List:
        """Start feeding the next epoch (1-D, NaN = unseen); `end` with what it returns
        once the caller has done whatever it overlaps with (e.g. reading the next file)."""
        k = self.epochs
        prob = np.asarray(prob)
        if prob.shape != (self.num_samples,):
            raise ValueError(f"epoch {k}: expected {self.num_samples} values, got shape {prob.shape}")
        dtype = _buffer_dtype(prob)
        if self.buffer is None or self.buffer.dtype.itemsize < np.dtype(dtype).itemsize:
            self.buffer = (np.zeros((self.window, self.num_samples), dtype=dtype) if self.buffer is None
                           else self.buffer.astype(dtype))
            self.workers = [_Chunker(self.buffer, self.total, int(lo), int(hi), self.chunk_rows)
                            for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]
        return self._run_all(k % self.window, self.pending, prob, self.total)

    def end(self, jobs: List) -> None:
        for job in jobs:
            job.result()
        if self.pending:
            self.windows += 1
        self.pending = self.epochs >= self.window - 1
        self.epochs += 1

    def push(self, prob: np.ndarray) -> None:
        """Feed the next epoch."""
        self.end(self.begin(prob))

    def count(self, include_last: bool = False) -> int:
        """The number of window scores that `scores(include_last)` would average."""
        return self.windows + (1 if include_last and self.pending else 0)

    def scores(self, include_last: bool = False) -> np.ndarray:
        """Float64 scores of the epochs fed so far. ValueError if they give no window."""
        if self.count(include_last) == 0:
            raise ValueError(
                f"{self.epochs} epochs give no window of {self.window} "
                f"(need window <= {max_window(self.epochs, include_last)}"
                f"{'' if include_last else '; the window ending at the last epoch is not used'})"
            )
        if include_last and self.pending:
            total = self.total.copy()
            for job in self._run_all(self.epochs % self.window, True, None, total):
                job.result()
            return total / (self.windows + 1)
        return self.total / self.windows


def dynamic_uncertainty_scores(
    prob_arrays: Iterable[np.ndarray],
    num_samples: int,
    window: int,
    include_last: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    threads: Optional[int] = None,
) -> np.ndarray:
    """Score `num_samples` samples from their per-epoch probabilities.

    `prob_arrays` yields one 1-D array per epoch, in epoch order, of length `num_samples`,
    with NaN where the sample was not seen that epoch (it may be a generator that reads
    files one at a time; at most two are held at once: the one being scored and the
    next, read meanwhile). Returns float64 scores, one per sample. `threads` (default:
    the usable cores, see default_threads) split the samples. ValueError if `window`
    < 2, if an array has the wrong shape, or if the history is too short to give a
    single window.
    """
    with WindowScores(num_samples, window, chunk_rows, threads) as stream:
        # The stream's length need not be known in advance: a single pass.
        source = iter(prob_arrays)
        prob = next(source, None)
        while prob is not None:
            jobs = stream.begin(prob)
            try:
                following = next(source, None)  # read while the workers compute
            finally:
                stream.end(jobs)
            prob = following
        return stream.scores(include_last)


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


def select_coreset(scores: np.ndarray, fraction: float, keep: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Indices (ascending) of the int(N * fraction) highest scores; ties at the cut are
    drawn at random from `seed` (select.py).

    `keep` overrides the count (then `fraction` is ignored).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if keep is None:
        keep = check_fraction(len(scores), fraction)
    if not (1 <= keep <= len(scores)):
        raise ValueError(f"keep must be in [1, {len(scores)}], got {keep}")
    return top(scores, keep, seed)
