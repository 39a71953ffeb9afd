"""``resnet_tiny``: a small ResNet for CPU demos and tests, registered in timm's factory;
``resnet_micro``, the same at half the width (a cheaper proxy for scoring,
docs/cheaper_scoring.md).

timm's ``ResNet`` class with ``BasicBlock``, one block per stage and channels
(16, 32, 64, 128), so that it trains quickly on 32x32 images on a laptop CPU. Output
stride 8 (the last two stages dilate instead of striding) keeps a 4x4 map at 32 px
rather than 1x1.
Importing this module registers it; ``timm.create_model("resnet_tiny")`` then works.
"""
import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

NAME = "resnet_tiny"
MICRO = "resnet_micro"

# Read by register_model: the input size and normalisation it was designed for (no weights).
_CFG = dict(num_classes=1000, input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, interpolation="bilinear",
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="conv1", classifier="fc")
default_cfgs = generate_default_cfgs({NAME: dict(_CFG), MICRO: dict(_CFG)})


def resnet_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    if pretrained:
        raise ValueError(f"{NAME} has no pretrained weights")
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16,
                output_stride=8)
    return build_model_with_cfg(ResNet, NAME, pretrained=False, **dict(args, **kwargs))


def resnet_micro(pretrained: bool = False, **kwargs) -> ResNet:
    """resnet_tiny at half the width: channels (8, 16, 32, 64) after the stem, about 3.5x fewer parameters."""
    if pretrained:
        raise ValueError(f"{MICRO} has no pretrained weights")
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, output_stride=8)
    return build_model_with_cfg(ResNet, MICRO, pretrained=False, **dict(args, **kwargs))


if not timm.is_model(NAME):  # the module may be imported under two names
    register_model(resnet_tiny)
if not timm.is_model(MICRO):
    register_model(resnet_micro)
