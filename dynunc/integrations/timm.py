"""timm's train.py: the indices of its batches, from the loader's own sampler.

timm's loaders yield (input, target) without the samples' indices, so `IndexQueue`
wraps the sampler inside the loader's batch sampler: each index the sampler gives is
queued as the loader forms its batches (in the main process, in order, whatever the
workers and the prefetcher do), and the loop takes the first B of them for a batch of
B. A new pass of the sampler (a new epoch) starts a new queue: the drop-last remainder
never leaks into the next epoch. The lines to add to timm's train.py (timm 1.0):

    # after loader_train = create_loader(...):
    from dynunc import Recorder
    from dynunc.integrations.timm import IndexQueue
    batch_indices = IndexQueue(loader_train)
    recorder = Recorder(os.path.join(output_dir or ".", "dynunc"), num_samples=len(dataset_train),
                        start_epoch=start_epoch)
    # in train_one_epoch, after `output = model(input)` (pass recorder, batch_indices in):
    recorder.update(batch_indices.take(input.shape[0]), output.detach(), target)
    # at the end of each epoch in main(), after train_one_epoch(...):
    recorder.end_epoch(epoch)

With Mixup/CutMix the targets are soft: record the hard labels instead,
`labels[batch_indices.take(...)]` with `labels` the dataset's (e.g. a tensor of
`dataset_train.reader.samples`' targets). With --aug-repeats (RepeatAugSampler) a
sample is repeated within an epoch, which the recorder refuses."""
from collections import deque
from typing import Iterator

import torch


class _Recording:
    """A sampler whose indices are queued as they are drawn."""

    def __init__(self, sampler, queue: "IndexQueue"):
        self.sampler, self.queue = sampler, queue

    def __iter__(self) -> Iterator[int]:
        self.queue.pending.clear()  # a new pass: the last one's remainder is not this one's
        for index in self.sampler:
            self.queue.pending.append(int(index))
            yield index

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:  # DistributedSampler's
        self.sampler.set_epoch(epoch)

    def __getattr__(self, name):
        return getattr(self.sampler, name)


class IndexQueue:
    """The dataset indices of the batches `loader` yields (module docstring). `loader`:
    a DataLoader or timm's PrefetchLoader around one."""

    def __init__(self, loader):
        inner = getattr(loader, "loader", loader)  # PrefetchLoader keeps the DataLoader as .loader
        batch_sampler = getattr(inner, "batch_sampler", None)
        if batch_sampler is None or not hasattr(batch_sampler, "sampler"):
            raise TypeError(f"{type(loader).__name__}: no batch sampler with a sampler to read the indices from "
                            f"(use_multi_epochs_loader is not supported)")
        self.pending = deque()
        batch_sampler.sampler = _Recording(batch_sampler.sampler, self)

    def take(self, count: int) -> torch.Tensor:
        """The indices of the next batch of `count` samples, in the batch's order."""
        if len(self.pending) < count:
            raise RuntimeError(f"IndexQueue: a batch of {count} but only {len(self.pending)} indices were drawn; "
                               f"take() once per batch of this loader")
        return torch.tensor([self.pending.popleft() for _ in range(count)], dtype=torch.int64)
