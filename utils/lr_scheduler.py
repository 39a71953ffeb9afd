"""Learning-rate schedules stepped once per optimizer update.

Linear warm-up from TRAIN.WARMUP_LR to TRAIN.BASE_LR over WARMUP_EPOCHS, then one of:
cosine (to MIN_LR), linear (to MIN_LR), step (x DECAY_RATE every DECAY_EPOCHS),
multistep (x DECAY_RATE at each epoch in MULTISTEPS). Epoch boundaries for step and
multistep are counted from the start of training, warm-up included.

The schedule is a function of the position in training, in updates of a full-data epoch.
Normally each update advances it by one. With dynamic pruning an epoch takes fewer
updates: `start_epoch(epoch, updates)` says how many, and each of them then advances the
position by updates_per_epoch / updates, so that every epoch spans its own share of the
schedule whatever its length: warm-up ends at the start of epoch WARMUP_EPOCHS and the
cosine reaches MIN_LR at the last update of the last epoch, over the steps actually taken.
"""
import math
from typing import Dict, List

import torch

SCHEDULES = ("cosine", "linear", "step", "multistep")


class LRScheduler:
    def __init__(self, optimizer: torch.optim.Optimizer, config, updates_per_epoch: int):
        sched = config.TRAIN.LR_SCHEDULER
        if sched.NAME not in SCHEDULES:
            raise ValueError(f"TRAIN.LR_SCHEDULER.NAME: unknown schedule {sched.NAME!r}; known: {', '.join(SCHEDULES)}")
        self.optimizer = optimizer
        self.name = sched.NAME
        self.base_lr = config.TRAIN.BASE_LR
        self.warmup_lr = config.TRAIN.WARMUP_LR
        self.min_lr = config.TRAIN.MIN_LR
        self.decay_rate = sched.DECAY_RATE
        self.updates_per_epoch = updates_per_epoch
        self.total = config.TRAIN.EPOCHS * updates_per_epoch
        self.warmup = config.TRAIN.WARMUP_EPOCHS * updates_per_epoch
        self.decay_every = sched.DECAY_EPOCHS * updates_per_epoch
        self.milestones: List[int] = [m * updates_per_epoch for m in sched.MULTISTEPS]
        self.num_updates = 0  # updates taken
        # Set by start_epoch (dynamic pruning): the epoch, its number of updates, and the
        # updates taken in it; None: the position is num_updates.
        self.epoch = self.epoch_updates = None
        self.in_epoch = 0
        self._apply()

    def start_epoch(self, epoch: int, updates: int) -> None:
        """Epoch `epoch` takes `updates` optimizer updates: they span [epoch, epoch + 1) of
        the schedule."""
        if updates < 1:
            raise ValueError(f"epoch {epoch}: an epoch needs at least one update, got {updates}")
        self.epoch, self.epoch_updates, self.in_epoch = epoch, updates, 0
        self._apply()

    def position(self):
        """Where in the schedule the next update is, in updates of a full-data epoch."""
        if self.epoch_updates is None:
            return self.num_updates
        return self.epoch * self.updates_per_epoch + self.in_epoch * self.updates_per_epoch / self.epoch_updates

    def lr_at(self, t) -> float:
        if t < self.warmup:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * t / self.warmup
        if self.name == "cosine":
            span = max(1, self.total - self.warmup)
            progress = min(1.0, (t - self.warmup) / span)
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
        if self.name == "linear":
            span = max(1, self.total - self.warmup)
            progress = min(1.0, (t - self.warmup) / span)
            return self.base_lr + (self.min_lr - self.base_lr) * progress
        if self.name == "step":
            return self.base_lr * self.decay_rate ** (t // max(1, self.decay_every))
        return self.base_lr * self.decay_rate ** sum(t >= m for m in self.milestones)

    def _apply(self) -> None:
        lr = self.lr_at(self.position())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        """Call after each optimizer update."""
        self.num_updates += 1
        self.in_epoch += 1
        self._apply()

    def state_dict(self) -> Dict:
        state = {"num_updates": self.num_updates}
        if self.epoch_updates is not None:
            state.update(epoch=self.epoch, epoch_updates=self.epoch_updates, in_epoch=self.in_epoch)
        return state

    def load_state_dict(self, state: Dict) -> None:
        self.num_updates = int(state["num_updates"])
        if "epoch_updates" in state:
            self.epoch, self.epoch_updates = int(state["epoch"]), int(state["epoch_updates"])
            self.in_epoch = int(state["in_epoch"])
        else:
            self.epoch = self.epoch_updates = None
            self.in_epoch = 0
        self._apply()
