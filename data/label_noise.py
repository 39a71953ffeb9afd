"""Symmetric label noise for pruning experiments: a copy of a file list in which a given
share of the labels is replaced by another class, drawn uniformly.

    python -m data.label_noise LIST --rate 0.2 --output NOISY_LIST [--seed 0] [--num-classes K]

Exactly ``round(N * rate)`` lines get a new label, each different from its old one; every
other line, and the path of every line, is written as it was, so the noisy list trains
with the same data root and the history it produces lines up with the clean list line for
line. Beside the output, ``NOISY_LIST.flipped.npy`` (int64, ascending) holds the indices
(0-based, one per entry of the list) of the flipped lines: what a report needs to tell
how many mislabeled images a pruning method keeps. The same list, rate and seed always
give the same output.
"""
import argparse
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from dynunc.lists.file_list import FileListError, parse_line, read_lines
from dynunc.io import atomic_open, atomic_save_npy


def flipped_path(noisy_list: str) -> str:
    return noisy_list + ".flipped.npy"


def flip_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(new labels, flipped indices ascending): round(N * rate) labels, chosen uniformly
    without replacement, each moved to one of the other num_classes - 1 classes uniformly."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--rate must be in [0, 1], got {rate}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x6E6F6973])))
    count = int(round(len(labels) * rate))
    flipped = np.sort(rng.choice(len(labels), size=count, replace=False))
    # An offset in [1, K-1] added modulo K lands uniformly on every class but the old one.
    offsets = rng.integers(1, num_classes, size=count)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + offsets) % num_classes
    return noisy, flipped.astype(np.int64)


def noisy_lines(lines: Sequence[str], path: str, rate: float, seed: int,
                num_classes: Optional[int] = None) -> Tuple[List[str], np.ndarray]:
    """The lines of a file list with their labels flipped, and the flipped indices."""
    parsed = [parse_line(line.strip(), path, i + 1) for i, line in enumerate(lines)]
    labels = np.array([label for _, label in parsed], dtype=np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    noisy, flipped = flip_labels(labels, rate, num_classes, seed)
    out = list(lines)
    for i in flipped:
        out[i] = f"{parsed[i][0]} {noisy[i]}"
    return out, flipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.label_noise", description=__doc__.splitlines()[0])
    parser.add_argument("list", help="the clean file list")
    parser.add_argument("--rate", type=float, required=True, help="share of the lines to relabel, in [0, 1]")
    parser.add_argument("--output", required=True, help="noisy file list to write (and OUTPUT.flipped.npy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, help="number of classes (default: largest label + 1)")
    args = parser.parse_args(argv)
    try:
        lines = read_lines(args.list)
        if not lines:
            raise FileListError(f"{args.list}: the file list is empty")
        out, flipped = noisy_lines(lines, args.list, args.rate, args.seed, args.num_classes)
    except (FileListError, ValueError) as e:
        parser.error(str(e))
    atomic_save_npy(flipped_path(args.output), flipped)
    with atomic_open(args.output, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in out)
    print(f"relabelled {len(flipped)} of {len(out)} lines (rate {args.rate}, seed {args.seed}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
