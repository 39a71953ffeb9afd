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
from typing import Dict, List

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
