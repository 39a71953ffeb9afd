"""scripts/cheaper_scoring.py: the window a prefix allows, the cheapest setting within the
full history's seed spread, the stopping rule replayed on a history, the tables; and, as a
slow test, the script end to end on a tiny curve."""
import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, write_full_history


def _module():
    spec = importlib.util.spec_from_file_location("cheaper_scoring", os.path.join(ROOT, "scripts", "cheaper_scoring.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cs = _module()


def test_window_for_a_prefix():
    assert [cs.window_for(e, 3) for e in (2, 3, 4, 6, 8)] == [(2, True), (2, False), (3, False), (3, False),
                                                               (3, False)]
    with pytest.raises(ValueError, match="1 epoch"):
        cs.window_for(1, 3)


def rows_of(spec):
    """spec: {(labels, setting): (cost, {fraction: [top1 per seed]})}."""
    rows = []
    for (labels, setting), (cost, by_fraction) in spec.items():
        for fraction, tops in by_fraction.items():
            for seed, top1 in enumerate(tops):
                rows.append(dict(labels=labels, setting=setting, produce_epochs=8, window=3, include_last=False,
                                 produce_seconds=cost, fraction=fraction, seed=seed, top1=top1, flipped_kept="",
                                 overlap_with_full=0.9))
    return rows


def test_cheapest_within_spread_needs_every_cell():
    full = {0.5: [95.0, 96.0, 97.0], 0.3: [90.0, 91.0, 92.0]}  # mean 96 / 91, std 0.82
    rows = rows_of({
        ("clean", cs.FULL_HISTORY): (40.0, full), ("noisy", cs.FULL_HISTORY): (40.0, full),
        # cheapest, but far below at 0.3 with noisy labels
        ("clean", "history 25%"): (10.0, {0.5: [96.0] * 3, 0.3: [91.0] * 3}),
        ("noisy", "history 25%"): (10.0, {0.5: [96.0] * 3, 0.3: [80.0] * 3}),
        # within the spread: 95.2 + 0 >= 96 - 0.82 and 90.2 + 0 >= 91 - 0.82
        ("clean", "history 50%"): (20.0, {0.5: [95.2] * 3, 0.3: [90.2] * 3}),
        ("noisy", "history 50%"): (20.0, {0.5: [95.2] * 3, 0.3: [90.2] * 3}),
    })
    cheapest, ok = cs.cheapest_within_spread(rows)
    assert ok == {cs.FULL_HISTORY: True, "history 25%": False, "history 50%": True}
    assert cheapest == "history 50%"
    text = cs.table(rows, [0.5, 0.3])
    assert "| history 25% | 8 | 3 | 10.0 | 96.00 ± 0.00 | 91.00 ± 0.00 | 90.0% | 90.0% |" in text


def test_stopping_replays_the_tracker_on_the_curves_history(tmp_path):
    folder = tmp_path / "clean"
    data = folder / "data" / "train"
    data.mkdir(parents=True)
    (data / "file_list.txt").write_text("".join(f"/c{i % 2}/{i}.png {i % 2}\n" for i in range(50)))
    rng = np.random.default_rng(0)
    level = rng.random(50)
    # Little noise around fixed levels: the coreset settles within a few epochs.
    write_full_history(data / "file_list.txt", folder / "produce", level, 8, rng, noise=0.02)
    result = cs.stopping(cs.Curve.open(str(folder)), 3, [0.5, 0.3])
    tracked = [r for r in result["records"] if "stability_vs_epoch" in r]
    assert [r["epoch"] for r in tracked] == [4, 5, 6, 7] and result["epochs"] == 8
    for (overlap, patience, fraction), epoch in result["stops"].items():
        key = f"stability_overlap_{fraction:g}"
        streak, expected = 0, None
        for r in tracked:
            streak = streak + 1 if r[key] >= overlap else 0
            if streak >= patience:
                expected = r["epoch"]
                break
        assert epoch == expected, (overlap, patience, fraction)


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    curves = tmp_path / "curves"
    proc = subprocess.run([sys.executable, "scripts/pruning_curve.py", "--output", str(curves / "clean"), "--methods",
                           "dynunc", "--fractions", "0.5", "--seeds", "0", "--epochs", "4", "--nproc", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "cheaper"
    cmd = [sys.executable, "scripts/cheaper_scoring.py", "--curves", str(curves), "--labels", "clean", "--output",
           str(out), "--fractions", "0.5", "--seeds", "0", "--epochs", "4", "--shares", "0.5", "--proxies",
           "proxy 16 px", "--nproc", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "cheaper_scoring.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["setting"] for r in rows) == ["history 100%", "history 50%", "proxy 16 px"]
    by = {r["setting"]: r for r in rows}
    assert by["history 50%"]["produce_epochs"] == "2" and by["history 50%"]["window"] == "2"
    assert float(by["history 50%"]["produce_seconds"]) < float(by["history 100%"]["produce_seconds"])
    assert by["history 100%"]["overlap_with_full"] == "1.0"
    with open(out / "clean" / "produce_proxy_16_px" / "config.yaml") as f:
        assert "IMG_SIZE: 16" in f.read()
    with Image.open(out / "cheaper_scoring.png") as im:
        assert im.size == (600, 500)
    assert "Cheapest such setting" in (out / "cheaper_scoring.md").read_text()
    # Rerun: everything is kept, nothing retrained.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "] + " not in proc.stdout  # no command run again
