"""Which samples each process reads, in which order, and the reading itself.

The order of an epoch is a pure function of (seed, epoch, rank, world size), so a run
resumed at epoch E sees exactly the data an uninterrupted run sees at epoch E.

- Training: one permutation of all N samples per epoch, the same on every rank; rank r
  takes the slice [r*S, (r+1)*S) with S = N // world_size, then only full batches
  (drop-last). The remainder is not seen that epoch (as in the paper's code). With
  dynamic pruning (dynunc/training/online_pruning.py) the epoch's order is a permutation of the
  kept samples instead, sharded by the same rule.
- Evaluation: every sample exactly once; rank r takes samples r, r+W, r+2W, ...; the
  last batch of a rank may be smaller. No padding, no duplicates.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

import numpy as np

from dynunc.lists.file_list import FileList
# The epoch order lives in the package (dynamic pruning plans it); re-exported here.
from dynunc.training.order import epoch_permutation, shard, shard_length  # noqa: F401


class DataError(RuntimeError):
    """Bad data found while loading: names the image and the file-list line."""


def train_shard(num_samples: int, seed: int, epoch: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """The sample indices rank `rank` trains on in `epoch`, in order (full batches only)."""
    shard_length(num_samples, world_size, batch_size)  # refuse before drawing the permutation
    return shard(epoch_permutation(num_samples, seed, epoch), rank, world_size, batch_size)


def eval_shard(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    return np.arange(rank, num_samples, world_size, dtype=np.int64)


def pipeline_seed(seed: int, epoch: int, rank: int) -> int:
    """DALI's seed for one epoch on one rank (random crops, flips, AutoAugment)."""
    return int(np.random.SeedSequence([seed, epoch, rank, 1]).generate_state(1)[0] & 0x7FFFFFFF)


def read_image_bytes(file_list: FileList, i: int) -> np.ndarray:
    """Entry `i`'s encoded image: its file, or (shards, a dataset: dynunc/lists/keyed.py) its bytes there."""
    if not isinstance(file_list, FileList):
        data = file_list.read(i)
        if data.size == 0:
            raise DataError(f"empty image at {file_list.where(i)}")
        return data
    path = file_list.full_path(i)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"missing image listed at {file_list.where(i)}") from None
    except OSError as e:
        raise DataError(f"cannot read image listed at {file_list.where(i)}: {e}") from None
    if data.size == 0:
        raise DataError(f"empty image file listed at {file_list.where(i)}")
    return data


class BatchReader:
    """Batch-mode callback for DALI's external_source: returns (encoded images, labels,
    indices) for one iteration, reading files ahead of time on a thread pool."""

    def __init__(self, file_list: FileList, order: np.ndarray, batch_size: int, threads: int = 4, lookahead: int = 3):
        self.file_list = file_list
        self.order = np.asarray(order)
        self.batch_size = batch_size
        self.num_batches = -(-len(self.order) // batch_size)
        self.lookahead = lookahead
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="image-reader")
        self.pending: Dict[int, list] = {}

    def batch_indices(self, iteration: int) -> np.ndarray:
        return self.order[iteration * self.batch_size : (iteration + 1) * self.batch_size]

    def _submit(self, iteration: int) -> None:
        if iteration < self.num_batches and iteration not in self.pending:
            self.pending[iteration] = [
                self.pool.submit(read_image_bytes, self.file_list, int(i)) for i in self.batch_indices(iteration)
            ]

    def __call__(self, info):
        it = info.iteration
        if it >= self.num_batches:
            raise StopIteration
        for ahead in range(it, it + self.lookahead + 1):
            self._submit(ahead)
        futures = self.pending.pop(it)
        images = [f.result() for f in futures]
        idx = self.batch_indices(it)
        labels = [np.asarray(self.file_list.labels[i], dtype=np.int64) for i in idx]
        indices = [np.asarray(i, dtype=np.int64) for i in idx]
        return images, labels, indices

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pending.clear()


def find_undecodable(file_list: FileList, indices: List[int]) -> List[str]:
    """Describe which of these images fail to decode (used to name the file behind a
    pipeline failure, which DALI reports without it)."""
    import io

    from PIL import Image

    bad = []
    for i in indices:
        try:
            with Image.open(io.BytesIO(read_image_bytes(file_list, int(i)).tobytes())) as im:
                im.load()
        except Exception as e:  # any decoder failure is what we are looking for
            bad.append(f"{file_list.where(int(i))}: {type(e).__name__}: {e}")
    return bad

