"""The order of a training epoch: a pure function of (seed, epoch), the same on every
rank, and each rank's equal share of it (full batches only). The research layout's
reader (data/reader.py) reads in this order; dynamic pruning (online_pruning.py)
plans its epochs with it."""
import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    dtype = np.int32 if num_samples < 2**31 else np.int64
    return rng.permutation(num_samples).astype(dtype, copy=False)


def shard_length(num_samples: int, world_size: int, batch_size: int) -> int:
    """How many samples each rank trains on in an epoch over `num_samples` (full batches
    of its equal share only); ValueError if that is not even one batch."""
    per_rank = num_samples // world_size
    used = (per_rank // batch_size) * batch_size
    if used == 0:
        raise ValueError(
            f"{num_samples} training samples over {world_size} process(es) give fewer than one "
            f"full batch of {batch_size} per process; lower DATA.BATCH_SIZE_TRAIN"
        )
    return used


def shard(order: np.ndarray, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """Rank `rank`'s part of an epoch's `order` (the same array on every rank): the slice
    [r*S, r*S + used) with S = len(order) // world_size (drop-last, shard_length)."""
    used = shard_length(len(order), world_size, batch_size)
    per_rank = len(order) // world_size
    return order[rank * per_rank : rank * per_rank + used]
