"""The pruning-curve script end to end on a tiny setting: the embedded MNIST data with 20%
of the labels flipped, one produce epoch, two methods, two fractions, one seed."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


@pytest.mark.slow
def test_tiny_noisy_curve(tmp_path):
    out = tmp_path / "curve"
    cmd = [sys.executable, "scripts/pruning_curve.py", "--output", str(out), "--label-noise", "0.2",
           "--methods", "el2n", "random", "--fractions", "0.5", "0.3", "--seeds", "0", "--epochs", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["fraction"]) for r in rows) == [
        ("el2n", "0.3"), ("el2n", "0.5"), ("full", "1.0"), ("random", "0.3"), ("random", "0.5")]
    flipped = np.load(out / "train_noisy.txt.flipped.npy")
    assert len(flipped) == 800  # 20% of the 4,000 training images
    for r in rows:
        assert r["labels"] == "noise0.2" and r["seed"] == "0"
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 100.0
        expected = 4000 if r["method"] == "full" else int(4000 * float(r["fraction"]))
        assert int(r["images"]) == expected
        assert 0.0 <= float(r["flipped_kept"]) <= 1.0
    # The share of flipped images in a coreset, recomputed from the coreset itself.
    with open(out / "train_noisy.txt") as f:
        index_of = {line.rstrip("\n"): i for i, line in enumerate(f)}
    with open(out / "coresets" / "seed0" / "el2n_0.5.txt") as f:
        kept = [index_of[line.rstrip("\n")] for line in f]
    row = next(r for r in rows if r["method"] == "el2n" and r["fraction"] == "0.5")
    assert float(row["flipped_kept"]) == pytest.approx(np.isin(flipped, kept).mean(), abs=1e-4)
    with Image.open(out / "curve.png") as im:
        assert im.size == (960, 600)
    table = (out / "curve.md").read_text()
    assert "| el2n |" in table and "share of the flipped" in table


def _curve_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pruning_curve", os.path.join(ROOT, "scripts", "pruning_curve.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_table_means_and_spreads():
    curve = _curve_module()
    rows = [dict(labels="noise0.2", method="full", fraction=1.0, seed=s, images=10, top1=t, top5=99.0,
                 flipped_kept=1.0) for s, t in ((0, 90.0), (1, 92.0))]
    rows += [dict(labels="noise0.2", method="aum", fraction=f, seed=s, images=5, top1=t, top5=99.0, flipped_kept=k)
             for f, s, t, k in ((0.5, 0, 80.0, 0.1), (0.5, 1, 84.0, 0.3), (0.3, 0, 70.0, 0.2), (0.3, 1, 70.0, 0.2))]
    table = curve.summary(rows)
    lines = table.splitlines()
    assert "| method | keep 0.5 | keep 0.3 |" in lines
    assert "| full | 91.00 +- 1.00 | 91.00 +- 1.00 |" in lines  # full data: the same row under every fraction
    assert "| aum | 82.00 +- 2.00 | 70.00 +- 0.00 |" in lines
    assert "| aum | 20.0% | 20.0% |" in lines  # flipped share: means of 0.1/0.3 and 0.2/0.2
