"""Shared test fixtures: small real image trees in the paper's file-list format."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Colours that make the classes learnable from a few images.
_PALETTE = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 30], [200, 40, 220], [30, 210, 210]])


def make_image_tree(root, num_classes=3, per_class=8, size=(24, 20), fmt="JPEG", seed=0):
    """ROOT/c<k>/img_<i>.<ext> noisy solid-colour images + ROOT/file_list.txt.
    Returns the list of lines written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    lines = []
    for label in range(num_classes):
        cls = f"c{label:02d}"
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
            pixels = np.clip(_PALETTE[label % len(_PALETTE)] + noise, 0, 255).astype(np.uint8)
            name = f"img_{i:03d}.{ext}"
            Image.fromarray(pixels).save(os.path.join(root, cls, name), format=fmt)
            lines.append(f"/{cls}/{name} {label}")
    with open(os.path.join(root, "file_list.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


@pytest.fixture
def image_tree(tmp_path):
    """A train tree (3 classes x 10) and a val tree (3 classes x 5)."""
    train, val = tmp_path / "train", tmp_path / "val"
    make_image_tree(str(train), per_class=10, seed=0)
    make_image_tree(str(val), per_class=5, seed=1)
    return train, val


def write_full_history(list_path, run_dir, level, epochs, rng, noise=0.2, kinds=("margin", "el2n")):
    """A produce run's history for a list of len(level) lines: per epoch, p(true label)
    drawn around `level` (clipped to [0, 1]), correct = p > 0.5, a margin and an EL2N that
    follow p with noise, about 10% of the samples unseen (NaN, -1), and the list's
    fingerprint. `kinds`: which of margin and el2n are written. Returns the history folder."""
    from dynunc.lists.index import open_index
    from dynunc.history import history_dir, write_epoch, write_fingerprint

    n = len(level)
    hdir = history_dir(str(run_dir))
    for epoch in range(epochs):
        prob = np.clip(level + rng.normal(0, noise, n), 0, 1).astype(np.float32)
        unseen = rng.random(n) < 0.1
        correct = (prob > 0.5).astype(np.int8)
        margin = (rng.normal(0, 2, n) + 4 * (prob - 0.5)).astype(np.float32)
        el2n = ((1 - prob) * 1.2).astype(np.float32)
        for values in (prob, margin, el2n):
            values[unseen] = np.nan
        correct[unseen] = -1
        write_epoch(hdir, epoch, prob, correct, margin=margin if "margin" in kinds else None,
                    el2n=el2n if "el2n" in kinds else None)
    write_fingerprint(hdir, open_index(str(list_path)).fingerprint())
    return hdir


def run_main(main, args):
    """(exit code, stdout, stderr) of a command's `main(argv)` run in this process, as the
    shell would see them (an argparse exit included)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def restore_root_logging():
    """The root logger's handlers and level as they were before the test (main.py's
    commands, run in this process, replace them)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
