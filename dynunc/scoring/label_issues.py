"""Suspected label errors from one produce run's history (get_coreset.py --label-issues).

Each label score is a suspicion, higher = more likely mislabelled, with an automatic cut
whose count is the estimate of how many labels are wrong:

- aum (the default): minus the mean margin over the epochs (the margin: the given label's
  logit minus the largest other logit; Pleiss et al. 2020's area under the margin, AUM,
  divided by the epochs). Cut: a negative mean margin (on average another class's logit
  beats the given label's). With threshold samples the cut is AUM's own (see below).
- confidence: 1 - the mean p(given label) over the epochs (Swayamdipta et al.'s
  confidence). Cut: mean p(given label) < 0.5.
- forgetting: Toneva et al.'s forgetting events, +inf for a sample never classified as its
  given label. Cut: never learned (+inf).
- el2n: EL2N, ||softmax - one-hot(given label)||_2 (Paul et al. 2021), of epoch K // 10 or
  its mean over --epochs. Cut: EL2N > 1 (e.g. p(given label) < 0.3 with the rest on one
  other class; EL2N > 1 implies p(given label) < 0.5, since p >= 0.5 gives at most 0.71).
- cleanlab: confident learning (Northcutt et al. 2021) by cleanlab's find_label_issues on
  the class probabilities rebuilt from the recorded top-k (`pred_probs`), ranked by
  cleanlab's self-confidence label quality (suspicion = 1 - p(given label)). Cut: the
  samples find_label_issues flags (its default, prune by noise rate).

Samples never seen have no score (NaN) and are never suspects.

A run with AUM's threshold samples (PRODUCE.THRESHOLD_SAMPLES, dynunc/training/threshold.py:
N // (C + 1) images trained under an extra class C): those images are not judged (NaN), and
aum's cut becomes Pleiss et al.'s, a mean margin below the 99th percentile of the threshold
samples' mean margins. Such a run is refused when its threshold indices are missing, when
the list has a label >= C (the list is not the one the extra class was added to), and for
cleanlab (its probabilities hold the extra class).

The class probabilities rebuilt from top-k records (`pred_probs`): for each recorded
epoch, the k recorded probabilities at their classes and the remaining mass
1 - sum(top-k) spread evenly over the other C - k classes (exact when k = C); then the
mean over the epochs in which the sample was seen. The suggested label of a suspect is
the class other than its given one with the highest such mean, among the classes that
appear in its top-k records (`suggested_labels`, never a dense N x C matrix).
"""
import csv
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dynunc.history import HistoryError, list_topk_epochs, load_topk, read_threshold, read_topk_meta

DEFAULT_LABEL_SCORE = "aum"


@dataclass(frozen=True)
class LabelScore:
    """One way to score label errors: `method`, the METHODS row whose score it turns into
    a suspicion by `suspicion`; `cut(suspicion)` the suspects; `rule` says the cut."""

    method: Optional[str]  # METHODS name; None: scored from the top-k records (cleanlab)
    what: str
    rule: str
    suspicion: Callable[[np.ndarray], np.ndarray]
    cut: Callable[[np.ndarray], np.ndarray]


def _finite_cut(test: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def cut(suspicion: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return ~np.isnan(suspicion) & test(suspicion)
    return cut


LABEL_SCORES: Dict[str, LabelScore] = {
    "aum": LabelScore("aum", "minus the mean margin (given label's logit - largest other), Pleiss et al. 2020",
                      "mean margin < 0", lambda s: s, _finite_cut(lambda s: s > 0)),
    "confidence": LabelScore("confidence", "1 - mean p(given label), Swayamdipta et al. 2020",
                             "mean p(given label) < 0.5", lambda s: s, _finite_cut(lambda s: s > 0.5)),
    "forgetting": LabelScore("forgetting", "forgetting events, +inf if never learned, Toneva et al. 2019",
                             "never classified as its given label in a seen epoch", lambda s: s,
                             _finite_cut(np.isposinf)),
    "el2n": LabelScore("el2n", "EL2N, ||softmax - one-hot(given label)||_2, Paul et al. 2021", "EL2N > 1",
                       lambda s: s, _finite_cut(lambda s: s > 1.0)),
    "cleanlab": LabelScore(None, "confident learning on the rebuilt top-k probabilities (cleanlab "
                           "find_label_issues; ranked by 1 - self-confidence), Northcutt et al. 2021",
                           "flagged by cleanlab.filter.find_label_issues (prune by noise rate)",
                           lambda s: s, _finite_cut(lambda s: s > 0)),  # unused: cleanlab_scores flags
}


def topk_records(hdir: str, num_samples: int, epochs: Optional[Sequence[int]] = None
                 ) -> Tuple[int, List[Tuple[np.ndarray, np.ndarray]]]:
    """(number of classes, [(probabilities, classes) per epoch]) of the recorded top-k
    epochs (`epochs`: those only). HistoryError naming what is missing."""
    meta = read_topk_meta(hdir)
    held = list_topk_epochs(hdir)
    if meta is None or not held:
        raise HistoryError(f"{hdir}: holds no top-k class probabilities (topk.json, topk_prob_{{epoch}}.npy); a "
                           "produce run records them when PRODUCE.TOPK.K > 0")
    chosen = held if epochs is None else list(epochs)
    return meta[1], [load_topk(hdir, e, num_samples) for e in chosen]


def _epoch_rows(probs: np.ndarray, classes: np.ndarray, rows, num_classes: int):
    """One epoch's top-k records of `rows`: (p float64 n x k, c int64 n x k, seen bool n,
    spread n: the mass outside the top k spread evenly over the other classes, each's
    share; 0 when k = C)."""
    p = probs[rows].astype(np.float64)
    c = classes[rows].astype(np.int64)
    k = c.shape[1]
    rest = np.clip(1.0 - p.sum(axis=1), 0.0, None)
    spread = rest / (num_classes - k) if num_classes > k else np.zeros(len(p))
    return p, c, c[:, 0] >= 0, spread


def dense_probs(records: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int,
                rows: Optional[slice] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(pred_probs float64 n x C, seen: bool n): the mean over seen epochs of each epoch's
    rebuilt distribution (the module docstring's rule). Rows never seen are uniform."""
    rows = rows or slice(None)
    n = len(records[0][0][rows])
    total = np.zeros((n, num_classes))
    count = np.zeros(n)
    for probs, classes in records:
        p, c, seen, spread = _epoch_rows(probs, classes, rows, num_classes)
        k = c.shape[1]
        epoch = np.repeat(spread[:, None], num_classes, axis=1)
        r = np.flatnonzero(seen)
        epoch[r[:, None], c[r]] = p[r]
        if num_classes == k:  # k = C: exact; normalise the float16 rounding away
            epoch[r] /= epoch[r].sum(axis=1, keepdims=True)
        total[seen] += epoch[seen]
        count += seen
    seen = count > 0
    total[seen] /= count[seen, None]
    total[~seen] = 1.0 / num_classes
    return total, seen


def suggested_labels(records: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int, labels: np.ndarray,
                     rows: np.ndarray, exclude: Optional[int] = None) -> np.ndarray:
    """For each row of `rows`, the class other than labels[row] with the highest mean rebuilt
    probability among the classes in its top-k records (-1: none, e.g. never seen), never
    `exclude` (a threshold run's extra class). Memory: len(rows) x (epochs x k) candidates."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    candidates = np.concatenate([c[rows].astype(np.int64) for _, c in records], axis=1)  # n x E*k
    value = np.zeros(candidates.shape)
    count = np.zeros(len(rows))
    for probs, classes in records:
        p, c, seen, spread = _epoch_rows(probs, classes, rows, num_classes)
        match = candidates[:, :, None] == c[:, None, :]  # n x E*k x k
        in_epoch = (match * p[:, None, :]).sum(axis=2)
        recorded = match.any(axis=2)
        value += np.where(recorded, in_epoch, spread[:, None]) * seen[:, None]
        count += seen
    bad = (candidates < 0) | (candidates == np.asarray(labels)[rows][:, None])
    if exclude is not None:
        bad |= candidates == exclude
    value[bad] = -np.inf
    best = np.argmax(value, axis=1)
    out = candidates[np.arange(len(rows)), best]
    out[~np.isfinite(value[np.arange(len(rows)), best])] = -1
    return out


def cleanlab_scores(labels: np.ndarray, pred_probs: np.ndarray, seen: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(suspicion: 1 - cleanlab's self-confidence, NaN where never seen; flagged: cleanlab's
    find_label_issues on the seen rows). ValueError naming the problem if cleanlab is
    missing or a class has no seen sample."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ValueError("--label-score cleanlab needs the cleanlab package (pip install cleanlab)") from None
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(seen)
    missing = sorted(set(range(pred_probs.shape[1])) - set(labels[rows].tolist()))
    if missing:
        raise ValueError(f"--label-score cleanlab: class {missing[0]} has no seen sample with that label "
                         "(confident learning needs every class of the probabilities)")
    suspicion = np.full(len(labels), np.nan)
    flagged = np.zeros(len(labels), dtype=bool)
    probs = pred_probs[rows]
    suspicion[rows] = 1.0 - get_label_quality_scores(labels[rows], probs, method="self_confidence")
    flagged[rows] = find_label_issues(labels[rows], probs)
    return suspicion, flagged


@dataclass
class LabelIssues:
    """The scored history: one suspicion per sample (NaN: never seen), the suspects (the
    automatic cut), most suspicious first, and their suggested labels (None without top-k)."""

    score: str
    suspicion: np.ndarray
    flagged: np.ndarray  # bool per sample
    order: np.ndarray  # the flagged indices, most suspicious first (ties: lower index first)
    suggested: Optional[np.ndarray]  # per entry of `order`, -1 where none
    rule: str  # the cut, in words

    def describe(self, num_samples: int) -> str:
        count = len(self.order)
        return (f"{count} of {num_samples} labels suspected wrong ({count / max(num_samples, 1):.1%}; "
                f"{self.score}, rule: {self.rule})")


def rank_flagged(suspicion: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(flagged)
    return idx[np.lexsort((idx, -suspicion[idx]))]


SEEN_METHOD = "confidence"  # its score is NaN exactly for the samples never seen


def methods_scored(score: str) -> List[str]:
    """The METHODS rows whose scores `score_label_issues` reads for `score`."""
    method = LABEL_SCORES[score].method
    return list(dict.fromkeys(([method] if method else []) + [SEEN_METHOD]))


def score_label_issues(score: str, scores: Mapping[str, np.ndarray], labels: np.ndarray, hdir: str,
                       topk_epochs: Optional[Sequence[int]] = None) -> LabelIssues:
    """The label issues by `score` (LABEL_SCORES) from `scores` (score_history's, of the
    methods `methods_scored(score)`), the list's labels and, where `hdir` holds top-k
    records, the suggested labels. A sample never seen has no suspicion (NaN)."""
    spec = LABEL_SCORES[score]
    n = len(labels)
    never_seen = np.isnan(scores[SEEN_METHOD])
    threshold = read_threshold(hdir, n)
    rule = spec.rule
    if threshold is not None:
        extra_class, threshold_rows = threshold
        if len(labels) and int(np.max(labels)) >= extra_class:
            raise HistoryError(f"{hdir}: a threshold-sample run (threshold.json: extra class {extra_class}) scored "
                               f"with a list that has label {int(np.max(labels))}: give the list the run was "
                               "started with (the extra class is added by the run)")
        if spec.method is None:
            raise HistoryError(f"{hdir}: --label-score {score} cannot score a threshold-sample run (its class "
                               f"probabilities include the extra class {extra_class}); use aum")
    has_topk = read_topk_meta(hdir) is not None and bool(list_topk_epochs(hdir))
    records = num_classes = None
    if has_topk or spec.method is None:
        num_classes, records = topk_records(hdir, n, topk_epochs)
        if len(labels) and int(np.max(labels)) >= num_classes:
            raise HistoryError(f"{hdir}: the top-k records have {num_classes} classes but the list has label "
                               f"{int(np.max(labels))}")
    if spec.method is None:
        pred_probs, seen = dense_probs(records, num_classes)
        suspicion, flagged = cleanlab_scores(labels, pred_probs, seen)
    else:
        suspicion = spec.suspicion(np.array(scores[spec.method], dtype=np.float64))
        suspicion[never_seen] = np.nan
        if threshold is not None:
            judged = np.isfinite(suspicion[threshold_rows])
            if score == "aum" and not judged.any():
                raise HistoryError(f"{hdir}: no threshold sample was seen: aum's cut cannot be set")
            if score == "aum":
                # AUM < the 99th percentile of the threshold samples' AUM <=> suspicion > minus it
                cut = float(np.percentile(-suspicion[threshold_rows][judged], 99))
                rule = (f"mean margin < {cut:.4g}, the 99th percentile of the {int(judged.sum())} threshold samples' "
                        "(Pleiss et al. 2020)")
                suspicion[threshold_rows] = np.nan
                flagged = _finite_cut(lambda s: s > -cut)(suspicion)
            else:
                suspicion[threshold_rows] = np.nan
                flagged = spec.cut(suspicion)
        else:
            flagged = spec.cut(suspicion)
    order = rank_flagged(suspicion, flagged)
    suggested = (suggested_labels(records, num_classes, labels, order, threshold[0] if threshold else None)
                 if records is not None else None)
    return LabelIssues(score, suspicion, flagged, order, suggested, rule)


def write_tsv(f, issues: LabelIssues, labels: np.ndarray, line_of: Callable[[int], int],
              path_of: Callable[[int], str]) -> None:
    """The suspects as TSV (csv's tab dialect, as --dedup's groups; `f` opened with
    newline=''), most suspicious first: index (0-based entry of the list), line (1-based
    line of the list), path (as written in the list), label (given), score (the
    suspicion), and suggested where top-k was recorded (-1: none)."""
    out = csv.writer(f, delimiter="\t", lineterminator="\n")
    out.writerow(["index", "line", "path", "label", "score"] + (["suggested"] if issues.suggested is not None else []))
    for j, i in enumerate(issues.order):
        row = [int(i), line_of(int(i)), path_of(int(i)), int(labels[i]), repr(float(issues.suspicion[i]))]
        out.writerow(row + ([int(issues.suggested[j])] if issues.suggested is not None else []))


def read_tsv(path: str) -> Dict[str, np.ndarray]:
    """A --label-issues TSV read back: {column: array} (index, line, label, suggested as
    int64, score float64, path as str)."""
    with open(path, "r", encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f, delimiter="\t"))
    out: Dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        values = [r[j] for r in rows]
        out[name] = (np.array(values, dtype=np.float64) if name == "score" else np.array(values, dtype=object)
                     if name == "path" else np.array(values, dtype=np.int64))
    return out
