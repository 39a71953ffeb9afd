"""The training loop: one epoch of training, validation, and throughput measurement.

Produce mode and dynamic pruning are not a second loop: `train_one_epoch` takes the
run's hooks (hooks.py), which see each batch before the update and give its loss.
"""
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

from dynunc.distributed import all_reduce_

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; names the epoch and the step."""


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(1, self.count)


@dataclass
class StepContext:
    """What one training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: "object"  # utils.lr_scheduler.LRScheduler
    criterion: nn.Module
    scaler: Optional[torch.amp.GradScaler]
    autocast: Callable[[], object]  # returns a fresh autocast context
    accumulation_steps: int = 1
    clip_grad: float = 0.0
    mixup: Optional[Callable] = None


def make_autocast(config, device: torch.device):
    if device.type != "cuda" or not config.AMP_ENABLE:
        return nullcontext, None
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[config.AMP_DTYPE]  # checked: hooks.check_config
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return partial(torch.autocast, "cuda", dtype=dtype), scaler


def make_criterion(config, num_classes: int):
    aug = config.AUG
    if aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=aug.MIXUP, cutmix_alpha=aug.CUTMIX, cutmix_minmax=aug.CUTMIX_MINMAX,
                      prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                      label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    return nn.CrossEntropyLoss(label_smoothing=config.MODEL.LABEL_SMOOTHING), None


def build_step_context(config, model: nn.Module, device: torch.device, num_samples: int,
                       world_size: int) -> StepContext:
    """The step context of a run from its config: autocast and scaler, criterion and
    Mixup/CutMix, optimizer, and the LR schedule over the epoch's updates."""
    from utils.lr_scheduler import LRScheduler
    from utils.optimizer import build_optimizer

    autocast, scaler = make_autocast(config, device)
    criterion, mixup = make_criterion(config, config.MODEL.NUM_CLASSES)
    optimizer = build_optimizer(config, model)
    batches = (num_samples // world_size) // config.DATA.BATCH_SIZE_TRAIN
    updates_per_epoch = -(-batches // config.TRAIN.ACCUMULATION_STEPS)
    scheduler = LRScheduler(optimizer, config, max(1, updates_per_epoch))
    return StepContext(optimizer, scheduler, criterion, scaler, autocast, config.TRAIN.ACCUMULATION_STEPS,
                       config.TRAIN.CLIP_GRAD, mixup)


def train_one_epoch(model: nn.Module, loader: Iterable[Dict[str, torch.Tensor]], ctx: StepContext, epoch: int,
                    device: torch.device, print_freq: int = 10, hooks=None) -> Dict[str, float]:
    """One pass over `loader`. With `hooks` (hooks.py), ``hooks.observe`` sees each batch
    before the update (produce mode's recorder) and ``hooks.loss`` gives its loss (the
    criterion's, or dynamic pruning's weighted mean of per-sample losses).

    A NaN or infinite loss raises TrainingDiverged naming the epoch and the first bad
    step; it is detected at the next print_freq read-back (the last step is always one),
    so the epoch never returns and the caller records no history for it."""
    model.train()
    num_steps = len(loader)
    loss_meter, norm_meter = AverageMeter(), AverageMeter()
    # Losses and norms stay on the device; they are read back only every print_freq steps.
    loss_sum, window = torch.zeros((), device=device), 0
    # 2 * (the first step whose loss was not finite) + (1 if that loss was infinite, 0 if
    # NaN); 2 * num_steps while every loss is finite. Kept on the device: no host
    # synchronisation per step.
    no_bad = 2 * num_steps
    first_bad = torch.full((), no_bad, dtype=torch.int64, device=device)
    start = time.time()
    ctx.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader):
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        if hooks is not None:
            hooks.observe(batch, labels)
        targets = labels
        if ctx.mixup is not None:
            images, targets = ctx.mixup(images, labels)
        update = (step + 1) % ctx.accumulation_steps == 0 or step + 1 == num_steps
        sync = nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with ctx.autocast():
                output = model(images)
                if hooks is None:
                    loss = ctx.criterion(output, targets)
                else:
                    loss = hooks.loss(ctx.criterion, output, targets, labels, batch["indices"])
            scaled = loss / ctx.accumulation_steps
            if ctx.scaler is not None:
                ctx.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        loss_sum += loss.detach()
        window += 1
        bad_code = 2 * step + torch.isinf(loss.detach()).long()
        first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(loss.detach()), no_bad, bad_code))
        if update:
            if ctx.scaler is not None:
                ctx.scaler.unscale_(ctx.optimizer)
            if ctx.clip_grad > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
            if ctx.scaler is not None:
                ctx.scaler.step(ctx.optimizer)
                ctx.scaler.update()
            else:
                ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.scheduler.step()
        if (step + 1) % print_freq == 0 or step + 1 == num_steps:
            _stop_if_diverged(first_bad, epoch, num_steps)
            loss_meter.update(loss_sum.item() / window, window)
            loss_sum.zero_()
            window = 0
            if update and ctx.clip_grad > 0:
                norm = float(grad_norm)
                if math.isfinite(norm):
                    norm_meter.update(norm)
            lr = ctx.optimizer.param_groups[0]["lr"]
            elapsed = time.time() - start
            norm_text = f" grad_norm {norm_meter.avg:.3f}" if norm_meter.count else ""
            logger.info(f"train epoch {epoch} [{step + 1}/{num_steps}] lr {lr:.3e} loss {loss_meter.avg:.4f}"
                        f"{norm_text} {elapsed / (step + 1):.3f}s/step")
    epoch_time = time.time() - start
    # grad_norm: the mean pre-clipping norm at logged updates; None without clipping.
    return {"train_loss": loss_meter.avg, "grad_norm": norm_meter.avg if norm_meter.count else None,
            "epoch_time": epoch_time,
            "lr": ctx.optimizer.param_groups[0]["lr"]}


def _stop_if_diverged(first_bad: torch.Tensor, epoch: int, num_steps: int) -> None:
    """Raise TrainingDiverged on every rank if any rank has seen a non-finite loss. One
    scalar all-reduce at the read-back points only, so that all ranks stop together
    instead of the healthy ones waiting in the next collective."""
    code = int(all_reduce_(first_bad.clone(), op=torch.distributed.ReduceOp.MIN))
    if code < 2 * num_steps:
        step, infinite = divmod(code, 2)
        message = (f"training diverged: the loss is {'infinite' if infinite else 'NaN'} at epoch {epoch}, step "
                   f"{step + 1} of {num_steps}; no history or checkpoint is written for epoch {epoch}, earlier "
                   f"epochs stay as they are. Lower TRAIN.BASE_LR, set TRAIN.CLIP_GRAD or check the data, then "
                   f"resume")
        logger.error(message)
        raise TrainingDiverged(message)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Dict[str, torch.Tensor]], device: torch.device,
             autocast: Callable[[], object] = nullcontext, logit_columns: Optional[torch.Tensor] = None,
             real_labels=None, capture: Optional[Callable[[torch.Tensor], object]] = None) -> Dict[str, float]:
    """Top-1/top-5 (and loss) over the loader; sums and counts are reduced across ranks,
    so every validation image counts exactly once.

    `logit_columns`: restrict the logits to these classes first (a 21K model on 1K val).
    `real_labels`: an object with ``hits(indices, top5_predictions) -> (top1_hits,
    top5_hits, counted)`` tensors for ImageNet-ReaL.
    `capture`: ``capture(indices)`` is a context around each forward (produce mode's
    validation embeddings, dynunc/training/embeddings.py).
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(7, dtype=torch.float64, device=device)  # loss, top1, top5, n, real1, real5, real_n
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        with capture(batch["indices"]) if capture is not None else nullcontext(), autocast():
            logits = model(images)
        logits = logits.float()
        if logit_columns is not None:
            logits = logits.index_select(1, logit_columns)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels.view(-1, 1)
        totals[0] += criterion(logits, labels).double()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
        totals[3] += labels.numel()
        if real_labels is not None:
            r1, r5, rn = real_labels.hits(batch["indices"], top5)
            totals[4] += r1
            totals[5] += r5
            totals[6] += rn
    all_reduce_(totals)
    loss, top1, top5_, n, r1, r5, rn = totals.tolist()
    metrics = {"val_loss": loss / max(1, n), "acc1": 100 * top1 / max(1, n), "acc5": 100 * top5_ / max(1, n),
               "val_samples": int(n)}
    if real_labels is not None:
        metrics.update({"real_acc1": 100 * r1 / max(1, rn), "real_acc5": 100 * r5 / max(1, rn),
                        "real_samples": int(rn)})
    return metrics


def seconds_per_call(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Mean seconds per call of `fn` after `warmup` calls (the device synchronised around
    the timed calls); also used by the benchmarks."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def throughput(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext,
               device: torch.device, warmup: int = 10, iters: int = 30) -> Dict[str, float]:
    """Images per second for a forward pass (eval) and for a full training step, on one
    process, with one real batch repeated."""
    images, labels = images.to(device), labels.to(device)
    n = images.shape[0]

    def forward():
        with torch.no_grad(), ctx.autocast():
            model(images)

    def train_step():
        inputs, targets = ctx.mixup(images, labels) if ctx.mixup is not None else (images, labels)
        with ctx.autocast():
            loss = ctx.criterion(model(inputs), targets)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)

    model.eval()
    fwd = seconds_per_call(forward, device, warmup, iters)
    model.train()
    step = seconds_per_call(train_step, device, warmup, iters)
    result = {"batch_size": n, "forward_img_per_s": n / fwd, "train_step_img_per_s": n / step}
    logger.info(f"throughput (per process, batch {n}): forward {result['forward_img_per_s']:.1f} img/s, "
                f"train step {result['train_step_img_per_s']:.1f} img/s")
    return result
