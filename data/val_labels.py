"""Validation extras of the ImageNet recipes: the 21K->1K class mapping and ImageNet-ReaL."""
import json
import os
import re
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from data.datasets import dataset_info


def load_mapping_dict(path: str, num_classes: Optional[int] = None) -> np.ndarray:
    """mapping_dict.txt: for each ImageNet-1K class (sorted), its index among the 21K
    classes. Written by `python -m data.prepare map-21k` (or the paper's snippet)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DATA.MAPPING_DICT_PATH: {path} does not exist (make it with "
                                f"`python -m data.prepare map-21k`)")
    try:
        values = np.loadtxt(path, ndmin=1)
    except ValueError as e:
        raise ValueError(f"{path}: not a list of class indices: {e}") from None
    mapping = values.astype(np.int64)
    if not np.array_equal(mapping, values) or mapping.min(initial=0) < 0:
        raise ValueError(f"{path}: class indices must be non-negative integers")
    if num_classes is not None and len(mapping) and mapping.max() >= num_classes:
        raise ValueError(f"{path}: index {int(mapping.max())} is outside the model's {num_classes} classes")
    return mapping


def val_logit_columns(config, device: torch.device) -> Optional[torch.Tensor]:
    """The logit columns to keep on validation: the 1,000 mapped classes for a 21K (raw)
    model trained on ImageNet-21K, loaded once onto the device; None otherwise."""
    info = dataset_info(config.DATA.DATASET)
    if info is None or not info.val_is_1k_via_mapping or not config.DATA.DATA_PATH_VAL:
        return None
    path = config.DATA.MAPPING_DICT_PATH or os.path.join(config.DATA.DATA_PATH_TRAIN, "mapping_dict.txt")
    return torch.as_tensor(load_mapping_dict(path, config.MODEL.NUM_CLASSES), device=device)


_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.")


def real_json_order(file_names: Sequence[str], num_entries: int) -> Optional[np.ndarray]:
    """For each val file-list line, its entry in real.json.

    The published real.json is ordered by image number (entry i is
    ILSVRC2012_val_{i+1:08d}.JPEG), while a val file list is sorted by class folder; when
    every name carries that number, it is used. Otherwise (other names) None: entries
    follow the file-list order, as in the paper's code."""
    numbers = []
    for name in file_names:
        m = _VAL_NAME.search(os.path.basename(name))
        if m is None:
            return None
        numbers.append(int(m.group(1)) - 1)
    order = np.asarray(numbers, dtype=np.int64)
    if len(order) and (order.min() < 0 or order.max() >= num_entries):
        raise ValueError(f"ImageNet val image numbers run up to {int(order.max()) + 1}, real.json has {num_entries} "
                         f"entries")
    if len(np.unique(order)) != len(order):
        raise ValueError("the val file list names the same ImageNet val image number twice")
    return order


class RealLabels:
    """ImageNet-ReaL: real.json is a list of label lists, one per val image; samples with
    an empty list are not counted. With `file_names` (the val list's paths) named like
    ImageNet's, entries are matched by image number; otherwise by file-list order."""

    def __init__(self, path: str, num_val: int, device: torch.device, file_names: Optional[Sequence[str]] = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"DATA.REAL_JSON_PATH: {path} does not exist (DATA.REAL_LABEL is on)")
        with open(path, encoding="utf-8") as f:
            try:
                labels = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(labels, list) or len(labels) != num_val:
            count = len(labels) if isinstance(labels, list) else type(labels).__name__
            raise ValueError(f"{path}: expected a list of {num_val} label lists (one per val image), got {count}")
        order = real_json_order(file_names, len(labels)) if file_names is not None else None
        if order is not None:
            labels = [labels[i] for i in order]
        width = max(1, max(len(x) for x in labels))
        table = torch.full((num_val, width), -1, dtype=torch.int64)
        for i, row in enumerate(labels):
            if row:
                table[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
        self.table = table.to(device)

    def hits(self, indices: torch.Tensor, top5: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-1 hits, top-5 hits, samples counted) for a batch, as device tensors."""
        real = self.table.index_select(0, indices.to(self.table.device).view(-1))  # (B, width)
        counted = real[:, 0] >= 0
        match = (top5.unsqueeze(2) == real.unsqueeze(1)) & (real.unsqueeze(1) >= 0)  # (B, k, width)
        top1 = match[:, 0].any(dim=1) & counted
        top5_hit = match.any(dim=2).any(dim=1) & counted
        return top1.sum(), top5_hit.sum(), counted.sum()
