"""Adapting pretrained weights to the model being trained (`--pretrain CKPT`).

- Classifier: from an ImageNet-21K (raw) checkpoint into a 1K model, the rows listed in
  DATA.MAPPING_DICT_PATH are kept (the 1K classes inside the 21K head); any other
  class-count mismatch leaves the head to be re-initialised (load_pretrained says so).
- Swin relative-position bias tables are resized (bicubic) when the window size differs.
"""
import logging
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from data.val_labels import load_mapping_dict

logger = logging.getLogger(__name__)


def _select_head_rows(config, state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> None:
    num_classes = config.MODEL.NUM_CLASSES
    head_keys = [k for k, v in state.items()
                 if k in own and v.ndim >= 1 and own[k].ndim == v.ndim and own[k].shape[0] == num_classes
                 and v.shape[0] != num_classes and v.shape[1:] == own[k].shape[1:]]
    if not head_keys:
        return
    path = config.DATA.MAPPING_DICT_PATH
    old = state[head_keys[0]].shape[0]
    if not path:
        logger.info(f"pretrained head has {old} classes, the model {num_classes}: the head is re-initialised "
                    f"(set DATA.MAPPING_DICT_PATH to keep the mapped rows of a 21K head)")
        return
    mapping = load_mapping_dict(path)
    if len(mapping) != num_classes or mapping.max() >= old:
        logger.info(f"{path} maps {len(mapping)} classes into at most {int(mapping.max()) + 1}, which does not fit a "
                    f"{old}-class head into {num_classes} classes: the head is re-initialised")
        return
    rows = torch.as_tensor(mapping)
    for k in head_keys:
        state[k] = state[k].index_select(0, rows)
    logger.info(f"kept the {num_classes} rows of the {old}-class head listed in {path} ({', '.join(head_keys)})")


def _resize_position_tables(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> None:
    for k, v in list(state.items()):
        if not k.endswith("relative_position_bias_table") or k not in own or own[k].shape == v.shape:
            continue
        (old_len, heads), new_len = v.shape, own[k].shape[0]
        old_side, new_side = int(math.isqrt(old_len)), int(math.isqrt(new_len))
        if old_side * old_side != old_len or new_side * new_side != new_len or own[k].shape[1] != heads:
            continue
        grid = v.t().reshape(1, heads, old_side, old_side).float()
        grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
        state[k] = grid.reshape(heads, new_len).t().to(v.dtype)
        logger.info(f"resized {k} from {old_side}x{old_side} to {new_side}x{new_side}")
    for k in [k for k in state if k.endswith(("relative_position_index", "attn_mask"))]:
        if k in own and own[k].shape != state[k].shape:
            del state[k]  # buffers the model recomputes for its own window size


def adapt_pretrained_state(config, state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    own = model.state_dict()
    state = dict(state)
    _select_head_rows(config, state, own)
    _resize_position_tables(state, own)
    return state
