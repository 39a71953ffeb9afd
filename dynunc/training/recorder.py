"""Produce mode: the hook that records, for every training sample, on the un-augmented
view and with the weights as they are before the step's update (docs/semantics.md §1):
each kind of history.py's RECORD_KINDS, i.e. the softmax
probability of its true label, whether the top-1 prediction is right, the margin (true
logit minus the largest other, AUM) and EL2N (||softmax - one-hot||_2); and, in the
epochs that ask for them, after the epoch, the embeddings (dynunc/training/embeddings.py)
and the top-k class probabilities (dynunc/training/topk.py)."""
import logging
import os
from contextlib import nullcontext
from typing import ContextManager, Dict, Optional

import torch
from torch import nn

from data.file_list_index import open_index
from dynunc.training.embeddings import EmbeddingRecorder, remove_parts
from dynunc.history import (RECORD_KINDS, HistoryError, contiguous_epoch_files, fingerprint_path, history_dir,
                             list_epoch_files, load_epoch_prob, read_fingerprint, remove_epochs_from, write_epoch,
                             write_fingerprint)
from dynunc.training.stability import StabilityTracker, describe
from dynunc.training.topk import TopKRecorder
from utils.distributed import all_reduce_

logger = logging.getLogger(__name__)

# Every recorded quantity is > -inf for a seen sample (margin may be negative), so -inf
# marks "unseen" and MAX over the ranks gathers.
_UNSEEN = float("-inf")
# Rows of the records tensor: one per kind, prob first (it tells which samples were seen).
ROWS = tuple(RECORD_KINDS)


def batch_records(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(len(ROWS), B) float32: each kind of ROWS per sample."""
    logits = logits.float()
    labels = labels.view(-1, 1)
    softmax = torch.softmax(logits, dim=-1)
    prob = softmax.gather(1, labels).view(-1)
    correct = (logits.argmax(dim=-1) == labels.view(-1)).float()
    other_max = logits.scatter(1, labels, float("-inf")).amax(dim=-1)
    margin = logits.gather(1, labels).view(-1) - other_max
    # ||softmax - onehot||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2, with 1 - p_y taken as the
    # sum of the other probabilities: no cancellation for confident samples.
    others = softmax.scatter(1, labels, 0.0)
    el2n = torch.stack([others.sum(dim=-1), torch.linalg.vector_norm(others, dim=-1)]).norm(dim=0)
    values = {"prob": prob, "correct": correct, "margin": margin, "el2n": el2n}
    return torch.stack([values[kind] for kind in ROWS])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class PredictionRecorder:
    """Holds this rank's records of the current epoch on the device, one row per
    quantity (ROWS); one all-reduce per epoch gathers them (each sample is seen by at
    most one rank per epoch, so MAX over a -inf "unseen" fill acts as a gather). No host
    synchronisation per step."""

    def __init__(self, num_samples: int, output: str, device: torch.device, is_primary: bool,
                 eval_mode_forward: Optional[bool] = None, file_list: Optional[str] = None,
                 tracker: Optional[StabilityTracker] = None, embeddings: Optional[EmbeddingRecorder] = None,
                 topk: Optional[TopKRecorder] = None):
        self.num_samples = num_samples
        self.dir = history_dir(output)
        self.is_primary = is_primary
        self.file_list = file_list  # the training list; its fingerprint goes beside the history
        self.records = torch.full((len(ROWS), num_samples), _UNSEEN, dtype=torch.float32, device=device)
        # None: decided on the first batch (eval() for models with BatchNorm).
        self.eval_mode_forward = eval_mode_forward
        # Rank 0's coreset stability tracking (dynunc/training/stability.py), fed each written epoch.
        self.tracker = tracker if is_primary else None
        self.embeddings = embeddings
        self.topk = topk  # PRODUCE.TOPK's class probabilities (dynunc/training/topk.py), or None

    def resume_from(self, epoch: int) -> None:
        """Called once as a run (re)starts at `epoch`: the history is rewritten from there
        on, and the file list's fingerprint is recorded (HistoryError if the epochs kept
        were recorded on a different list)."""
        if not self.is_primary:
            return
        removed = remove_epochs_from(self.dir, epoch)
        remove_parts(self.dir)  # a killed run's part files of embeddings
        if removed:
            logger.info(f"history of epochs {removed} is newer than the checkpoint: it will be rewritten")
        if self.tracker is not None and epoch > 0:
            # The tracker's state is the history's: rebuilt from the epochs kept.
            paths = contiguous_epoch_files(self.dir)
            if len(paths) != epoch:
                raise HistoryError(f"{self.dir} holds {len(paths)} epochs, the checkpoint resumes at epoch {epoch}: "
                                   "cannot rebuild the coreset stability tracking")
            self.tracker.replay(load_epoch_prob(path, self.num_samples) for path in paths)
        if self.file_list is None:
            return
        fingerprint = open_index(self.file_list).fingerprint()
        recorded = read_fingerprint(self.dir)
        if recorded is not None and list_epoch_files(self.dir) and recorded["sha256"] != fingerprint["sha256"]:
            raise HistoryError(
                f"{self.file_list} is not the file list the kept epochs of {self.dir} were recorded on "
                f"({fingerprint_path(self.dir)} records {recorded['path']}); use the same list or a new --output")
        os.makedirs(self.dir, exist_ok=True)
        write_fingerprint(self.dir, fingerprint)

    def start_epoch(self, epoch: Optional[int] = None) -> None:
        self.records.fill_(_UNSEEN)
        if self.embeddings is not None and epoch is not None:
            self.embeddings.start(epoch, "embed")
        if self.topk is not None and epoch is not None:
            self.topk.start(epoch)

    @torch.no_grad()
    def record(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
               autocast: ContextManager = nullcontext()) -> None:
        """Run `model` on the eval view and store its records (ROWS) per sample.

        Models with BatchNorm run this forward in eval mode (running statistics, as the
        paper's code does for ResNet); others stay in train mode (the paper's behaviour
        for Swin and ConvNeXt: drop-path active)."""
        if self.eval_mode_forward is None:
            self.eval_mode_forward = has_batchnorm(model)
        to_eval = self.eval_mode_forward
        was_training = model.training
        if to_eval:
            model.eval()
        try:
            with autocast:
                logits = model(images)
        finally:
            if to_eval:
                model.train(was_training)
        self.records.index_copy_(1, indices, batch_records(logits, labels))
        if self.topk is not None:
            self.topk.record(logits, indices)

    def end_epoch(self, epoch: int) -> Dict[str, float]:
        """Gather across ranks and, on rank 0, write the epoch's files (history.py);
        returns rank 0's coreset stability metrics of the epoch ({} elsewhere, or before
        the tracker has two scores to compare)."""
        all_reduce_(self.records, op=torch.distributed.ReduceOp.MAX)
        seen = self.records[ROWS.index("prob")] > _UNSEEN
        if self.embeddings is not None and self.embeddings.collecting("embed"):
            # One pass with the epoch's final weights (dynunc/training/embeddings.py); the
            # embeddings go before prob, which marks the epoch complete.
            self.embeddings.embed_all(self.num_samples)
            self.embeddings.finish(epoch, "embed", self.num_samples)
        if self.topk is not None:
            self.topk.finish(epoch)  # collective; rank 0 writes before prob, which marks the epoch complete
        if not self.is_primary:
            return {}
        records = self.records.cpu()
        seen = seen.cpu()
        written = {kind: torch.where(seen, row, float(RECORD_KINDS[kind].unseen)).numpy().astype(
            RECORD_KINDS[kind].dtype, copy=False) for kind, row in zip(ROWS, records)}
        write_epoch(self.dir, epoch, **written)
        logger.info(f"recorded epoch {epoch}: {int(seen.sum())} of {self.num_samples} samples seen -> {self.dir}")
        if self.tracker is None:
            return {}
        # The array just written: the tracked coreset is get_coreset's on these files.
        metrics = self.tracker.push(epoch, written["prob"])
        if metrics:
            logger.info(f"coreset stability after epoch {epoch} (dynunc, window {self.tracker.window}) "
                        f"{describe(metrics, list(self.tracker.keeps))}")
        return metrics
