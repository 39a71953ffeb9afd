"""Dynamic pruning in the training loop (TRAIN.DYNAMIC_PRUNE): InfoBatch's rule (Qin et
al., ICLR 2024) with an exact budget.

Each epoch e, from the scores of epochs 0..e-1:

- the candidates are the scored samples whose score is below the mean score of the
  scored samples (the well-learned ones); unscored samples are never candidates;
- exactly k = round(RATIO x C) of the C candidates are dropped (Python's round), drawn
  uniformly without replacement by a generator seeded from (SEED, epoch) alone, so that
  every rank draws the same; k stays below C, so that at least one candidate is trained
  (that changes k only when C <= 0.5 / (1 - RATIO), e.g. C = 1 at RATIO 0.5);
- the kept candidates' loss is multiplied by C / (C - k) = 1 / (1 - r), with r = k / C
  the realised ratio, not RATIO: each candidate is kept with probability exactly
  (C - k) / C, so E[sum over the kept samples of weight x loss] is the sum of the losses
  of all N samples, exactly (tests/test_dynamic_prune.py checks it statistically). The
  batch loss is still the mean over the batch, so the epoch's summed update has the
  full-data epoch's expectation, reached in fewer steps;
- the epoch's order is data/reader.py's epoch_permutation over the kept samples (in
  index order), the same on every rank, sharded by reader.shard (equal shards, full
  batches; the remainder is not trained that epoch, as without pruning);
- nothing is dropped in epoch 0 (no scores yet), from epoch floor((1 - ANNEAL) x
  EPOCHS) on (full data: InfoBatch's code prunes its epochs e with e + 1 <= delta x
  EPOCHS, delta = 1 - ANNEAL), at RATIO 0, or while no sample has a score: such an
  epoch's order is exactly the one without dynamic pruning.

Scores, from the training forward (augmented view, weights before the update):

- ``loss``: the sample's training loss the last time it was trained (the criterion's,
  label smoothing included; with Mixup/CutMix, the loss of the mixed sample against its
  mixed target, the quantity that is weighted).
- ``dynunc``: dynamic uncertainty so far of p, the softmax probability of the sample's
  own label (with Mixup/CutMix, on the mixed image). A window is WINDOW consecutive
  observations of the sample (epochs in which it was not trained are skipped, as
  dynunc/uncertainty.py skips unseen epochs); the window score is the std
  (ddof=1) of its p values, the paper's without its factor 10, which the below-the-mean
  rule ignores; the score is the mean of all window scores so far, the one ending at
  the newest observation included. A sample is scored once it has WINDOW observations.

State and memory (bounded, independent of the number of epochs), per rank:
``loss`` keeps the last loss (float32) and whether the sample was ever trained (bool),
5 bytes per sample; ``dynunc`` keeps the last WINDOW - 1 probabilities (float32), the
observation count (int32) and the sum of the window scores (float64): 4 (WINDOW - 1) +
12 bytes, 20 at WINDOW 3, i.e. 260 MB of host memory at 13M samples (ImageNet-21K) and
26 MB at 1.28M. On the device: the epoch's observations (float32) and the weighted-sample
mask (bool), 5 bytes per sample. Updates are done in chunks of 2^20 samples.

Gathering: during the epoch each rank writes its samples' observations into the device
buffer (-inf elsewhere); one MAX all-reduce at the end of the epoch gathers them (a
sample is trained by at most one rank per epoch), and every rank updates the same state
from the same array with the same numpy operations, so every rank plans the same epoch.
The state goes in the checkpoint: a resumed run plans what an uninterrupted one plans.

From any loop, without touching PyTorch's classes: the pruner's sampler gives each
epoch's order (this rank's equal share of it), its per-sample loss weights scale the
loss, and `observe` takes each sample's score observation:

    pruner = DynamicPruner.for_loop(len(dataset), epochs, ratio=0.5, score="loss")
    sampler = pruner.sampler(rank, world_size)           # DataLoader(dataset, sampler=sampler, ...)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                         # plans the epoch (the same on every rank)
        for x, y, idx in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            pruner.observe(idx, losses=losses)           # or logits=..., labels=... for score "dynunc"
            loss = (losses * pruner.weights(idx)).mean()
            ...
        pruner.end_epoch()                               # one all-reduce
"""
import logging
import math
from fractions import Fraction
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynunc.training.order import epoch_permutation, shard_length
from dynunc.distributed import all_reduce_

logger = logging.getLogger(__name__)

SCORES = ("loss", "dynunc")
_UNSEEN = float("-inf")  # losses and probabilities are >= 0, so MAX over ranks gathers
_CHUNK = 1 << 20


def check_config(prune) -> List[str]:
    """The problems of a TRAIN.DYNAMIC_PRUNE section, as one-line messages."""
    problems = []
    if not 0 <= prune.RATIO < 1:
        problems.append(f"TRAIN.DYNAMIC_PRUNE.RATIO must be in [0, 1), got {prune.RATIO}")
    if not 0 <= prune.ANNEAL <= 1:
        problems.append(f"TRAIN.DYNAMIC_PRUNE.ANNEAL must be in [0, 1], got {prune.ANNEAL}")
    if prune.SCORE not in SCORES:
        problems.append(f"TRAIN.DYNAMIC_PRUNE.SCORE: unknown score {prune.SCORE!r}; known: {', '.join(SCORES)}")
    if prune.WINDOW < 2:
        problems.append(f"TRAIN.DYNAMIC_PRUNE.WINDOW must be >= 2, got {prune.WINDOW}")
    return problems


def anneal_start(epochs: int, anneal: float) -> int:
    """The first epoch trained on the full data at the end: floor(delta x EPOCHS), delta
    = 1 - ANNEAL, as InfoBatch's code runs it. Its sampler counts its resets from 1 at
    epoch 0 (the first reset happens when it is built) and prunes while that count is
    <= delta x EPOCHS, so epoch e prunes while e + 1 <= delta x EPOCHS: the full data from
    epoch floor(delta x EPOCHS) (78 of 90 at delta 0.875). delta x EPOCHS is computed
    exactly from ANNEAL as written (0.2 is 1/5), not in binary floating point."""
    delta = 1 - Fraction(repr(float(anneal)))
    return math.floor(delta * epochs)


def dropped_count(ratio: float, candidates: int) -> int:
    """round(ratio x candidates), at most candidates - 1."""
    return max(0, min(int(round(ratio * candidates)), candidates - 1))


def drop_generator(seed: int, epoch: int) -> np.random.Generator:
    """The epoch's draw of dropped candidates; a stream apart from epoch_permutation's."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch], spawn_key=(1,))))


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains on."""

    epoch: int
    order: np.ndarray  # the epoch's sample order over all ranks
    weighted: Optional[np.ndarray]  # bool per sample: the kept candidates; None: none
    candidates: int
    dropped: int
    threshold: float  # the mean score of the scored samples; nan when not pruning

    @property
    def scale(self) -> float:
        """The kept candidates' loss weight, 1 / (1 - dropped / candidates)."""
        return self.candidates / (self.candidates - self.dropped) if self.dropped else 1.0


def plan_epoch(scores: np.ndarray, scored: np.ndarray, ratio: float, seed: int, epoch: int,
               prune: bool = True) -> EpochPlan:
    """The epoch's plan from the scores so far (`scored`: which samples have one)."""
    n = len(scores)
    if not prune or ratio == 0 or not scored.any():
        return EpochPlan(epoch, epoch_permutation(n, seed, epoch), None, 0, 0, math.nan)
    threshold = float(np.mean(scores[scored], dtype=np.float64))
    weighted = scored & (scores < threshold)
    candidates = np.flatnonzero(weighted)
    k = dropped_count(ratio, len(candidates))
    if k == 0:
        return EpochPlan(epoch, epoch_permutation(n, seed, epoch), None, len(candidates), 0, threshold)
    drop = candidates[drop_generator(seed, epoch).choice(len(candidates), size=k, replace=False)]
    weighted[drop] = False
    keep = np.ones(n, dtype=bool)
    keep[drop] = False
    kept = np.flatnonzero(keep)
    perm = epoch_permutation(len(kept), seed, epoch)
    order = kept.astype(perm.dtype, copy=False)[perm]
    return EpochPlan(epoch, order, weighted, len(candidates), k, threshold)


class LossScore:
    """The training loss the last time each sample was trained."""

    def __init__(self, num_samples: int):
        self.last = np.zeros(num_samples, dtype=np.float32)
        self.seen = np.zeros(num_samples, dtype=bool)

    def update(self, observed: np.ndarray) -> None:
        seen = observed > _UNSEEN
        self.last[seen] = observed[seen]
        self.seen |= seen

    def scores(self):
        return self.last.astype(np.float64), self.seen

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"last": self.last, "seen": self.seen}


class DynUncScore:
    """Dynamic uncertainty so far of the true-label probability (module docstring)."""

    def __init__(self, num_samples: int, window: int):
        self.window = window
        self.recent = np.zeros((window - 1, num_samples), dtype=np.float32)  # oldest row first
        self.count = np.zeros(num_samples, dtype=np.int32)
        self.total = np.zeros(num_samples, dtype=np.float64)

    def update(self, observed: np.ndarray) -> None:
        seen = np.flatnonzero(observed > _UNSEEN)
        for start in range(0, len(seen), _CHUNK):
            i = seen[start:start + _CHUNK]
            p = observed[i]
            full = self.count[i] >= self.window - 1
            if full.any():
                j = i[full]
                values = np.concatenate([self.recent[:, j], p[full][None]]).astype(np.float64)
                self.total[j] += values.std(axis=0, ddof=1)
            self.recent[:-1, i] = self.recent[1:, i]
            self.recent[-1, i] = p
            self.count[i] += 1

    def scores(self):
        windows = self.count - (self.window - 1)
        scored = windows >= 1
        values = np.zeros(len(self.count), dtype=np.float64)
        values[scored] = self.total[scored] / windows[scored]
        return values, scored

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"recent": self.recent, "count": self.count, "total": self.total}


def per_sample_loss(criterion: nn.Module, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The criterion's loss of each sample (what its mean reduces): nn.CrossEntropyLoss
    with its label smoothing, or timm's SoftTargetCrossEntropy (Mixup/CutMix targets)."""
    if isinstance(criterion, nn.CrossEntropyLoss):
        return F.cross_entropy(output, targets, weight=criterion.weight, ignore_index=criterion.ignore_index,
                               reduction="none", label_smoothing=criterion.label_smoothing)
    try:
        from timm.loss import SoftTargetCrossEntropy  # optional: dynunc[timm]
    except ImportError:
        SoftTargetCrossEntropy = ()
    if isinstance(criterion, SoftTargetCrossEntropy):
        return torch.sum(-targets * F.log_softmax(output, dim=-1), dim=-1)
    raise TypeError(f"dynamic pruning needs a per-sample loss; {type(criterion).__name__} has none here")


def true_label_prob(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.softmax(output.float(), dim=-1).gather(1, labels.view(-1, 1)).view(-1)


class DynamicPruner:
    """The training loop's side of dynamic pruning: plans each epoch, weights each
    batch's per-sample losses, observes the scores, gathers them once per epoch."""

    def __init__(self, prune, num_samples: int, epochs: int, seed: int, device: torch.device):
        """`prune`: a TRAIN.DYNAMIC_PRUNE section (RATIO, ANNEAL, SCORE, WINDOW); from a
        plain loop, `for_loop` builds one from keywords."""
        self.kind = prune.SCORE
        self.ratio = prune.RATIO
        self.seed = seed
        self.num_samples = num_samples
        self.anneal_from = anneal_start(epochs, prune.ANNEAL)
        self.score = LossScore(num_samples) if self.kind == "loss" else DynUncScore(num_samples, prune.WINDOW)
        self.observed = torch.full((num_samples,), _UNSEEN, dtype=torch.float32, device=device)
        self.weighted = torch.zeros(num_samples, dtype=torch.bool, device=device)
        self.scale = 1.0

    @classmethod
    def for_loop(cls, num_samples: int, epochs: int, ratio: float = 0.5, anneal: float = 0.125,
                 score: str = "loss", window: int = 3, seed: int = 0,
                 device: Optional[torch.device] = None) -> "DynamicPruner":
        """The pruner of any loop, from keywords (ValueError naming the first bad one)."""
        prune = PruneSettings(ratio, anneal, score, window)
        problems = check_config(prune)
        if problems:
            raise ValueError(problems[0].replace("TRAIN.DYNAMIC_PRUNE.", "").replace("RATIO", "ratio")
                             .replace("ANNEAL", "anneal").replace("SCORE", "score").replace("WINDOW", "window"))
        return cls(prune, num_samples, epochs, seed, torch.device("cpu") if device is None else torch.device(device))

    def sampler(self, rank: int = 0, world_size: int = 1) -> "PrunedSampler":
        return PrunedSampler(self, rank, world_size)

    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Each sample's loss weight this epoch: the epoch's scale for the kept
        candidates, 1 for the others (float32, on the pruner's device)."""
        indices = torch.as_tensor(indices).to(self.weighted.device, non_blocking=True)
        return torch.where(self.weighted[indices], self.scale, 1.0)

    def observe(self, indices: torch.Tensor, losses: Optional[torch.Tensor] = None,
                logits: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> None:
        """The samples' score observations of this epoch: their per-sample losses (score
        "loss") or the logits and labels (score "dynunc": the true label's probability)."""
        indices = torch.as_tensor(indices).to(self.observed.device, non_blocking=True)
        if self.kind == "loss":
            if losses is None:
                raise ValueError("observe: score 'loss' needs the per-sample losses (losses=...)")
            observed = losses.detach()
        else:
            if logits is None or labels is None:
                raise ValueError("observe: score 'dynunc' needs logits=... and labels=...")
            observed = true_label_prob(logits.detach(), torch.as_tensor(labels).to(logits.device))
        self.observed.index_copy_(0, indices, observed.float().to(self.observed.device))

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan (the same on every rank); sets the weights its batches get."""
        values, scored = self.score.scores()
        plan = plan_epoch(values, scored, self.ratio, self.seed, epoch, prune=0 < epoch < self.anneal_from)
        if plan.weighted is None:
            self.weighted.zero_()
        else:
            self.weighted.copy_(torch.from_numpy(plan.weighted))
        self.scale = plan.scale
        self.observed.fill_(_UNSEEN)
        return plan

    def weighted_loss(self, criterion: nn.Module, output: torch.Tensor, targets: torch.Tensor,
                      labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The batch's loss: the mean of the per-sample losses, the kept candidates'
        multiplied by the epoch's scale; records each sample's score observation."""
        losses = per_sample_loss(criterion, output, targets)
        self.observe(indices, losses=losses, logits=output, labels=labels)
        return (losses * self.weights(indices)).mean()

    def end_epoch(self) -> None:
        """Gather the epoch's observations from every rank (one all-reduce) and update
        the scores."""
        all_reduce_(self.observed, op=torch.distributed.ReduceOp.MAX)
        self.score.update(self.observed.cpu().numpy())

    def state_dict(self) -> dict:
        return {"score": self.kind, "num_samples": self.num_samples,
                "window": getattr(self.score, "window", 0),
                "arrays": {name: torch.from_numpy(a.copy()) for name, a in self.score.arrays().items()}}

    def load_state_dict(self, state: dict, where: str) -> None:
        """Restore the scores; `where` names the checkpoint in errors."""
        mine = (self.kind, self.num_samples, getattr(self.score, "window", 0))
        theirs = (state["score"], int(state["num_samples"]), int(state["window"]))
        if mine != theirs:
            raise ValueError(f"{where}: its dynamic-pruning scores are (SCORE, samples, WINDOW) {theirs}, this run's "
                             f"{mine}; resume with the same settings or use a new --output")
        for name, array in self.score.arrays().items():
            array[...] = state["arrays"][name].numpy()


@dataclass(frozen=True)
class PruneSettings:
    """What a TRAIN.DYNAMIC_PRUNE section holds, for a loop without the config."""

    RATIO: float = 0.5
    ANNEAL: float = 0.125
    SCORE: str = "loss"
    WINDOW: int = 3


class PrunedSampler(torch.utils.data.Sampler):
    """A DataLoader sampler over the pruner's epochs: `set_epoch(epoch)` plans the epoch
    (call it on every rank, before iterating); iterating yields this rank's equal share
    of the epoch's order, [rank * S, (rank + 1) * S) with S = len(order) // world_size."""

    def __init__(self, pruner: DynamicPruner, rank: int = 0, world_size: int = 1):
        self.pruner, self.rank, self.world_size = pruner, rank, world_size
        self.plan: Optional[EpochPlan] = None

    def set_epoch(self, epoch: int) -> None:
        self.plan = self.pruner.plan(epoch)

    def _share(self) -> np.ndarray:
        if self.plan is None:
            raise RuntimeError("PrunedSampler: call set_epoch(epoch) before each epoch")
        per_rank = len(self.plan.order) // self.world_size
        return self.plan.order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share().tolist())

    def __len__(self) -> int:
        return len(self._share())


def plan_images(config, plan, world_size: int) -> int:
    """The images an epoch of `plan` trains on, over all ranks."""
    return world_size * shard_length(len(plan.order), world_size, config.DATA.BATCH_SIZE_TRAIN)


def plan_pruned_epoch(config, pruner: Optional[DynamicPruner], scheduler, epoch: int, num_samples: int,
                      world_size: int) -> Optional[EpochPlan]:
    """With dynamic pruning: the epoch's plan (logged), and the learning-rate schedule
    (utils/lr_scheduler.py) told how many updates the epoch takes; None without it."""
    if pruner is None:
        return None
    plan = pruner.plan(epoch)
    images = plan_images(config, plan, world_size)
    updates = -(-(images // world_size // config.DATA.BATCH_SIZE_TRAIN) // config.TRAIN.ACCUMULATION_STEPS)
    scheduler.start_epoch(epoch, updates)
    if plan.dropped:
        logger.info(f"epoch {epoch}: dynamic pruning ({pruner.kind}): {plan.candidates} of {num_samples} samples "
                    f"score below the mean {plan.threshold:.4g}, {plan.dropped} of them dropped "
                    f"({plan.dropped / plan.candidates:.2%}), the other {plan.candidates - plan.dropped} weighted "
                    f"x{plan.scale:.4f}; {len(plan.order)} samples, {images} images seen, {updates} updates")
    else:
        why = ("epoch 0" if epoch == 0 else "anneal: full data" if epoch >= pruner.anneal_from else
               "RATIO 0" if pruner.ratio == 0 else "no sample scored below the mean" if not plan.candidates
               else f"round(RATIO x {plan.candidates} candidates) is 0")
        logger.info(f"epoch {epoch}: dynamic pruning off ({why}): {images} images seen, {updates} updates")
    return plan
