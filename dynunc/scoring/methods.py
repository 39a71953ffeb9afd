"""Pruning scores computed from one produce run's history: one accumulator per method,
registered by name in METHODS. Higher score = kept first.

Every method streams the epochs once: the driver (`score_history`) reads each epoch's
files once and hands them to every requested method, so several methods cost one pass
over the history, and each method holds O(N) state, never O(N x K). Unseen entries
(NaN, or -1 in correct_) are left out of every statistic; a sample with no seen epoch
in a statistic's range scores NaN, which ranks below every number (select.py).

A new method is one accumulator (a class with `update(epoch, records)` and `result()`)
and one row in METHODS; a flag of its own is a MethodFlag in that row (get_coreset.py
and report.py take it through dynunc/scoring/plan.py, which names no method).

A method of the embeddings (needs ("embed",): moderate, prototype, kcenter, d2) is a row
with `embed`, a function of (embeddings, labels, parameters, other methods' scores)
(dynunc/scoring/geometry.py), and `uses`, the methods whose scores it reads (d2's
--d2-score): those are scored in the same pass, and the embeddings are loaded once, by
the caller's `embedded()`, for every such method, after the pass.
"""
import sys
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dynunc.history import list_embed_epochs
from dynunc.uncertainty import default_threads, dynamic_uncertainty_scores, max_window
from dynunc.scoring.geometry import (D2_GAMMA_FORWARD, D2_GAMMA_REVERSE, D2_KNN, PROTOTYPE_KEEP, PROTOTYPE_RESTARTS,
                                      PROTOTYPE_SWITCH, check_gamma, d2_scores, kcenter_scores, moderate_scores,
                                      prototype_keeps_easiest, prototype_scores)

# Rows per chunk: an epoch's update runs chunk by chunk, chunks spread over threads
# (numpy releases the GIL), every accumulator on a chunk before the next, so that its
# float64 temporaries (2 MiB) stay in the cache and each record chunk is read once.
CHUNK_ROWS = 1 << 18


class ScoreParams:
    """The methods' parameters: `seed` (--seed) and their flags' values by MethodFlag.param,
    resolved against the history; one not given reads as None (score_history resolves it)."""

    def __init__(self, seed: int = 0, **values):
        self.__dict__.update(values, seed=seed)

    def __getattr__(self, name: str):  # only reached for a parameter not given
        return None if not name.startswith("__") else object.__getattribute__(self, name)

    def values(self) -> Dict[str, object]:
        return dict(self.__dict__)


def _chunks(n: int) -> List[slice]:
    return [slice(lo, min(lo + CHUNK_ROWS, n)) for lo in range(0, n, CHUNK_ROWS)]


class Accumulator:
    """Fed one epoch at a time (in epoch order) with that epoch's records, as 1-D arrays
    keyed by kind (history.py's RECORD_KINDS), one slice of rows per call
    (disjoint slices of one epoch may be fed from several threads at once); `result()`
    gives float64 scores."""

    def __init__(self, epochs: Optional[Sequence[int]] = None):
        self._epochs = None if epochs is None else frozenset(epochs)

    def wants(self, epoch: int) -> bool:
        return self._epochs is None or epoch in self._epochs

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        raise NotImplementedError


class SeenMean(Accumulator):
    """Mean of one record over the epochs in which the sample was seen (NaN if none),
    then `finish` (e.g. 1 - mean)."""

    def __init__(self, n: int, kind: str, epochs: Optional[Sequence[int]] = None,
                 finish: Callable[[np.ndarray], np.ndarray] = lambda mean: mean):
        super().__init__(epochs)
        self.kind, self.finish = kind, finish
        self.sum = np.zeros(n, dtype=np.float64)
        self.count = np.zeros(n, dtype=np.int32)

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        v = records[self.kind][rows]
        total, count = self.sum[rows], self.count[rows]
        unseen = np.isnan(v)
        if unseen.any():
            np.add(total, v, out=total, where=~unseen)
            np.add(count, ~unseen, out=count)
        else:  # the common case: every sample of the chunk seen
            np.add(total, v, out=total)
            count += 1

    def result(self) -> np.ndarray:
        mean = np.full(len(self.sum), np.nan)
        np.divide(self.sum, self.count, out=mean, where=self.count > 0)
        return self.finish(mean)


class FirstSeen(Accumulator):
    """One record's value in epoch `start`, or, for a sample not seen then, at its next
    seen epoch (NaN if never seen again): a checkpoint's score, as scoring the weights
    saved at `start` would give, with the few samples that epoch's sharding left out
    taken at their next presentation. Later epochs are read only while some sample
    still has no value."""

    def __init__(self, n: int, kind: str, start: int):
        super().__init__()
        self.kind, self.start = kind, start
        self.values = np.full(n, np.nan)

    def wants(self, epoch: int) -> bool:
        return epoch == self.start or (epoch > self.start and bool(np.isnan(self.values).any()))

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        values = self.values[rows]
        np.copyto(values, records[self.kind][rows], where=np.isnan(values))

    def result(self) -> np.ndarray:
        return self.values


class SeenStd(Accumulator):
    """Population standard deviation (ddof 0) of one record over the seen epochs, by
    Welford's update (no cancellation for near-constant values); NaN if never seen."""

    def __init__(self, n: int, kind: str):
        super().__init__()
        self.kind = kind
        self.count = np.zeros(n, dtype=np.int32)
        self.mean = np.zeros(n, dtype=np.float64)
        self.m2 = np.zeros(n, dtype=np.float64)

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        count, mean, m2 = self.count[rows], self.mean[rows], self.m2[rows]
        v = records[self.kind][rows].astype(np.float64)
        unseen = np.isnan(v)
        if unseen.any():
            # An unseen value is replaced by the running mean: its delta is 0, so its
            # mean and m2 are left exactly as they were.
            np.copyto(v, mean, where=unseen)
            np.add(count, ~unseen, out=count)
        else:
            count += 1
        delta = v - mean
        step = np.maximum(count, 1).astype(np.float64)  # never 0 (an unseen sample's delta is 0)
        np.divide(delta, step, out=step)
        mean += step
        np.subtract(v, mean, out=v)
        np.multiply(delta, v, out=v)
        m2 += v

    def result(self) -> np.ndarray:
        var = np.full(len(self.m2), np.nan)
        np.divide(self.m2, self.count, out=var, where=self.count > 0)
        return np.sqrt(var)


class ForgettingEvents(Accumulator):
    """Toneva et al.: the number of times a sample goes from correct to wrong between two
    consecutive *seen* presentations (an unseen epoch in between is skipped: correct,
    unseen, wrong is one event), as the authors' code counts over each sample's list of
    presentations; +inf for a sample never correct in a seen epoch (never learned: the
    hardest; their code ranks these above every forgetting count)."""

    def __init__(self, n: int):
        super().__init__()
        self.previous = np.full(n, -1, dtype=np.int8)
        self.events = np.zeros(n, dtype=np.int32)
        self.learned = np.zeros(n, dtype=bool)

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        c = records["correct"][rows]
        previous, learned = self.previous[rows], self.learned[rows]
        self.events[rows] += (previous == 1) & (c == 0)
        learned |= c == 1
        np.copyto(previous, c, where=c >= 0)  # an unseen epoch leaves the last seen value

    def result(self) -> np.ndarray:
        scores = self.events.astype(np.float64)
        scores[~self.learned] = np.inf
        return scores


class UniformRandom(Accumulator):
    """A uniform draw per sample from `seed`: the top k of i.i.d. draws are a uniform
    random subset of size k (also within each class)."""

    def __init__(self, n: int, seed: int):
        super().__init__(epochs=())  # reads no epoch
        self.n, self.seed = n, seed

    def update(self, epoch: int, records: Mapping[str, np.ndarray], rows: slice) -> None:
        pass

    def result(self) -> np.ndarray:
        return np.random.default_rng(self.seed).random(self.n)


def default_el2n_epoch(num_epochs: int) -> int:
    """The epoch whose EL2N is the default score: K // 10 (at least 1, at most K - 1),
    the weights after about 10% of training. Paul et al. score one checkpoint early in
    training (epoch 20 of 200) and average over independent runs; one run has one such
    checkpoint. Epoch 0 is left out: the network is untrained then."""
    return max(0, min(num_epochs - 1, max(1, num_epochs // 10)))


def parse_epoch_slice(text: str, num_epochs: int) -> range:
    """'START:STOP[:STEP]', a Python slice of the epochs 0..K-1 (negative values count
    from the end, an omitted bound is the start or end). ValueError if malformed, if a
    bound lies outside the recorded epochs, or if it selects no epoch."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--epochs {text!r}: expected START:STOP or START:STOP:STEP")
    try:
        start, stop, step = (int(p) if p.strip() else None for p in parts + [""] * (3 - len(parts)))
    except ValueError:
        raise ValueError(f"--epochs {text!r}: START, STOP and STEP must be integers") from None
    if step is not None and step < 1:
        raise ValueError(f"--epochs {text!r}: STEP must be >= 1")
    for name, bound, limit in (("START", start, num_epochs - 1), ("STOP", stop, num_epochs)):
        if bound is not None and not -num_epochs <= bound <= limit:
            raise ValueError(f"--epochs {text!r}: {name} {bound} is outside the {num_epochs} recorded epochs "
                             f"(0..{num_epochs - 1})")
    selected = range(num_epochs)[slice(start, stop, step)]
    if len(selected) == 0:
        raise ValueError(f"--epochs {text!r} selects no epoch of the {num_epochs} recorded")
    return selected


@dataclass(frozen=True)
class MethodFlag:
    """A flag that a method owns: get_coreset.py and report.py both take it (the scoring
    plan adds it to their parsers) and `resolve` turns what was given into the method's
    parameter once the history is known."""

    name: str  # "--window"
    param: str  # the ScoreParams name it sets
    help: str
    # (value as parsed, None/False if not given; every flag's value as parsed, by param;
    # K; the history folder) -> the parameter, or ValueError naming the flag.
    resolve: Callable[[object, Mapping[str, object], int, str], object]
    options: Mapping[str, object] = field(default_factory=dict)  # argparse's: type, action, metavar
    reads: str = "history"  # the folder `resolve` is given: "history", or "embeddings" (--embeddings, if given)


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    needs: Tuple[str, ...]  # record kinds it reads
    score: str  # what it computes, for --help and the README
    paper: str
    axis: str  # "NAME (UNIT, RANGE)": what the score measures; the report's axis label and image captions
    make: Optional[Callable[[int, ScoreParams, int], Accumulator]] = None  # (N, parameters, K)
    # A method scored by a function that pulls the probability arrays itself (dynunc).
    stream: Optional[Callable[[Iterable[np.ndarray], int, ScoreParams], np.ndarray]] = None
    flags: Tuple[MethodFlag, ...] = ()
    # The epochs whose records it may read, given its resolved parameters and K (None: all).
    epochs: Optional[Callable[[ScoreParams, int], Sequence[int]]] = None
    # A method scored from one epoch's embeddings (needs ("embed",)): (embeddings N x D,
    # labels, parameters, the scores of the methods `uses` names) -> scores. The plan
    # loads the embeddings once for every such method.
    embed: Optional[Callable[[np.ndarray, np.ndarray, ScoreParams, Mapping[str, np.ndarray]], np.ndarray]] = None
    # The other methods whose scores it reads, given its resolved parameters.
    uses: Callable[[ScoreParams], Sequence[str]] = lambda params: ()
    # Whether it reads the samples' class labels (the file list's), given its parameters:
    # a history without a file list cannot be scored by it then.
    labels: Callable[[ScoreParams], bool] = lambda params: False
    # (parameters, keep, N) -> whether the coreset of `keep` keeps the LOWEST scores (a
    # method whose kept side depends on the budget: prototype's Sorscher rule).
    keeps_lowest: Callable[[ScoreParams, int, int], bool] = lambda params, keep, n: False


PAPER_WINDOW = 10  # the window of the paper's experiments (J = 10)


def _epochs(value: Optional[str], given: Mapping[str, object], num_epochs: int, where: str) -> Optional[range]:
    """--epochs: the slice given (a range of the recorded epochs), None if not given."""
    return None if value is None else value if isinstance(value, range) else parse_epoch_slice(value, num_epochs)


def _dynunc_epochs(given: Mapping[str, object], num_epochs: int, where: str) -> Tuple[range, str, str]:
    """The epochs dynunc scores (all, or --epochs: consecutive ones), and two ways to name
    them: '{where} holds K epochs' and 'K epochs in {where}'."""
    chosen = _epochs(given.get("epochs"), given, num_epochs, where)
    if chosen is None:
        return range(num_epochs), f"{where} holds {num_epochs} epochs", f"{num_epochs} epochs in {where}"
    if chosen.step != 1:
        raise ValueError(f"--epochs {_slice_text(chosen)}: dynunc's windows are consecutive epochs; give STEP 1")
    text = _slice_text(chosen)
    return (chosen, f"--epochs {text} selects {len(chosen)} of the {num_epochs} epochs in {where}",
            f"the {len(chosen)} epochs that --epochs {text} selects in {where}")


def _slice_text(epochs: range) -> str:
    return f"{epochs.start}:{epochs.stop}" + (f":{epochs.step}" if epochs.step != 1 else "")


def _window(value: Optional[int], given: Mapping[str, object], num_epochs: int, where: str) -> int:
    """--window: the paper's 10 when not given and the history (or the --epochs slice) is
    long enough for it."""
    include_last = bool(given.get("include_last_window"))
    epochs, holds, named = _dynunc_epochs(given, num_epochs, where)
    largest = max_window(len(epochs), include_last)
    unused = "" if include_last else " (the window ending at the last epoch is not used)"
    if value is None:
        if PAPER_WINDOW <= largest:
            return PAPER_WINDOW
        raise ValueError(f"--window is required by method dynunc: {holds}, too few for the paper's window of "
                         f"{PAPER_WINDOW}{unused}; give --window J with 2 <= J <= {largest}")
    if value < 2:
        raise ValueError(f"--window must be >= 2, got {value}")
    if value > largest:
        raise ValueError(f"--window {value} is too large for {named}: at most {largest}{unused}")
    return value


# One flag, two methods: score from the recorded epochs START..STOP-1 only. Not given, it
# resolves to None: dynunc then reads every epoch, el2n the single epoch K // 10.
EPOCHS_FLAG = MethodFlag(
    "--epochs", "epochs", "dynunc and el2n: score from these recorded epochs only, a Python slice of 0..K-1 "
    "(e.g. 0:30, the first 30). dynunc: consecutive epochs (STEP 1), its windows inside the slice, as if the "
    "history held those epochs alone; default every epoch. el2n: the mean EL2N over the slice; default EL2N of "
    "the single epoch K//10 (at least 1), about 10%% into training, as Paul et al. score one early checkpoint (a "
    "sample not seen in that epoch takes its next seen epoch's)",
    _epochs, {"metavar": "START:STOP"})
DYNUNC_FLAGS = (
    MethodFlag("--window", "window", f"dynunc: window length J, >= 2 (the paper's: {PAPER_WINDOW}, the default "
               f"where the history has at least {PAPER_WINDOW + 1} epochs; at most the number of epochs - 1)",
               _window, {"type": int, "metavar": "J"}),
    MethodFlag("--include-last-window", "include_last_window", "dynunc: also score the window ending at the last "
               "epoch (the paper's code does not; then window may be up to the number of epochs)",
               lambda value, given, num_epochs, where: bool(value), {"action": "store_true"}),
    EPOCHS_FLAG,
)
EL2N_FLAGS = (EPOCHS_FLAG,)


def _dynunc(probs: Iterable[Optional[np.ndarray]], n: int, params: ScoreParams) -> np.ndarray:
    """`probs` has one item per recorded epoch (None where nobody loaded it); --epochs keeps its slice."""
    if params.epochs is not None:
        wanted = params.epochs
        probs = (prob for epoch, prob in enumerate(probs) if epoch in wanted)
    return dynamic_uncertainty_scores(probs, n, params.window, params.include_last_window)


DEFAULT_METHOD = "dynunc"  # the paper's


def _embed_epoch(value: Optional[int], given: Mapping[str, object], num_epochs: int, where: str) -> Optional[int]:
    """--embed-epoch: the epoch whose embeddings are read; not given, the last recorded one
    (None if `where` holds none: the plan then names the missing file)."""

    recorded = list_embed_epochs(where)
    if value is None:
        return recorded[-1] if recorded else None
    if value not in recorded:
        held = f"epochs {', '.join(map(str, recorded))}" if recorded else "no epoch"
        raise ValueError(f"--embed-epoch {value}: {where} holds embeddings (embed_{{epoch}}.npy) for {held}")
    return value


def _at_least_one(flag: str, default: Optional[int] = None):
    def resolve(value: Optional[int], given: Mapping[str, object], num_epochs: int, where: str) -> Optional[int]:
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
        return default if value is None else value
    return resolve


def _gamma(flag: str, default: float):
    def resolve(value: Optional[float], given: Mapping[str, object], num_epochs: int, where: str) -> float:
        return check_gamma(flag, default if value is None else value)
    return resolve


def _d2_score(value: Optional[str], given: Mapping[str, object], num_epochs: int, where: str) -> str:
    """--d2-score: a method of the table that reads no other method's scores (dynunc if not given)."""
    value = DEFAULT_METHOD if value is None else value
    if value not in METHODS:
        raise ValueError(f"--d2-score: unknown method {value!r}; known: {', '.join(METHODS)}")
    if METHODS[value].uses(ScoreParams(d2_score=DEFAULT_METHOD)):
        raise ValueError(f"--d2-score {value}: d2 passes a method's own score; {value} reads another method's")
    return value


EMBED_EPOCH_FLAG = MethodFlag(
    "--embed-epoch", "embed_epoch", "moderate, prototype, kcenter and d2: the epoch whose recorded embeddings "
    "(embed_{epoch}.npy) are read; default the last one recorded. They read the file as recorded: a random "
    "projection of the classifier input (PRODUCE.EMBED_DIM > 0) or the input itself (PRODUCE.EMBED_DIM -1); "
    "with --embeddings, that folder's epochs (embed.py writes epoch 0)",
    _embed_epoch, {"type": int, "metavar": "E"}, reads="embeddings")
def _prototype_switch(value: Optional[float], given: Mapping[str, object], num_epochs: int, where: str) -> float:
    value = PROTOTYPE_SWITCH if value is None else value
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise ValueError(f"--prototype-switch must be a fraction in (0, 1], got {value}")
    return float(value)


PROTOTYPE_FLAGS = (EMBED_EPOCH_FLAG, MethodFlag(
    "--prototypes", "prototypes", "prototype: the number of k-means centroids (default: the number of classes "
    "of the list)", _at_least_one("--prototypes"), {"type": int, "metavar": "K"}),
    MethodFlag("--prototype-restarts", "prototype_restarts", f"prototype: k-means runs from different seeded "
               f"starts; the centroids of the lowest k-means objective are kept, as FAISS's nredo (default "
               f"{PROTOTYPE_RESTARTS})", _at_least_one("--prototype-restarts", PROTOTYPE_RESTARTS),
               {"type": int, "metavar": "R"}),
    MethodFlag("--prototype-keep", "prototype_keep", "prototype: which side a coreset keeps. auto (default): "
               "Sorscher et al.'s rule, the easiest (nearest their prototype) for a fraction below "
               "--prototype-switch, the hardest (farthest) at or above it; easy or hard: that side at every fraction",
               lambda value, given, num_epochs, where: value or "auto",
               {"choices": PROTOTYPE_KEEP, "metavar": "{auto,easy,hard}"}),
    MethodFlag("--prototype-switch", "prototype_switch", f"prototype, --prototype-keep auto: the fraction from "
               f"which the hardest are kept (below it the easiest; default {PROTOTYPE_SWITCH})", _prototype_switch,
               {"type": float, "metavar": "F"}))
D2_FLAGS = (
    EMBED_EPOCH_FLAG,
    MethodFlag("--d2-score", "d2_score", f"d2: the method whose score is the difficulty passed over the graph "
               f"(default {DEFAULT_METHOD}); a score with negative values (aum, moderate) is shifted by its minimum "
               "first, as D2's authors shift AUM", _d2_score, {"metavar": "METHOD"}),
    MethodFlag("--knn", "knn", f"d2: neighbours per sample in the kNN graph (default {D2_KNN}, the authors')",
               _at_least_one("--knn", D2_KNN), {"type": int, "metavar": "K"}),
    MethodFlag("--d2-gamma-forward", "d2_gamma_forward", f"d2: forward messages weigh a neighbour's score by "
               f"exp(-gamma d) (default {D2_GAMMA_FORWARD})", _gamma("--d2-gamma-forward", D2_GAMMA_FORWARD),
               {"type": float, "metavar": "GAMMA"}),
    MethodFlag("--d2-gamma-reverse", "d2_gamma_reverse", f"d2: a pick lowers its neighbours' scores by "
               f"exp(-gamma d) x its own (default {D2_GAMMA_REVERSE})", _gamma("--d2-gamma-reverse", D2_GAMMA_REVERSE),
               {"type": float, "metavar": "GAMMA"}),
)


def _d2(embeddings: np.ndarray, params: ScoreParams, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """d2 over --d2-score's scores; says on stderr when a signed score is shifted by its minimum."""
    what = f"--d2-score {params.d2_score}"
    difficulty = scores[params.d2_score]
    scored = difficulty[~np.isnan(difficulty)]
    if len(scored) and np.isfinite(scored).all() and scored.min() < 0 < scored.max() - scored.min():
        print(f"d2: {what} has negative scores (minimum {scored.min():.6g}): shifted by its minimum, so "
              "that each pick lowers its neighbours (D2's authors shift AUM so)", file=sys.stderr)
    return d2_scores(embeddings, difficulty, params.knn, params.d2_gamma_forward, params.d2_gamma_reverse,
                     params.seed, what=what)


def _num_classes(labels: np.ndarray) -> int:
    return int(np.max(labels)) + 1 if len(labels) else 1

METHODS: Dict[str, Method] = {
    "dynunc": Method(("prob",), "mean over sliding windows of J epochs of 10 x std(p(true label), ddof 1)",
                     "He et al. 2023, this paper", axis="dynamic uncertainty (unitless: 10 x a std of p(true label))",
                     stream=_dynunc, flags=DYNUNC_FLAGS,
                     epochs=lambda p, k: range(k) if p.epochs is None else p.epochs),
    "forgetting": Method(("correct",), "forgetting events: correct to wrong between consecutive seen presentations; +inf if "
                         "never correct",
                         "Toneva et al. 2019", axis="forgetting events (count; +inf: never correct)",
                         make=lambda n, p, k: ForgettingEvents(n)),
    "el2n": Method(("el2n",), "||softmax - one-hot||_2 at epoch K // 10 (the next seen epoch for a sample not "
                   "seen then); with --epochs, its mean over that slice",
                   "Paul et al. 2021", axis="EL2N (distance of the softmax to the one-hot label, 0 to 1.41)",
                   make=lambda n, p, k: (FirstSeen(n, "el2n", default_el2n_epoch(k)) if p.epochs is None
                                         else SeenMean(n, "el2n", p.epochs)), flags=EL2N_FLAGS,
                   epochs=lambda p, k: range(default_el2n_epoch(k), k) if p.epochs is None else p.epochs),
    "aum": Method(("margin",), "minus the mean margin (true logit - largest other logit)",
                  "Pleiss et al. 2020", axis="negated AUM (minus the mean margin, in logits)",
                  make=lambda n, p, k: SeenMean(n, "margin", finish=np.negative)),
    "variability": Method(("prob",), "std of p(true label) over epochs (ddof 0)",
                          "Swayamdipta et al. 2020", axis="variability (std of p(true label), 0 to 0.5)",
                          make=lambda n, p, k: SeenStd(n, "prob")),
    "confidence": Method(("prob",), "1 - mean p(true label) over epochs",
                         "Swayamdipta et al. 2020", axis="low confidence (1 - mean p(true label), 0 to 1)",
                         make=lambda n, p, k: SeenMean(n, "prob", finish=lambda m: 1.0 - m)),
    "random": Method((), "a uniform random draw from --seed", "baseline", axis="uniform draw (0 to 1)",
                     make=lambda n, p, k: UniformRandom(n, p.seed)),
    "moderate": Method(("embed",), "-|2r - (N-1)|, r the rank of the distance to the class's coordinate-wise median "
                       "embedding: the band around the median distance", "Xia et al. 2023",
                       axis="closeness to the median distance (minus twice the rank's distance from the median rank)",
                       embed=lambda e, y, p, s: moderate_scores(e, y, p.seed), flags=(EMBED_EPOCH_FLAG,),
                       labels=lambda p: True),
    "prototype": Method(("embed",), "1 - cos(embedding, nearest of --prototypes spherical k-means centroids, the "
                        "best of --prototype-restarts runs); no labels; the farthest kept at fractions >= "
                        "--prototype-switch, the nearest below (Sorscher's rule, --prototype-keep)",
                        "Sorscher et al. 2022", axis="cosine distance to the nearest prototype (0 to 2)",
                        embed=lambda e, y, p, s: prototype_scores(e, p.prototypes or _num_classes(y), p.seed,
                                                                  p.prototype_restarts or PROTOTYPE_RESTARTS),
                        flags=PROTOTYPE_FLAGS, labels=lambda p: not p.prototypes,
                        keeps_lowest=lambda p, keep, n: prototype_keeps_easiest(
                            p.prototype_keep or "auto", p.prototype_switch or PROTOTYPE_SWITCH, keep, n)),
    "kcenter": Method(("embed",), "greedy k-center pick order (farthest from the picked first), N - position; "
                      "within k-means clusters above 2048 samples", "Sener and Savarese 2018",
                      axis="k-center pick order (N - position, 1 to N)",
                      embed=lambda e, y, p, s: kcenter_scores(e, p.seed), flags=(EMBED_EPOCH_FLAG,)),
    "d2": Method(("embed",), "D2 pick order over a kNN graph of the embeddings: --d2-score passed forward, greedy "
                 "picks with reverse messages; N - position", "Maharana et al. 2024",
                 axis="D2 pick order (N - position, 1 to N)",
                 embed=lambda e, y, p, s: _d2(e, p, s),
                 uses=lambda p: (p.d2_score,), flags=D2_FLAGS),
}


def resolve_defaults(names: Sequence[str], params: ScoreParams, num_epochs: int, where: str = "the history",
                     given: Optional[Mapping[str, object]] = None, embed_where: str = "") -> ScoreParams:
    """`params` with each parameter that the methods `names` take and that is missing
    resolved by its flag (given: the flags' values as parsed; by default `params`').
    `where`: the history folder; `embed_where`: the embeddings' folder (default `where`)."""
    folders = {"history": where, "embeddings": embed_where or where}
    values = params.values()
    given = values if given is None else given
    pending, done = list(names), set()
    while pending:  # the methods asked for, then the ones whose scores they read
        name = pending.pop(0)
        if name in done:
            continue
        done.add(name)
        for flag in METHODS[name].flags:
            if values.get(flag.param) is None:
                values[flag.param] = flag.resolve(given.get(flag.param), given, num_epochs, folders[flag.reads])
        pending.extend(METHODS[name].uses(ScoreParams(**values)))
    return ScoreParams(**values)


def with_inputs(names: Sequence[str], params: ScoreParams) -> List[str]:
    """`names` and, after them, the methods whose scores they read (`uses`) that are not
    among them: every method one pass must score. `params`: resolved."""
    scored = list(names)
    for name in names:
        scored += [used for used in METHODS[name].uses(params) if used not in scored]
    return scored


def epochs_read(name: str, params: ScoreParams, num_epochs: int) -> Sequence[int]:
    """The epochs whose files method `name` reads."""
    method = METHODS[name]
    if not method.needs or method.embed is not None:  # an embedding method reads no epoch record
        return ()
    if method.epochs is not None:
        return method.epochs(resolve_defaults([name], params, num_epochs), num_epochs)
    return range(num_epochs)


def score_history(names: Sequence[str], num_epochs: int, num_samples: int,
                  load: Callable[[int, str], np.ndarray], params: ScoreParams,
                  threads: Optional[int] = None,
                  embedded: Optional[Callable[[], Tuple[np.ndarray, np.ndarray]]] = None) -> Dict[str, np.ndarray]:
    """Scores of every method in `names` ({name: float64 array of length N}) from one
    pass over the epochs. `load(epoch, kind)` reads one record file; each is read at
    most once. At most one method may be a stream method (dynunc): it pulls the epochs,
    and the others are fed as each epoch goes by (while the stream's threads score the
    previous epoch). `threads` (default: the usable cores) update the accumulators.
    `embedded()` gives (embeddings N x D, labels), called once if an embedding method is
    asked for; those methods are scored after the pass (with the scores they read)."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    params = resolve_defaults(names, params, num_epochs)
    scored = with_inputs(names, params)
    accumulators = {name: METHODS[name].make(num_samples, params, num_epochs) for name in scored
                    if METHODS[name].make}
    streams = [name for name in scored if METHODS[name].stream]
    if len(streams) > 1:
        raise ValueError(f"at most one stream method per pass, got {streams}")
    streamed = frozenset(epochs_read(streams[0], params, num_epochs)) if streams else frozenset()

    chunks = _chunks(num_samples)

    def epochs(pool: ThreadPoolExecutor) -> Iterator[Optional[np.ndarray]]:
        for epoch in range(num_epochs):
            fed = [(name, acc) for name, acc in accumulators.items() if acc.wants(epoch)]
            kinds = {kind for name, _ in fed for kind in METHODS[name].needs}
            if epoch in streamed:
                kinds.add("prob")
            records = {kind: np.asarray(load(epoch, kind)) for kind in sorted(kinds)}  # a memmap as a plain array

            def update(rows: slice) -> None:
                for _, acc in fed:
                    acc.update(epoch, records, rows)

            if fed:
                list(pool.map(update, chunks))
            yield records.get("prob")

    results = {}
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        passing = epochs(pool)
        if streams:
            results[streams[0]] = METHODS[streams[0]].stream(passing, num_samples, params)
        for _ in passing:  # the rest of the pass (all of it without a stream method)
            pass
    results.update({name: acc.result() for name, acc in accumulators.items()})
    geometric = [name for name in scored if METHODS[name].embed]
    if geometric:
        if embedded is None:
            raise ValueError(f"method {geometric[0]} needs embeddings and none were given")
        embeddings, labels = embedded()
        for name in sorted(geometric, key=lambda m: bool(METHODS[m].uses(params))):  # the ones read by others first
            results[name] = METHODS[name].embed(embeddings, labels, params, results)
    return {name: results[name] for name in names}
