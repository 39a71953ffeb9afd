"""Small building blocks shared by the model factories."""
import logging
from typing import Callable

import torch.nn as nn

logger = logging.getLogger(__name__)


def get_layernorm(fused: bool) -> Callable[..., nn.Module]:
    """A LayerNorm constructor, called as ``norm(normalized_shape, eps=..., device=..., dtype=...)``.

    fused=True: NVIDIA apex ``FusedLayerNorm`` when ``apex.normalization`` imports, else
    ``torch.nn.LayerNorm`` with a warning. Both name their parameters ``weight`` and
    ``bias``, so state dicts are interchangeable.
    """
    if not fused:
        return nn.LayerNorm
    try:
        from apex.normalization import FusedLayerNorm
    except ImportError:
        logger.warning("ACCELERATION.FUSED_LAYERNORM: apex is not installed, using torch.nn.LayerNorm")
        return nn.LayerNorm

    def fused_layernorm(normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                        device=None, dtype=None) -> nn.Module:
        # apex's constructor has no device/dtype arguments; timm passes them.
        norm = FusedLayerNorm(normalized_shape, eps=eps, elementwise_affine=elementwise_affine)
        return norm.to(device=device, dtype=dtype) if device is not None or dtype is not None else norm

    return fused_layernorm
