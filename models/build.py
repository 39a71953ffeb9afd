"""The model factory: ``build_model(config)`` picks the architecture by MODEL.TYPE.

| MODEL.TYPE | built from                                  | hyper-parameters        |
| ---------- | ------------------------------------------- | ----------------------- |
| swin       | our SwinTransformer (models/swin_transformer) | MODEL.SWIN.*          |
| swinv2     | timm SwinTransformerV2                      | MODEL.SWINV2.*          |
| convnext   | timm ConvNeXt                               | MODEL.CONVNEXT.*        |
| vit        | timm VisionTransformer                      | MODEL.VIT.*             |
| resnet     | timm, the architecture named by MODEL.NAME  | (e.g. resnet50, resnet_tiny) |
| timm       | timm, any architecture named by MODEL.NAME  |                         |

Every type honours MODEL.NUM_CLASSES, MODEL.DROP_RATE, MODEL.DROP_PATH_RATE and
TRAIN.USE_CHECKPOINT. timm models are always built with pretrained=False (nothing is
downloaded); weights come from MODEL.PRETRAINED, loaded by the caller.

MODEL.DROP_RATE means, for ``swin``, the dropout of the paper's code (embeddings,
attention projection, MLP); for the timm-built types, timm's ``drop_rate`` (dropout
before the classifier).
"""
import functools
import logging
from typing import Any, Callable, Dict

import timm
import torch.nn as nn
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer

from models import resnet_tiny  # noqa: F401  (registers resnet_tiny in timm's factory)
from models.layers import get_layernorm
from models.swin_transformer import SwinTransformer

logger = logging.getLogger(__name__)


def _build_swin(config) -> nn.Module:
    s = config.MODEL.SWIN
    fused_window = config.ACCELERATION.FUSED_WINDOW_PROCESS
    if fused_window:
        from kernels.window_process import window_process

        if not window_process.is_available():
            logger.warning("ACCELERATION.FUSED_WINDOW_PROCESS: the swin_window_process extension is not "
                           "importable (build kernels/window_process), using torch.roll + partition")
            fused_window = False
    return SwinTransformer(
        img_size=config.DATA.IMG_SIZE,
        patch_size=s.PATCH_SIZE,
        in_chans=s.IN_CHANS,
        num_classes=config.MODEL.NUM_CLASSES,
        embed_dim=s.EMBED_DIM,
        depths=list(s.DEPTHS),
        num_heads=list(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
        norm_layer=get_layernorm(config.ACCELERATION.FUSED_LAYERNORM),
        ape=s.APE,
        patch_norm=s.PATCH_NORM,
        use_checkpoint=config.TRAIN.USE_CHECKPOINT,
        fused_window_process=fused_window,
    )


def _build_swinv2(config) -> nn.Module:
    s = config.MODEL.SWINV2
    return SwinTransformerV2(
        img_size=config.DATA.IMG_SIZE,
        patch_size=s.PATCH_SIZE,
        in_chans=s.IN_CHANS,
        num_classes=config.MODEL.NUM_CLASSES,
        embed_dim=s.EMBED_DIM,
        depths=tuple(s.DEPTHS),
        num_heads=tuple(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
        norm_layer=get_layernorm(config.ACCELERATION.FUSED_LAYERNORM),
        pretrained_window_sizes=tuple(s.PRETRAINED_WINDOW_SIZES),
    )


def _build_convnext(config) -> nn.Module:
    s = config.MODEL.CONVNEXT
    return ConvNeXt(
        in_chans=s.IN_CHANS,
        num_classes=config.MODEL.NUM_CLASSES,
        depths=tuple(s.DEPTHS),
        dims=tuple(s.DIMS),
        ls_init_value=s.LAYER_SCALE_INIT_VALUE,
        head_init_scale=s.HEAD_INIT_SCALE,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
    )


def _build_vit(config) -> nn.Module:
    s = config.MODEL.VIT
    norm_layer = functools.partial(get_layernorm(config.ACCELERATION.FUSED_LAYERNORM), eps=1e-6)  # timm's default
    return VisionTransformer(
        img_size=config.DATA.IMG_SIZE,
        patch_size=s.PATCH_SIZE,
        in_chans=s.IN_CHANS,
        num_classes=config.MODEL.NUM_CLASSES,
        embed_dim=s.EMBED_DIM,
        depth=s.DEPTH,
        num_heads=s.NUM_HEADS,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
        norm_layer=norm_layer,
    )


def _create_timm(config) -> nn.Module:
    """Any timm architecture by MODEL.NAME, without pretrained weights.

    The rates are passed even when 0 (some architectures default to a non-zero
    drop-path). An architecture that does not take one of the optional arguments is
    built without it only where that loses nothing: ``img_size`` (convolutional nets
    take any size) and a rate of 0.
    """
    name = config.MODEL.NAME
    if not timm.is_model(name):
        raise ValueError(f"MODEL.NAME {name!r} is not a timm architecture (see timm.list_models())")
    kwargs: Dict[str, Any] = dict(num_classes=config.MODEL.NUM_CLASSES)
    optional: Dict[str, Any] = dict(img_size=config.DATA.IMG_SIZE, drop_rate=config.MODEL.DROP_RATE,
                                    drop_path_rate=config.MODEL.DROP_PATH_RATE)
    config_key = dict(drop_rate="MODEL.DROP_RATE", drop_path_rate="MODEL.DROP_PATH_RATE")
    while True:
        try:
            return timm.create_model(name, pretrained=False, **kwargs, **optional)
        except TypeError as e:
            rejected = [k for k in optional if f"'{k}'" in str(e)]
            if not rejected:
                raise
            key = rejected[0]
            if key != "img_size" and optional[key]:
                raise ValueError(f"timm architecture {name!r} does not take {key}: "
                                 f"set {config_key[key]} 0") from e
            del optional[key]


def _build_resnet(config) -> nn.Module:
    if "resnet" not in config.MODEL.NAME:
        raise ValueError(f"MODEL.TYPE resnet needs a ResNet in MODEL.NAME (e.g. resnet50, resnet_tiny), "
                         f"got {config.MODEL.NAME!r}; use MODEL.TYPE timm for other timm architectures")
    return _create_timm(config)


_BUILDERS: Dict[str, Callable[[Any], nn.Module]] = {
    "swin": _build_swin,
    "swinv2": _build_swinv2,
    "convnext": _build_convnext,
    "vit": _build_vit,
    "resnet": _build_resnet,
    "timm": _create_timm,
}

# Types whose builder uses ACCELERATION.FUSED_LAYERNORM.
_FUSED_LAYERNORM_TYPES = ("swin", "swinv2", "vit")


def build_model(config) -> nn.Module:
    """The model described by ``config.MODEL`` (see the table in this module's docstring)."""
    model_type = config.MODEL.TYPE
    if model_type not in _BUILDERS:
        raise ValueError(f"MODEL.TYPE {model_type!r} is unknown; known types: {', '.join(_BUILDERS)}")
    if config.MODEL.NUM_CLASSES <= 0:
        raise ValueError(f"MODEL.NUM_CLASSES must be positive, got {config.MODEL.NUM_CLASSES}")
    if config.ACCELERATION.FUSED_LAYERNORM and model_type not in _FUSED_LAYERNORM_TYPES:
        logger.warning("ACCELERATION.FUSED_LAYERNORM has no effect for MODEL.TYPE %s", model_type)
    model = _BUILDERS[model_type](config)
    if config.TRAIN.USE_CHECKPOINT and model_type != "swin":  # swin takes it in its constructor
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"TRAIN.USE_CHECKPOINT: {type(model).__name__} has no gradient checkpointing")
        model.set_grad_checkpointing(True)
    return model
