"""Top-1 accuracies of networks trained on coresets, for the report's decision section
and the pruning curve: read from the curve's CSV (scripts/pruning_curve.py writes it) or
from the metrics.jsonl of main.py runs, and summarised per method and fraction as the
mean and population standard deviation over the runs (the seeds).

A main.py run is named on the command line as METHOD:FRACTION=RUN (or full=RUN for the
full training set), RUN being the run's output folder or its metrics.jsonl; its top-1 is
the `acc1` of the last line, and the run must have finished (its last epoch is
TRAIN.EPOCHS - 1 of the config.yaml beside it, when there is one).
"""
import csv
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

CSV_FIELDS = ["labels", "method", "fraction", "seed", "images", "top1", "top5", "flipped_kept"]
REQUIRED_FIELDS = ("method", "fraction", "top1")
FULL = "full"  # the method name of runs on the whole training list (fraction 1)


@dataclass(frozen=True)
class Accuracy:
    """One trained run."""

    method: str
    fraction: float
    top1: float
    source: str  # "FILE line L" or the metrics.jsonl, for messages
    labels: str = ""  # the curve's label column ("clean", "noise0.2"); "" for a main.py run


@dataclass(frozen=True)
class TopOne:
    """Top-1 over the runs of one method and fraction."""

    mean: float
    std: float  # population standard deviation (0 for one run)
    runs: int

    def text(self, runs: bool = True) -> str:
        """"mean ± std (n runs)", the count left out with runs=False; one run is its value alone."""
        if self.runs == 1:
            return f"{self.mean:.2f}" + (" (1 run)" if runs else "")
        return f"{self.mean:.2f} ± {self.std:.2f}" + (f" ({self.runs} runs)" if runs else "")


def _fraction(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: fraction {text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{where}: fraction {text!r} is not in (0, 1]")
    return value


def _top1(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: top-1 {text!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{where}: top-1 {text!r} is not a percentage in [0, 100]")
    return value


def read_curve_csv(path: str) -> List[Accuracy]:
    """The rows of a pruning-curve CSV; ValueError naming the file and line otherwise."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_FIELDS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"--accuracy {path} line 1: no column {missing[0]!r} (a pruning curve's CSV has "
                                 f"{','.join(CSV_FIELDS)})")
            rows = []
            for row in reader:
                where = f"--accuracy {path} line {reader.line_num}"
                method = (row["method"] or "").strip()
                if not method:
                    raise ValueError(f"{where}: the method is empty")
                fraction = _fraction(row["fraction"] or "", where)
                if method == FULL and fraction != 1.0:
                    raise ValueError(f"{where}: method {FULL} has fraction {row['fraction']}, expected 1")
                rows.append(Accuracy(method, fraction, _top1(row["top1"], where), where,
                                     (row.get("labels") or "").strip()))
    except FileNotFoundError:
        raise ValueError(f"--accuracy {path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--accuracy {path}: cannot be read as a CSV file: {e}") from None
    if not rows:
        raise ValueError(f"--accuracy {path}: holds no run")
    return rows


def read_run(spec: str) -> Accuracy:
    """METHOD:FRACTION=RUN or full=RUN: the last top-1 of a finished main.py run."""
    name, _, run = spec.partition("=")
    method, colon, fraction_text = name.partition(":")
    where = f"--accuracy {spec}"
    if not run or not method.strip() or (method != FULL and not colon):
        raise ValueError(f"{where}: expected METHOD:FRACTION=RUN, full=RUN, or a CSV file")
    fraction = 1.0 if method == FULL and not colon else _fraction(fraction_text, where)
    path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    except FileNotFoundError:
        raise ValueError(f"{where}: {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: cannot read {path}: {e}") from None
    if not lines:
        raise ValueError(f"{where}: {path} is empty (the run recorded no epoch)")
    number, line = lines[-1]
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {number}: not a JSON record: {e}") from None
    if not isinstance(record, dict) or "acc1" not in record:
        raise ValueError(f"{path} line {number}: no 'acc1' (main.py's top-1)")
    check_finished(path, record.get("epoch"))
    return Accuracy(method, fraction, _top1(record["acc1"], f"{path} line {number}"), path)


def check_finished(metrics_path: str, epoch) -> None:
    """ValueError if the config.yaml beside `metrics_path` asks for more epochs than the
    last record's; nothing to check without one."""
    config_path = os.path.join(os.path.dirname(metrics_path) or ".", "config.yaml")
    if not os.path.exists(config_path):
        return
    import yaml

    try:
        with open(config_path, encoding="utf-8") as f:
            epochs = (yaml.safe_load(f) or {}).get("TRAIN", {}).get("EPOCHS")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ValueError(f"{config_path}: cannot read TRAIN.EPOCHS: {e}") from None
    if isinstance(epochs, int) and epoch != epochs - 1:
        raise ValueError(f"{metrics_path}: the run stopped at epoch {epoch} of {epochs} ({config_path}): "
                         "its accuracy is not the finished run's")


def read_accuracies(items: Sequence[str]) -> List[Accuracy]:
    """Every run of the --accuracy items (CSV files and METHOD:FRACTION=RUN runs); ValueError
    if an item is given twice or the CSVs mix label settings (clean and noisy runs)."""
    repeated = sorted({item for item in items if list(items).count(item) > 1})
    if repeated:
        raise ValueError(f"--accuracy: {repeated[0]!r} is given twice")
    runs: List[Accuracy] = []
    for item in items:
        runs += read_curve_csv(item) if os.path.isfile(item) or "=" not in item else [read_run(item)]
    settings = sorted({run.labels for run in runs if run.labels})
    if len(settings) > 1:
        raise ValueError(f"--accuracy: the runs mix label settings ({', '.join(settings)}); give the runs of one")
    return runs


def summarise(runs: Sequence[Accuracy]) -> Dict[Tuple[str, float], TopOne]:
    """{(method, fraction): TopOne}, in the order the methods first appear."""
    grouped: Dict[Tuple[str, float], List[float]] = {}
    for run in runs:
        grouped.setdefault((run.method, run.fraction), []).append(run.top1)
    return {key: TopOne(float(np.mean(v)), float(np.std(v)), len(v)) for key, v in grouped.items()}


def within_spread(a: TopOne, best: TopOne) -> bool:
    """Whether `a` is within the seed spread of `best`: mean + std of `a` reaches mean - std
    of `best` (the one-standard-deviation bands overlap)."""
    return a.mean + a.std >= best.mean - best.std - 1e-9


CANNOT_TELL, WITHIN, BELOW = "cannot tell (1 run)", "within spread", "below"


def compare(a: TopOne, best: TopOne) -> str:
    """How `a` stands against the highest mean `best`: below it only when the gap exceeds
    the seed spread (the one-std bands of both do not overlap); with one run on either
    side there is no spread, so the difference cannot be told from seed noise."""
    if a.runs < 2 or best.runs < 2:
        return CANNOT_TELL
    return WITHIN if within_spread(a, best) else BELOW


def best_of(entries: Dict[str, TopOne]) -> str:
    """The method with the highest mean top-1 (ties: the first)."""
    return max(entries, key=lambda m: (entries[m].mean, -list(entries).index(m)))


def same_fraction(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
