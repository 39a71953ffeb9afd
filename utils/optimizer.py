"""Optimizers: sgd and adamw (fused on CUDA), and apex's FusedAdam/FusedLAMB when NVIDIA
apex is importable. Norm weights, biases and position tables get no weight decay."""
import logging
from typing import Iterable, List, Set

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd", "fusedadam", "fusedlamb")


def _skip_names(model: nn.Module, attr: str) -> Set[str]:
    fn = getattr(model, attr, None)
    return set(fn()) if callable(fn) else set()


def parameter_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    skip = _skip_names(model, "no_weight_decay")
    keywords: Iterable[str] = _skip_names(model, "no_weight_decay_keywords")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.TRAIN.OPTIMIZER
    name = opt.NAME.lower()
    groups = parameter_groups(model, config.TRAIN.WEIGHT_DECAY)
    lr = config.TRAIN.BASE_LR
    on_cuda = next(model.parameters()).is_cuda
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.MOMENTUM, nesterov=opt.NESTEROV)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=opt.EPS, betas=tuple(opt.BETAS), fused=on_cuda or None)
    if name in ("fusedadam", "fusedlamb"):
        try:
            from apex.optimizers import FusedAdam, FusedLAMB
        except ImportError:
            raise ImportError(
                f"TRAIN.OPTIMIZER.NAME {opt.NAME} needs NVIDIA apex (built from source); use 'adamw' instead"
            ) from None
        cls = FusedAdam if name == "fusedadam" else FusedLAMB
        return cls(groups, lr=lr, eps=opt.EPS, betas=tuple(opt.BETAS))
    raise ValueError(f"TRAIN.OPTIMIZER.NAME: unknown optimizer {opt.NAME!r}; known: {', '.join(OPTIMIZERS)}")
