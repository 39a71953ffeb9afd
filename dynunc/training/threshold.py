"""AUM's threshold samples in a produce run (PRODUCE.THRESHOLD_SAMPLES; Pleiss et al. 2020,
"Identifying mislabeled data using the area under the margin ranking"): N // (C + 1)
training images, chosen by a fixed seeded permutation of the list, are trained under an
extra class C (the model gets C + 1 outputs), so that they are mislabelled on purpose;
their margins tell how low the mean margin of a mislabelled image goes, and the 99th
percentile of their mean margins is the cut of --label-score aum (dynunc/scoring/label_issues.py).
Set 1 and set 2 are disjoint: AUM's two runs, each scoring the images the other relabels.
The run's history records which images and which class (history.py's write_threshold).
"""
from typing import List, Optional, Tuple

import numpy as np

from dynunc.history import write_threshold

SETS = (1, 2)
_SALT = 0x41554D  # "AUM": the permutation is the same for every SEED, so sets 1 and 2 stay disjoint


def threshold_indices(num_samples: int, num_classes: int, which: int) -> np.ndarray:
    """The indices (ascending) of threshold set `which` (1 or 2): N // (C + 1) images each, disjoint."""
    if which not in SETS:
        raise ValueError(f"PRODUCE.THRESHOLD_SAMPLES must be 0 (none), 1 or 2, got {which!r}")
    size = num_samples // (num_classes + 1)
    order = np.random.default_rng([_SALT, num_samples]).permutation(num_samples)
    return np.sort(order[(which - 1) * size:which * size]).astype(np.int64)


def check_config(config) -> List[str]:
    which = config.PRODUCE.THRESHOLD_SAMPLES
    if isinstance(which, bool) or which not in (0,) + SETS:
        return [f"PRODUCE.THRESHOLD_SAMPLES must be 0 (none), 1 or 2 (AUM's two disjoint sets), got {which!r}"]
    return []


def relabel(config, train) -> Optional[Tuple[int, np.ndarray]]:
    """In a run with threshold samples: give the training list's threshold samples the extra
    class MODEL.NUM_CLASSES (a copy of its labels) and return (extra class, indices); the
    caller builds the model with one more output. None when PRODUCE.THRESHOLD_SAMPLES is 0."""
    which = config.PRODUCE.THRESHOLD_SAMPLES
    if not which:
        return None
    extra = config.MODEL.NUM_CLASSES
    indices = threshold_indices(len(train), extra, which)
    labels = np.array(train.labels, dtype=np.int32)
    labels[indices] = extra
    train.labels = labels
    return extra, indices


def record(hdir: str, config, extra_class: int, indices: np.ndarray) -> None:
    """Rank 0, once as the run starts: threshold.json and threshold_samples.npy beside the history."""
    write_threshold(hdir, extra_class, config.PRODUCE.THRESHOLD_SAMPLES, indices)
