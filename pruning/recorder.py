"""Produce mode: the hook that records, for every training sample, the softmax
probability of its true label on the un-augmented view, with the weights as they are
before the step's update (REFERENCE.md section 1)."""
import logging
from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
from torch import nn

from utils.distributed import all_reduce_
from pruning.history import history_dir, remove_epochs_from, write_epoch

logger = logging.getLogger(__name__)

_UNSEEN = -1.0


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class PredictionRecorder:
    """Holds this rank's records of the current epoch on the device; one all-reduce per
    epoch gathers them (each sample is seen by at most one rank per epoch, so MAX over a
    -1 "unseen" fill acts as a gather). No host synchronisation per step."""

    def __init__(self, num_samples: int, output: str, device: torch.device, is_primary: bool,
                 eval_mode_forward: Optional[bool] = None):
        self.num_samples = num_samples
        self.dir = history_dir(output)
        self.is_primary = is_primary
        # Row 0: probability of the true label; row 1: top-1 correct (0/1). -1: unseen.
        self.records = torch.full((2, num_samples), _UNSEEN, dtype=torch.float32, device=device)
        # None: decided on the first batch (eval() for models with BatchNorm).
        self.eval_mode_forward = eval_mode_forward

    def resume_from(self, epoch: int) -> None:
        """A run (re)starting at `epoch` rewrites the history from there on."""
        if self.is_primary:
            removed = remove_epochs_from(self.dir, epoch)
            if removed:
                logger.info(f"history of epochs {removed} is newer than the checkpoint: it will be rewritten")

    def start_epoch(self) -> None:
        self.records.fill_(_UNSEEN)

    @torch.no_grad()
    def record(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
               autocast: ContextManager = nullcontext()) -> None:
        """Run `model` on the eval view and store p(true label) and correctness.

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
        logits = logits.float()
        prob = torch.softmax(logits, dim=-1).gather(1, labels.view(-1, 1)).view(-1)
        correct = (logits.argmax(dim=-1) == labels).float()
        self.records[0].index_copy_(0, indices, prob)
        self.records[1].index_copy_(0, indices, correct)

    def end_epoch(self, epoch: int) -> None:
        """Gather across ranks and, on rank 0, write prob_{epoch}.npy / correct_{epoch}.npy."""
        all_reduce_(self.records, op=torch.distributed.ReduceOp.MAX)
        if not self.is_primary:
            return
        records = self.records.cpu()
        seen = records[0] >= 0
        prob = torch.where(seen, records[0], torch.full_like(records[0], float("nan"))).numpy()
        correct = torch.where(seen, records[1], torch.full_like(records[1], -1.0)).to(torch.int8).numpy()
        write_epoch(self.dir, epoch, prob, correct)
        logger.info(f"recorded epoch {epoch}: {int(seen.sum())} of {self.num_samples} samples seen -> {self.dir}")
