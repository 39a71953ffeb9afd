"""What main.py's training loop calls besides the model and the optimizer, built from the
config in one place (`build_hooks`): produce mode's recorder (dynunc.Recorder, the same
door any loop uses), its embeddings, rank 0's coreset stability tracker and the stop
rule, and dynamic pruning. The loop drives them through a few calls:

    hooks = build_hooks(config, data, model, fwd_model, autocast, dist_info, produce, start_epoch, resumed)
    for epoch ...:
        order = hooks.start_epoch(epoch, scheduler)    # the epoch's order (dynamic pruning) or None
        train_one_epoch(..., hooks=hooks)              # hooks.observe(batch), hooks.loss(...) per step
        hooks.after_training()
        validate(capture=hooks.val_capture(epoch))
        record.update(hooks.end_epoch(epoch))          # the history written; stability metrics
        if hooks.stop(record): ...
"""
import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn

from data.build import build_eval_view_loader, history_identity
from dynunc.history import history_dir
from dynunc.distributed import all_reduce_, is_primary
from dynunc.training import embeddings, threshold, topk
from dynunc.training.online_pruning import DynamicPruner, plan_images, plan_pruned_epoch
from dynunc.training.online_pruning import check_config as check_prune_config
from dynunc.training.recorder import Recorder, has_batchnorm
from dynunc.history import STOPPED_KEY
from dynunc.training.stability import StabilityTracker, StopWhenStable, effective_window
from dynunc.training.stability import check_config as check_produce_config
from dynunc.training.stability import check_stop_fits

logger = logging.getLogger("main")

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_config(config, produce: bool) -> List[str]:
    """Every value problem of the config the loop and its hooks would meet later, each
    naming its key: found before anything is written under OUTPUT."""
    problems = []
    if config.AMP_DTYPE not in AMP_DTYPES:
        problems.append(f"AMP_DTYPE: unknown dtype {config.AMP_DTYPE!r}; known: {', '.join(AMP_DTYPES)}")
    if config.TRAIN.KEEP_CHECKPOINTS < 0:
        problems.append(f"TRAIN.KEEP_CHECKPOINTS is {config.TRAIN.KEEP_CHECKPOINTS}: 0 keeps every checkpoint, "
                        f"N > 0 the newest N")
    problems += check_produce_config(config.PRODUCE) + check_prune_config(config.TRAIN.DYNAMIC_PRUNE)
    if produce:
        problems += (embeddings.check_config(config) + check_stop_fits(config) + topk.check_config(config)
                     + threshold.check_config(config))
    return problems


def make_tracker(config, num_samples: int) -> Optional[StabilityTracker]:
    """Rank 0's coreset stability tracker (PRODUCE.TRACK_*), None where nothing can be tracked."""
    produce = config.PRODUCE
    window = effective_window(produce.TRACK_WINDOW, config.TRAIN.EPOCHS)
    if not produce.TRACK_FRACTIONS or not window:
        why = "PRODUCE.TRACK_FRACTIONS is empty" if not produce.TRACK_FRACTIONS else (
            f"{config.TRAIN.EPOCHS} epochs give no dynamic-uncertainty window")
        logger.info(f"coreset stability is not tracked: {why}")
        if produce.STOP_WHEN_STABLE.ENABLE:
            logger.warning("PRODUCE.STOP_WHEN_STABLE cannot stop a run whose stability is not tracked")
        return None
    if window != produce.TRACK_WINDOW:
        logger.info(f"coreset stability: window {window} (PRODUCE.TRACK_WINDOW {produce.TRACK_WINDOW} is more than "
                    f"{config.TRAIN.EPOCHS} epochs allow)")
    return StabilityTracker(num_samples, window, produce.TRACK_FRACTIONS, produce.TRACK_DELTA)


def make_topk(config, num_samples: int, dist_info) -> Optional[topk.TopKRecorder]:
    """Produce mode's top-k class-probability recorder (PRODUCE.TOPK), None for K 0."""
    k = config.PRODUCE.TOPK.K
    if not k:
        return None
    epochs = topk.topk_epochs(config.PRODUCE.TOPK.EPOCHS, config.TRAIN.EPOCHS)
    logger.info(f"top-{k} class probabilities are recorded at epochs {epochs} (PRODUCE.TOPK)")
    return topk.TopKRecorder(num_samples, k, config.MODEL.NUM_CLASSES, epochs, history_dir(config.OUTPUT),
                             dist_info.device, dist_info.is_primary)


def record_threshold(config, num_samples: int, is_primary: bool) -> None:
    """With PRODUCE.THRESHOLD_SAMPLES: rank 0 records which images were relabelled to the
    extra class (MODEL.NUM_CLASSES - 1, the class main.py added) beside the history."""
    which = config.PRODUCE.THRESHOLD_SAMPLES
    if not which or not is_primary:
        return
    extra = config.MODEL.NUM_CLASSES - 1
    indices = threshold.threshold_indices(num_samples, extra, which)
    threshold.record(history_dir(config.OUTPUT), config, extra, indices)
    logger.info(f"threshold samples (AUM, set {which}): {len(indices)} images trained under the extra class {extra}")


@contextlib.contextmanager
def eval_mode_if(model: nn.Module, eval_mode: bool):
    """`model` in eval mode inside the block when `eval_mode`, its mode restored after."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        if eval_mode:
            model.train(was_training)


@dataclass
class Hooks:
    """The loop's hooks (module docstring); every part optional."""

    config: object
    device: torch.device
    autocast: Callable[[], object]
    recorder: Optional[Recorder] = None
    record_model: Optional[nn.Module] = None  # the model without DDP: the recorder's forwards
    capture: Optional[embeddings.FeatureCapture] = None
    embed_epochs: frozenset = frozenset()
    rest_loader: Optional[Callable] = None  # the eval-view loader over some samples (the embedding pass)
    pruner: Optional[DynamicPruner] = None
    stop_rule: Optional[StopWhenStable] = None
    already_stopped: bool = False  # this produce run stopped when stable: nothing left to do
    plan: object = None
    eval_mode_forward: Optional[bool] = None  # None: decided on the first batch (eval() for BatchNorm)
    extras: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- per epoch
    def start_epoch(self, epoch: int, scheduler, num_samples: int, world_size: int) -> Optional[np.ndarray]:
        """The epoch's sample order under dynamic pruning (None: the plain one); the LR
        schedule is told how many updates the epoch takes."""
        self.plan = plan_pruned_epoch(self.config, self.pruner, scheduler, epoch, num_samples, world_size)
        self.extras = {} if self.plan is None else {
            "images_seen": plan_images(self.config, self.plan, world_size),
            "prune_candidates": self.plan.candidates, "prune_dropped": self.plan.dropped}
        return self.plan.order if self.plan is not None else None

    # ---------------------------------------------------------------- per step
    @torch.no_grad()
    def observe(self, batch: dict, labels: torch.Tensor) -> None:
        """Produce mode: the batch's eval view through the model as it is before the step
        (in eval mode for models with BatchNorm, as the paper's code does for ResNet;
        others stay in train mode, drop-path active, as for Swin and ConvNeXt)."""
        if self.recorder is None:
            return
        if self.eval_mode_forward is None:
            self.eval_mode_forward = has_batchnorm(self.record_model)
        images = batch["eval_images"].to(self.device, non_blocking=True)
        with eval_mode_if(self.record_model, self.eval_mode_forward), self.autocast():
            logits = self.record_model(images)
        self.recorder.update(batch["indices"].to(self.device, non_blocking=True), logits, labels)

    def loss(self, criterion: nn.Module, output: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
             indices: torch.Tensor) -> torch.Tensor:
        if self.pruner is None:
            return criterion(output, targets)
        return self.pruner.weighted_loss(criterion, output, targets, labels, indices.to(self.device,
                                                                                       non_blocking=True))

    # ---------------------------------------------------------------- after the epoch's steps
    def after_training(self) -> None:
        if self.pruner is not None:
            self.pruner.end_epoch()

    def val_capture(self, epoch: int) -> Optional[Callable]:
        """evaluate()'s `capture` in an embedding epoch: each validation forward's
        classifier input goes to the recorder as val_embed rows; None otherwise."""
        if self.capture is None or epoch not in self.embed_epochs:
            return None

        @contextlib.contextmanager
        def capture(indices: torch.Tensor):
            with self.capture.armed():
                yield
            self.recorder.update_features(indices, self.capture.take(), "val_embed")

        return capture

    def end_epoch(self, epoch: int, world_size: int, rank: int) -> dict:
        """The embedding pass (in an embedding epoch), then the recorder's end of epoch:
        the history written; returns rank 0's stability metrics ({} elsewhere). The
        epoch's pruning figures are in `extras`."""
        if self.recorder is None:
            return {}
        if self.capture is not None and epoch in self.embed_epochs:
            mine = np.arange(rank, self.recorder.num_samples, world_size)
            if len(mine):
                embeddings.embedding_pass(self.record_model, self.rest_loader(mine), self.capture, self.recorder,
                                          self.autocast, self.device)
        return self.recorder.end_epoch(epoch)

    def stop(self, record: dict) -> bool:
        """Rank 0 decides from its metrics (the only rank with the stability keys); every
        rank learns the decision from one scalar all-reduce."""
        if self.stop_rule is None:
            return False
        flag = torch.tensor(int(self.stop_rule.update(record)) if is_primary() else 0, device=self.device)
        return bool(all_reduce_(flag).item())

    def embed_at_stop(self, epoch: int, world_size: int, rank: int,
                      validate_val: Optional[Callable[[Callable], dict]] = None) -> bool:
        """After the stop rule fired at `epoch`, before the last epoch of PRODUCE.EMBED_EPOCHS
        and not at one of them: record the embeddings of `epoch` (the training samples and,
        given `validate_val`, the validation ones) so that the history holds some (dedup,
        the embedding methods and the report read the latest). Every rank calls it (the
        pass is split across ranks). Returns whether it recorded them."""
        if self.capture is None or epoch in self.embed_epochs or not any(e > epoch for e in self.embed_epochs):
            return False
        logger.info(f"stopped after epoch {epoch}, before PRODUCE.EMBED_EPOCHS {sorted(self.embed_epochs)}: "
                    f"recording the embeddings of epoch {epoch}")
        self.embed_epochs = self.embed_epochs | {epoch}
        if validate_val is not None:
            validate_val(self.val_capture(epoch))
        mine = np.arange(rank, self.recorder.num_samples, world_size)
        if len(mine):
            embeddings.embedding_pass(self.record_model, self.rest_loader(mine), self.capture, self.recorder,
                                      self.autocast, self.device)
        self.recorder.end_embeddings(epoch)
        return True

    def replay(self, earlier: List[dict]) -> None:
        """A resumed run's stop rule counts the kept epochs' metrics."""
        if self.stop_rule is not None:
            self.stop_rule.replay(earlier)

    def state_dict(self) -> dict:
        return {"dynamic_prune": self.pruner.state_dict()} if self.pruner is not None else {}

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self.capture is not None:
            self.capture.close()


def build_hooks(config, data, model: nn.Module, fwd_model: nn.Module, autocast, dist_info, produce: bool,
                start_epoch: int, resumed: dict, checkpoint: Optional[dict] = None, where: str = "") -> Hooks:
    """The hooks of this run, from the config. `resumed`: the metrics record of the
    checkpoint resumed from ({} if none); `checkpoint`: its state (for the pruner's
    scores), `where` its path."""
    hooks = Hooks(config, dist_info.device, autocast)
    n = len(data.train)
    if config.TRAIN.DYNAMIC_PRUNE.ENABLE:
        hooks.pruner = DynamicPruner(config.TRAIN.DYNAMIC_PRUNE, n, config.TRAIN.EPOCHS, config.SEED, dist_info.device)
        if checkpoint is not None and "dynamic_prune" in checkpoint:
            hooks.pruner.load_state_dict(checkpoint["dynamic_prune"], where)
        elif checkpoint is not None:
            logger.warning(f"{where} holds no dynamic-pruning scores (a run without TRAIN.DYNAMIC_PRUNE): "
                           f"scores start from the resumed epoch")
    if not produce:
        return hooks
    stop = config.PRODUCE.STOP_WHEN_STABLE
    if stop.ENABLE:
        hooks.stop_rule = StopWhenStable(stop.OVERLAP, stop.PATIENCE, stop.FRACTION)
        if resumed.get(STOPPED_KEY):
            # A rerun of the command that stopped (auto-resume): the produce run is done.
            logger.info(f"this produce run stopped when stable after epoch {resumed['epoch']} (of "
                        f"{config.TRAIN.EPOCHS}); its history and checkpoint are complete, nothing to do. To train "
                        f"on, set PRODUCE.STOP_WHEN_STABLE.ENABLE False")
            hooks.already_stopped = True
            return hooks
    tracker = make_tracker(config, n) if dist_info.is_primary else None
    embed_dim, project = config.PRODUCE.EMBED_DIM, True
    if embed_dim == embeddings.FULL_WIDTH:  # the classifier input as it is: its width, known on every rank
        embed_dim, project = embeddings.classifier_width(model), False
        if embed_dim is None:
            raise ValueError(f"PRODUCE.EMBED_DIM {embeddings.FULL_WIDTH}: {type(embeddings.find_classifier(model)).__name__}, "
                             "the classifier, does not say its width (in_features); give a positive PRODUCE.EMBED_DIM")
    hooks.record_model = fwd_model
    hooks.recorder = Recorder(config.OUTPUT, n, embed_dim=embed_dim, project=project, **history_identity(data.train),
                              start_epoch=start_epoch, device=dist_info.device, tracker=tracker,
                              val_samples=len(data.val) if data.val is not None else 0,
                              topk=make_topk(config, n, dist_info))
    record_threshold(config, n, dist_info.is_primary)
    if embed_dim:
        hooks.embed_epochs = frozenset(embeddings.embed_epochs(config.PRODUCE.EMBED_EPOCHS, config.TRAIN.EPOCHS))
        if stop.ENABLE:
            logger.info(f"embeddings are recorded at epochs {sorted(hooks.embed_epochs)} (PRODUCE.EMBED_EPOCHS): a "
                        f"run that stops when stable before the last of them records its stop epoch's too")
        hooks.capture = embeddings.FeatureCapture(model)
        hooks.rest_loader = partial(build_eval_view_loader, config, data.train, device_id=dist_info.device_id)
    return hooks
