"""The report's cost section (dynunc/report/cost.py): produce cost from the produce run's
metrics.jsonl, a full run's cost measured (--accuracy full=RUN) or estimated, the runs
after which pruning pays off, and the coreset stability figure on the page's own
settings (dynunc/report/stability.py), whatever window the produce run tracked."""
import json
import math
import os

import numpy as np
import pytest

from PIL import Image

from dynunc.report import figures as report_figures
from dynunc.history import SPEARMAN_KEY, STOPPED_KEY, VS_EPOCH_KEY
from dynunc.training.stability import StabilityTracker, overlap_key
from test_report import K, N, base, run_cli, s  # noqa: F401

FRACTIONS = ["0.5", "0.25"]


def write_metrics(folder, records, epochs=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if epochs is not None:
        (folder / "config.yaml").write_text(f"TRAIN:\n  EPOCHS: {epochs}\n")


def produce_records():
    """Seven epochs of 10 s, stability from epoch 4 on, stopped after epoch 6 (of 10)."""
    records = []
    for epoch in range(7):
        r = {"epoch": epoch, "train_loss": 1.0, "epoch_time": 10.0, "acc1": 50.0}
        if epoch >= 4:
            r.update({VS_EPOCH_KEY: epoch - 1, overlap_key(0.5): [0.8, 0.85, 0.9][epoch - 4],
                      overlap_key(0.75): 0.9, SPEARMAN_KEY: float("nan") if epoch == 4 else 0.95})
        records.append(r)
    records[-1][STOPPED_KEY] = True
    return records


def report_numbers(s, *extra):
    code, _, err = run_cli(base(s, "--window", 3, "--method", "dynunc", "random", "--fraction", *FRACTIONS, *extra))
    assert code == 0, err
    return json.loads((s["out"] / "report.json").read_text()), (s["out"] / "index.html").read_text()


def test_cost_estimated_from_the_produce_run_and_the_stability_figure(s):
    write_metrics(s["run"], produce_records(), epochs=10)
    numbers, page = report_numbers(s, "--produce-overhead", "1.25")
    cost = numbers["cost"]
    assert cost["produce_seconds"] == 70.0 and cost["produce_epochs"] == 7 and cost["planned_epochs"] == 10
    assert cost["full_run_seconds"] == 10.0 / 1.25 * 10  # 80 s: a whole configured run, without produce's overhead
    assert "estimated" in cost["full_run_source"]
    rows = {r["fraction"]: r for r in cost["rows"]}
    assert rows["0.5"]["saving_seconds"] == 40.0 and rows["0.5"]["pays_off_after"] == 2  # 70 / 40 -> 2
    assert rows["0.25"]["later_run_seconds"] == 20.0 and rows["0.25"]["pays_off_after"] == math.ceil(70 / 60)
    logged = cost["stability"]  # what the produce run logged, kept in report.json
    assert logged["epochs"] == [4, 5, 6] and logged["vs_epochs"] == [3, 4, 5]
    assert logged["overlap"] == {"0.5": [0.8, 0.85, 0.9], "0.75": [0.9, 0.9, 0.9]}
    assert logged["spearman"] == [None, 0.95, 0.95] and logged["stopped_after"] == 6
    with Image.open(s["out"] / "stability.png") as image:
        assert image.size == report_figures.stability_curve_size()
    assert numbers["stability"]["stopped_after"] == 6  # the figure marks where the produce run stopped
    assert 'id="cost"' in page and "stability.png" in page and "Pruning pays off after 2 later runs at 0.5" in page


@pytest.mark.parametrize("window", [2, 3])
def test_stability_is_on_the_window_the_page_selects_with(s, window):
    """The produce run logged its tracking at another window (its TRACK_WINDOW); the page
    draws the stability of the coreset it selects itself, at its --window and fractions:
    what produce mode's tracker gives at that window, epoch by epoch."""
    write_metrics(s["run"], produce_records(), epochs=10)
    code, _, err = run_cli(base(s, "--window", window, "--method", "dynunc", "random", "--fraction", *FRACTIONS))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    page = (s["out"] / "index.html").read_text()
    tracker = StabilityTracker(N, window, [float(f) for f in FRACTIONS], delta=1, threads=1)
    expected = [(e, tracker.push(e, np.load(os.path.join(s["hdir"], f"prob_{e}.npy")))) for e in range(K)]
    tracker.close()
    expected = [(e, m) for e, m in expected if m]
    series = numbers["stability"]
    assert series["window"] == window and series["epochs"] == [e for e, _ in expected]
    assert series["vs_epochs"] == [m[VS_EPOCH_KEY] for _, m in expected]
    for f in FRACTIONS:
        assert series["overlap"][f] == pytest.approx([m[overlap_key(float(f))] for _, m in expected])
    assert series["spearman"] == pytest.approx([m[SPEARMAN_KEY] for _, m in expected])
    assert series["overlap"]["0.5"] != numbers["cost"]["stability"]["overlap"]["0.5"]  # not the logged series
    assert f"dynunc at --window {window}, as this page selects" in page


def test_cost_measured_from_full_runs(s, tmp_path):
    write_metrics(s["run"], produce_records(), epochs=10)
    for seed, seconds in ((0, 9.0), (1, 11.0)):
        write_metrics(tmp_path / f"full_s{seed}", [{"epoch": e, "epoch_time": seconds, "acc1": 90.0}
                                                   for e in range(10)], epochs=10)
    numbers, _ = report_numbers(s, "--accuracy", f"full={tmp_path / 'full_s0'}", f"full={tmp_path / 'full_s1'}")
    cost = numbers["cost"]
    assert cost["full_run_seconds"] == 100.0 and "measured" in cost["full_run_source"]
    assert {r["fraction"]: r["pays_off_after"] for r in cost["rows"]} == {"0.5": 2, "0.25": 1}  # 70/50, 70/75


def test_no_metrics_no_cost_and_no_dynunc_no_stability(s):
    numbers, page = report_numbers(s)
    assert numbers["cost"] is None and "cost is unknown" in page
    assert numbers["stability"]["window"] == 3 and (s["out"] / "stability.png").exists()  # from the history alone
    write_metrics(s["run"], [{"epoch": e, "epoch_time": 5.0} for e in range(3)])
    s["out"] = s["tmp"] / "report_random"
    code, _, err = run_cli(base(s, "--method", "random", "--fraction", *FRACTIONS))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["cost"]["produce_seconds"] == 15.0 and numbers["cost"]["stability"] is None
    assert numbers["stability"] is None and not (s["out"] / "stability.png").exists()
    assert "Coreset stability: not shown" in (s["out"] / "index.html").read_text()


def test_one_epoch_of_stability_is_a_sentence(s):
    """Window 5 of 7 epochs: scores from epoch 5 on, one comparison (epoch 6 against 5)."""
    code, _, err = run_cli(base(s, "--window", 5, "--method", "dynunc", "--fraction", *FRACTIONS))
    assert code == 0, err
    numbers = json.loads((s["out"] / "report.json").read_text())
    assert numbers["stability"]["epochs"] == [6] and not (s["out"] / "stability.png").exists()
    assert "the coresets from the epochs up to 5 and up to 6 share" in (s["out"] / "index.html").read_text()


def test_a_record_without_epoch_time_is_refused_naming_the_file(s):
    write_metrics(s["run"], [{"epoch": 0, "epoch_time": 5.0}, {"epoch": 1}])
    code, out, err = run_cli(base(s, "--window", 3, "--method", "random", "--fraction", "0.5"))
    assert code == 2 and "metrics.jsonl: epoch 1 has no epoch_time" in err
    assert not s["out"].exists()
