"""Produce mode's top-k class probabilities (PRODUCE.TOPK.K, PRODUCE.TOPK.EPOCHS): for the
chosen epochs, each training sample's k largest softmax probabilities and their classes,
from the same eval-view forward as the other records (dynunc/training/recorder.py), so
that confident learning (cleanlab's find_label_issues) and the suggested label of a
suspected label error can be computed from the one produce run
(dynunc/scoring/label_issues.py).

Like the other records: held on the device for the epoch (N x k probabilities and
classes, -1 = unseen), gathered by one MAX all-reduce per recorded epoch (each sample is
seen by at most one rank per epoch), written by rank 0 (history.py's layout) before
prob_{epoch}. The buffers exist only during the recorded epochs.
"""
from typing import List, Optional, Sequence

import torch

from dynunc.history import write_topk, write_topk_meta
from dynunc.training.embeddings import resolve_epochs
from dynunc.distributed import all_reduce_

CONFIG_KEYS = "PRODUCE.TOPK.K and PRODUCE.TOPK.EPOCHS"


def topk_epochs(epochs: Sequence[int], num_epochs: int) -> List[int]:
    """PRODUCE.TOPK.EPOCHS resolved (embeddings.resolve_epochs: [] is the last epoch, a
    negative value counts from the end)."""
    return resolve_epochs("PRODUCE.TOPK.EPOCHS", epochs, num_epochs)


def check_config(config) -> List[str]:
    """Problems in PRODUCE.TOPK, each naming its key (k larger than MODEL.NUM_CLASSES among them)."""
    k = config.PRODUCE.TOPK.K
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        return [f"PRODUCE.TOPK.K must be 0 (no top-k records) or a positive count, got {k!r}"]
    if k == 0:
        return []
    if k > config.MODEL.NUM_CLASSES:
        return [f"PRODUCE.TOPK.K {k} is larger than MODEL.NUM_CLASSES {config.MODEL.NUM_CLASSES}"]
    try:
        topk_epochs(config.PRODUCE.TOPK.EPOCHS, config.TRAIN.EPOCHS)
    except ValueError as e:
        return [str(e)]
    return []


class TopKRecorder:
    """Driven by the Recorder (dynunc/training/recorder.py): `start(epoch)`, `record(logits,
    indices)` per batch (an index N, the Recorder's trash for an index out of range, lands
    in a row that is never written), `finish(epoch)` after the epoch (collective: every
    rank calls it)."""

    def __init__(self, num_samples: int, k: int, num_classes: int, epochs: Sequence[int], hdir: str,
                 device: torch.device, is_primary: bool):
        if not 1 <= k <= num_classes:
            raise ValueError(f"PRODUCE.TOPK.K {k} must lie in 1..{num_classes} (MODEL.NUM_CLASSES)")
        self.num_samples, self.k, self.num_classes = num_samples, k, num_classes
        self.epochs = frozenset(epochs)
        self.hdir, self.device, self.is_primary = hdir, device, is_primary
        self.probs: Optional[torch.Tensor] = None
        self.classes: Optional[torch.Tensor] = None

    def start(self, epoch: int) -> None:
        if epoch in self.epochs:
            self.probs = torch.full((self.num_samples + 1, self.k), -1.0, dtype=torch.float32, device=self.device)
            self.classes = torch.full((self.num_samples + 1, self.k), -1, dtype=torch.int32, device=self.device)
        else:
            self.probs = self.classes = None

    def record(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        if self.probs is None:
            return
        values, classes = torch.softmax(logits.float(), dim=-1).topk(self.k, dim=-1)
        self.probs.index_copy_(0, indices, values)
        self.classes.index_copy_(0, indices, classes.to(torch.int32))

    def finish(self, epoch: int) -> None:
        if self.probs is None:
            return
        all_reduce_(self.probs, op=torch.distributed.ReduceOp.MAX)
        all_reduce_(self.classes, op=torch.distributed.ReduceOp.MAX)
        if self.is_primary:
            write_topk_meta(self.hdir, self.k, self.num_classes)
            write_topk(self.hdir, epoch, self.probs[:self.num_samples].cpu().numpy(),
                       self.classes[:self.num_samples].cpu().numpy(), self.num_classes)
        self.probs = self.classes = None
