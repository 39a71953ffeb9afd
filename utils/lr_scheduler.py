"""Learning-rate schedules stepped once per optimizer update.

Linear warm-up from TRAIN.WARMUP_LR to TRAIN.BASE_LR over WARMUP_EPOCHS, then one of:
cosine (to MIN_LR), linear (to MIN_LR), step (x DECAY_RATE every DECAY_EPOCHS),
multistep (x DECAY_RATE at each epoch in MULTISTEPS). Epoch boundaries for step and
multistep are counted from the start of training, warm-up included.
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
        self.num_updates = 0
        self._apply()

    def lr_at(self, t: int) -> float:
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
        lr = self.lr_at(self.num_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        """Call after each optimizer update."""
        self.num_updates += 1
        self._apply()

    def state_dict(self) -> Dict:
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state: Dict) -> None:
        self.num_updates = int(state["num_updates"])
        self._apply()
