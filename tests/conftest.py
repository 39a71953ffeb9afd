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
