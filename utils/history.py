"""The prediction history that produce mode records and get_coreset.py scores.

Layout, under ``OUTPUT/pred_prob_history/``:

- ``prob_{epoch}.npy``: float32, one value per line of the full training file list:
  the softmax probability of the true label on the eval view, NaN where the sample
  was not seen that epoch (drop-last remainder);
- ``correct_{epoch}.npy``: int8, 1 if the top-1 prediction was the true label, 0 if
  not, -1 where unseen.

The paper's code wrote ``prob_{epoch}.txt`` (np.savetxt, 0 = unseen); get_coreset.py
reads that too. Files are written atomically, so an epoch file is either complete or
absent.
"""
import os
import re
import warnings
from typing import Dict, List, Optional

import numpy as np

from utils.io import atomic_save_npy

HISTORY_DIRNAME = "pred_prob_history"
_EPOCH_FILE = re.compile(r"^prob_(\d+)\.(npy|txt)$")


def history_dir(output: str) -> str:
    return os.path.join(output, HISTORY_DIRNAME)


def prob_path(hdir: str, epoch: int) -> str:
    return os.path.join(hdir, f"prob_{epoch}.npy")


def correct_path(hdir: str, epoch: int) -> str:
    return os.path.join(hdir, f"correct_{epoch}.npy")


def list_epoch_files(hdir: str) -> Dict[int, str]:
    """{epoch: path} of the probability files in `hdir` (.npy preferred over .txt)."""
    found: Dict[int, str] = {}
    if not os.path.isdir(hdir):
        return found
    for name in os.listdir(hdir):
        m = _EPOCH_FILE.match(name)
        if not m:
            continue
        epoch = int(m.group(1))
        if epoch not in found or m.group(2) == "npy":
            found[epoch] = os.path.join(hdir, name)
    return dict(sorted(found.items()))


def write_epoch(hdir: str, epoch: int, prob: np.ndarray, correct: np.ndarray) -> None:
    """Write one epoch's record atomically (correct first, prob last: prob marks completion)."""
    atomic_save_npy(correct_path(hdir, epoch), np.asarray(correct, dtype=np.int8))
    atomic_save_npy(prob_path(hdir, epoch), np.asarray(prob, dtype=np.float32))


def remove_epochs_from(hdir: str, first_epoch: int) -> List[int]:
    """Delete the records of epochs >= first_epoch (a restart from an older checkpoint
    rewrites them). Returns the epochs removed."""
    removed = []
    for epoch, path in list_epoch_files(hdir).items():
        if epoch >= first_epoch:
            for p in (path, correct_path(hdir, epoch)):
                if os.path.exists(p):
                    os.remove(p)
            removed.append(epoch)
    return removed


# -----------------------------------------------------------------------------
# Reading (get_coreset.py)
# -----------------------------------------------------------------------------
class HistoryError(ValueError):
    """A problem with a prediction history, naming the folder or file."""


def find_history_dir(path: str) -> str:
    """The history folder for `path`: ``path/pred_prob_history`` if it exists (a produce
    run's output folder), else `path` itself if it holds epoch files. HistoryError if
    neither has any."""
    for candidate in (history_dir(path), path):
        if list_epoch_files(candidate):
            return candidate
    raise HistoryError(
        f"no prediction history in {path!r}: expected prob_<epoch>.npy or prob_<epoch>.txt "
        f"files in {history_dir(path)!r} or in {path!r} itself"
    )


def contiguous_epoch_files(hdir: str) -> List[str]:
    """The epoch files of `hdir` in epoch order 0..K-1. HistoryError if there are none or
    if an epoch number is missing (a missing epoch would silently shift every window)."""
    files = list_epoch_files(hdir)
    if not files:
        raise HistoryError(f"no prediction history in {hdir!r}")
    expected = range(max(files) + 1)
    missing = [e for e in expected if e not in files]
    if missing:
        shown = ", ".join(str(e) for e in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise HistoryError(
            f"{hdir}: epoch {missing[0]} is missing (epochs must run 0..{max(files)} without a gap; "
            f"{len(missing)} missing: {shown})"
        )
    return [files[e] for e in expected]


def load_epoch_prob(path: str, expected_len: Optional[int] = None, mmap: bool = False) -> np.ndarray:
    """One epoch's probabilities as a 1-D float array, NaN where the sample was unseen.

    ``.npy`` (ours): returned as stored (float32), NaN already marks unseen, and a stored
    0.0 is a real probability. With `mmap`, a read-only memory map of the file (no copy
    out of the page cache; history files are replaced atomically, never rewritten in
    place, so the map stays valid). ``.txt`` (the paper's np.savetxt, one value per line):
    float64, and an exact 0 means unseen (the paper's encoding) and becomes NaN.
    HistoryError, naming the file, if it cannot be parsed, is not 1-D floats, holds
    +-inf, or (with `expected_len`) has the wrong length.
    """
    try:
        if path.endswith(".npy"):
            prob = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
            if prob.dtype.kind != "f":
                raise HistoryError(f"{path}: expected floating-point values, found dtype {prob.dtype}")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "empty input file"
                prob = np.loadtxt(path, dtype=np.float64, ndmin=1, comments=None)
            prob[prob == 0] = np.nan
    except HistoryError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise HistoryError(f"{path}: cannot be read as a probability history file: {e}") from None
    if prob.ndim != 1:
        raise HistoryError(f"{path}: expected one value per sample (1-D), found shape {prob.shape}")
    if expected_len is not None and len(prob) != expected_len:
        raise HistoryError(
            f"{path}: has {len(prob)} values but the file list has {expected_len} lines"
        )
    if np.isinf(prob).any():
        raise HistoryError(f"{path}: holds infinite values (first at index {int(np.flatnonzero(np.isinf(prob))[0])})")
    return prob
