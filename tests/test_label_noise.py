"""Label noise for the pruning-curve experiment: exact count, every flipped label really
changes, the same seed gives the same list, the paths are untouched."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from data.label_noise import flip_labels, flipped_path, noisy_lines


def make_list(path, n, classes):
    lines = [f"/c{i % classes}/img {i}.png {i % classes}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.parametrize("n,rate,classes", [(1000, 0.2, 10), (37, 0.5, 2), (10, 0.0, 3), (9, 1.0, 4), (7, 0.3, 5)])
def test_flip_count_and_every_flip_changes(n, rate, classes):
    labels = np.arange(n) % classes
    noisy, flipped = flip_labels(labels, rate, classes, seed=3)
    assert len(flipped) == round(n * rate) == int((noisy != labels).sum())
    assert np.all(np.diff(flipped) > 0)
    assert np.all(noisy[flipped] != labels[flipped])
    unchanged = np.setdiff1d(np.arange(n), flipped)
    np.testing.assert_array_equal(noisy[unchanged], labels[unchanged])
    assert noisy.min() >= 0 and noisy.max() < classes


def test_new_labels_are_spread_over_the_other_classes():
    labels = np.zeros(20000, dtype=np.int64)
    noisy, flipped = flip_labels(labels, 0.5, 5, seed=0)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0
    # 10,000 draws over 4 classes: each near 2,500 (sd ~43)
    assert np.all(np.abs(counts[1:] - 2500) < 250)


def test_same_seed_same_list_other_seed_other_list(tmp_path):
    lines = make_list(tmp_path / "list.txt", 200, 7)
    a, fa = noisy_lines(lines, "list.txt", 0.2, seed=1)
    b, fb = noisy_lines(lines, "list.txt", 0.2, seed=1)
    c, fc = noisy_lines(lines, "list.txt", 0.2, seed=2)
    assert a == b and fa.tolist() == fb.tolist()
    assert a != c


def test_cli_writes_list_and_flipped_indices(tmp_path):
    clean = tmp_path / "list.txt"
    lines = make_list(clean, 50, 5)
    out = tmp_path / "noisy.txt"
    proc = subprocess.run([sys.executable, "-m", "data.label_noise", str(clean), "--rate", "0.2", "--seed", "4",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = out.read_text().splitlines()
    flipped = np.load(flipped_path(str(out)))
    assert len(written) == 50 and len(flipped) == 10
    for i, (old, new) in enumerate(zip(lines, written)):
        old_path, old_label = old.rsplit(maxsplit=1)
        new_path, new_label = new.rsplit(maxsplit=1)
        assert new_path == old_path  # paths with spaces survive
        assert (old_label != new_label) == (i in set(flipped.tolist()))


def test_cli_refuses_bad_rate_and_writes_nothing(tmp_path):
    clean = tmp_path / "list.txt"
    make_list(clean, 10, 3)
    out = tmp_path / "noisy.txt"
    proc = subprocess.run([sys.executable, "-m", "data.label_noise", str(clean), "--rate", "1.5",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--rate" in proc.stderr
    assert not out.exists() and not (tmp_path / "noisy.txt.flipped.npy").exists()
