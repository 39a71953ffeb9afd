"""The report's cost section: what the produce run cost against what a coreset saves each
later training run, and how the produce run's coreset settled (stability tracking).

- Produce cost: the sum of the produce run's measured `epoch_time` in its metrics.jsonl
  (beside the history: --input's folder, or the parent of a pred_prob_history folder).
- A full training run's cost: measured, the mean over the `--accuracy full=RUN` runs of
  the sum of their epoch times; else estimated, as the produce run's mean epoch time
  divided by the produce overhead (--produce-overhead: produce epoch time / plain epoch
  time) times the epochs the produce run was configured for (TRAIN.EPOCHS of its
  config.yaml, so that a run stopped early is still compared with a whole training run).
- A later run on fraction f costs about f of a full run (the epoch time scales with the
  images), so each saves (1 - f) of it; pruning pays off after ceil(produce cost /
  saving) later runs. This charges the whole produce run to pruning; if its trained
  model is used as well, only the produce overhead is pruning's, and it pays off sooner.
- Stability: per epoch, the kept-set overlap at each tracked fraction and the Spearman
  coefficient that produce mode logged (dynunc/training/stability.py), when the run has them.
"""
import math
import os
from typing import List, Optional, Sequence

from dynunc.history import HISTORY_DIRNAME, OVERLAP_KEY, SPEARMAN_KEY, STOPPED_KEY, VS_EPOCH_KEY
from dynunc.metrics_log import MetricsLog

# The demo's measured produce-mode epoch time / plain epoch time (README: 1.40); analytically
# about 4/3 where the extra forward pass costs a third of a training step.
DEFAULT_PRODUCE_OVERHEAD = 1.4
_OVERLAP_PREFIX = OVERLAP_KEY.split("{")[0]


def produce_folder(input_path: str) -> str:
    """The produce run's output folder for report.py's --input (the folder or its history)."""
    path = os.path.normpath(input_path)
    return os.path.dirname(path) if os.path.basename(path) == HISTORY_DIRNAME else path


def run_seconds(records: Sequence[dict], where: str) -> float:
    """The sum of the epoch times of a run's metrics records; ValueError naming the file
    if a record has none."""
    missing = [r.get("epoch") for r in records if not isinstance(r.get("epoch_time"), (int, float))]
    if missing:
        raise ValueError(f"{where}: epoch {missing[0]} has no epoch_time")
    return float(sum(r["epoch_time"] for r in records))


def configured_epochs(folder: str, default: int) -> int:
    """TRAIN.EPOCHS of the config.yaml in `folder` (`default` without one)."""
    path = os.path.join(folder, "config.yaml")
    if not os.path.exists(path):
        return default
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            epochs = (yaml.safe_load(f) or {}).get("TRAIN", {}).get("EPOCHS")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ValueError(f"{path}: cannot read TRAIN.EPOCHS: {e}") from None
    return epochs if isinstance(epochs, int) and epochs > 0 else default


def full_runs(accuracy: Optional[Sequence[str]]) -> List[str]:
    """The metrics.jsonl paths of the --accuracy full=RUN items."""
    paths = []
    for item in accuracy or ():
        name, equals, run = item.partition("=")
        if equals and name == "full":
            paths.append(os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run)
    return paths


def stability_series(records: Sequence[dict]) -> Optional[dict]:
    """{"epochs", "vs_epochs", "overlap": {fraction: [...]}, "spearman", "stopped_after"}
    from the records that hold the tracking keys; None if none does."""
    tracked = [r for r in records if VS_EPOCH_KEY in r]
    if not tracked:
        return None
    fractions = [k[len(_OVERLAP_PREFIX):] for k in tracked[0] if k.startswith(_OVERLAP_PREFIX)]

    def value(record: dict, key: str) -> Optional[float]:  # NaN (a constant score vector) as None, for JSON
        v = record.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return {"epochs": [r["epoch"] for r in tracked], "vs_epochs": [r[VS_EPOCH_KEY] for r in tracked],
            "overlap": {f: [value(r, _OVERLAP_PREFIX + f) for r in tracked] for f in fractions},
            "spearman": [value(r, SPEARMAN_KEY) for r in tracked],
            "stopped_after": next((r["epoch"] for r in records if r.get(STOPPED_KEY)), None)}


def cost_numbers(input_path: str, fractions: Sequence[str], accuracy: Optional[Sequence[str]],
                 overhead: float) -> Optional[dict]:
    """The cost section's numbers (None when the produce run left no metrics.jsonl)."""
    folder = produce_folder(input_path)
    log = MetricsLog(folder)
    if not os.path.exists(log.path):
        return None
    records = log.read()
    if not records:
        return None
    produce = run_seconds(records, log.path)
    planned = configured_epochs(folder, len(records))
    measured = full_runs(accuracy)
    if measured:
        costs = [run_seconds(MetricsLog(os.path.dirname(p) or ".").read(), p) for p in measured]
        full = sum(costs) / len(costs)
        source = (f"measured: the mean over {len(costs)} full-data run{'s' if len(costs) > 1 else ''} of "
                  f"--accuracy full=RUN")
    else:
        if not overhead > 0:
            raise ValueError(f"--produce-overhead must be > 0, got {overhead}")
        full = produce / len(records) / overhead * planned
        source = (f"estimated: the produce run's mean epoch time / {overhead:g} (--produce-overhead) x {planned} "
                  f"epochs")
    rows = []
    for f in fractions:
        saving = (1.0 - float(f)) * full
        rows.append({"fraction": f, "later_run_seconds": float(f) * full, "saving_seconds": saving,
                     "pays_off_after": math.ceil(produce / saving - 1e-9) if saving > 0 else None})
    return {"metrics": log.path, "produce_seconds": produce, "produce_epochs": len(records),
            "planned_epochs": planned, "full_run_seconds": full, "full_run_source": source, "rows": rows,
            "stability": stability_series(records)}


def cost_reading(cost: dict) -> str:
    """The section's first sentence."""
    rows = [r for r in cost["rows"] if r["pays_off_after"] is not None]
    epochs = cost["produce_epochs"]
    said = (f"The produce run cost {cost['produce_seconds']:.0f} s ({epochs} epoch{'s' if epochs > 1 else ''}"
            + (f" of {cost['planned_epochs']} configured" if cost["planned_epochs"] != epochs else "")
            + f"); a full training run costs {cost['full_run_seconds']:.0f} s ({cost['full_run_source']}).")
    if rows:
        said += " Pruning pays off after " + ", ".join(
            f"{r['pays_off_after']} later run{'s' if r['pays_off_after'] != 1 else ''} at {r['fraction']}"
            for r in rows) + "."
    return said
