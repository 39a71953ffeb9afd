"""Data factory: the file lists of a run, and one loader per epoch."""
import logging
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from data.datasets import dataset_info
from dynunc.lists.file_list import FileList, read_coreset, read_file_list
from dynunc.lists.keyed import KeyedSamples, KeyTable
from data.pipeline import DaliLoader, ViewSpec
from data.reader import BatchReader, eval_shard, pipeline_seed, shard, train_shard

logger = logging.getLogger(__name__)

Samples = Union[FileList, KeyedSamples]  # what a loader reads


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


@dataclass
class RunData:
    """The file lists (or keyed samples) of a run, read and validated once at start-up."""

    train: Samples
    val: Optional[Samples]


def history_identity(train: Samples) -> dict:
    """What a produce run's recorder stores beside the history to name its samples: the
    train list's path (file_list.json), or the key table (sample_keys.txt and its
    fingerprint) for shards and datasets."""
    if isinstance(train, FileList):
        return {"file_list": train.path}
    whole = len(train) == len(train.keys)
    return {"keys": train.keys if whole else KeyTable.from_keys(train.files)}


FORMATS = ("folder", "wds", "hf")


def _open_keyed(config, split: str, num_classes: int) -> Optional[KeyedSamples]:
    """The samples of `split` ("TRAIN" or "VAL") in DATA.FORMAT wds or hf (None when its
    DATA.*_SHARDS / DATA.HF_* is empty)."""
    data = config.DATA
    if data.FORMAT == "wds":
        from data.shards import open_shards

        pattern = data[f"{split}_SHARDS"]
        return open_shards(pattern, num_classes, f"DATA.{split}_SHARDS") if pattern or split == "TRAIN" else None
    from data.hf_data import open_hf

    path = data[f"HF_{split}"]
    return open_hf(path, data.HF_IMAGE_KEY, data.HF_LABEL_KEY, num_classes,
                   f"DATA.HF_{split}") if path or split == "TRAIN" else None


def load_file_lists(config, coreset: Optional[str] = None) -> RunData:
    """Read the train list (or the coreset, whose lines must be lines of the train list)
    and the val list, checking labels against MODEL.NUM_CLASSES. Sizes that differ from
    the dataset table's are a warning. DATA.FORMAT wds or hf: the samples of the shards or
    the dataset instead (dynunc/lists/keyed.py), and a coreset names kept keys."""
    num_classes = config.MODEL.NUM_CLASSES
    info = dataset_info(config.DATA.DATASET)
    val_classes = 1000 if info is not None and info.val_is_1k_via_mapping else num_classes
    if config.DATA.FORMAT not in FORMATS:
        raise ValueError(f"DATA.FORMAT: unknown value {config.DATA.FORMAT!r}; known: {', '.join(FORMATS)}")
    if config.DATA.FORMAT != "folder":
        train = _open_keyed(config, "TRAIN", num_classes)
        if coreset:
            train = train.subset(coreset)
        val = _open_keyed(config, "VAL", val_classes)
        if val is not None and config.DATA.REAL_LABEL:
            raise ValueError("DATA.REAL_LABEL needs DATA.FORMAT folder (real.json follows the val file list)")
        return RunData(train, val)
    train_root = config.DATA.DATA_PATH_TRAIN
    full_path = _resolve(config.DATA.TRAIN_FILE_LIST, train_root)
    if coreset:
        train = read_coreset(coreset, full_path, root=train_root, num_classes=num_classes)
    else:
        train = read_file_list(full_path, root=train_root, num_classes=num_classes)
    val = None
    if config.DATA.DATA_PATH_VAL:
        val_root = config.DATA.DATA_PATH_VAL
        val = read_file_list(_resolve(config.DATA.VAL_FILE_LIST, val_root), root=val_root, num_classes=val_classes)
    if info is not None:
        if coreset is None and info.train_size and len(train) != info.train_size:
            logger.warning(f"{train.path}: {len(train)} lines, {config.DATA.DATASET} has {info.train_size} training images")
        if val is not None and info.val_size and len(val) != info.val_size:
            logger.warning(f"{val.path}: {len(val)} lines, {config.DATA.DATASET} has {info.val_size} validation images")
    return RunData(train, val)


DECODE_DEVICES = ("auto", "mixed", "cpu")


def dali_device_id(config, device_id: Optional[int]) -> Optional[int]:
    """The GPU DALI decodes on ("mixed"), or None for a CPU-only pipeline."""
    choice = config.DATA.DECODE_DEVICE
    if choice not in DECODE_DEVICES:
        raise ValueError(f"DATA.DECODE_DEVICE: unknown value {choice!r}; known: {', '.join(DECODE_DEVICES)}")
    if choice == "mixed" and device_id is None:
        raise ValueError("DATA.DECODE_DEVICE is 'mixed' but this process has no CUDA device")
    return None if choice == "cpu" else device_id


def _loader(config, file_list: FileList, order, batch_size: int, spec: ViewSpec, seed: int, device_id) -> DaliLoader:
    reader = BatchReader(file_list, order, batch_size, threads=config.DATA.NUM_WORKERS)
    return DaliLoader(reader, spec, seed=seed, device_id=dali_device_id(config, device_id),
                      num_threads=config.DATA.NUM_THREADS,
                      prefetch=config.DATA.PREFETCH)


def build_train_loader(config, file_list: FileList, epoch: int, rank: int, world_size: int,
                       device_id: Optional[int], eval_view: bool = False,
                       epoch_order: Optional[np.ndarray] = None) -> DaliLoader:
    """The training loader of one epoch; its order and augmentation depend only on
    (SEED, epoch, rank, world size), so a resumed run repeats an uninterrupted one.
    `epoch_order`: the epoch's order over all ranks (dynamic pruning's kept samples),
    instead of the permutation of the whole list; sharded by the same rule."""
    batch_size = config.DATA.BATCH_SIZE_TRAIN
    if epoch_order is None:
        order = train_shard(len(file_list), config.SEED, epoch, rank, world_size, batch_size)
    else:
        order = shard(epoch_order, rank, world_size, batch_size)
    spec = ViewSpec(
        img_size=config.DATA.IMG_SIZE, interpolation=config.DATA.INTERPOLATION, train=True, eval_view=eval_view,
        auto_augment=config.AUG.AUTO_AUGMENT, hflip=config.AUG.HORIZONTAL_FLIP,
        crop_scale=tuple(config.AUG.RANDOM_RESIZED_CROP_SCALE), crop_ratio=tuple(config.AUG.RANDOM_RESIZED_CROP_RATIO),
    )
    return _loader(config, file_list, order, batch_size, spec, pipeline_seed(config.SEED, epoch, rank), device_id)


def build_eval_view_loader(config, file_list: FileList, order, device_id: Optional[int]) -> DaliLoader:
    """These samples of the training list, in this order, on produce mode's eval view
    (shorter side resized to IMG_SIZE, centre crop): the end-of-epoch embedding pass
    (dynunc/training/embeddings.py)."""
    spec = ViewSpec(img_size=config.DATA.IMG_SIZE, interpolation=config.DATA.INTERPOLATION, train=False,
                    test_crop=True, crop_pct=1.0)
    return _loader(config, file_list, order, config.DATA.BATCH_SIZE_VAL, spec, 0, device_id)


def build_val_loader(config, file_list: FileList, rank: int, world_size: int, device_id: Optional[int]) -> DaliLoader:
    """Every validation image exactly once across ranks."""
    spec = ViewSpec(
        img_size=config.DATA.IMG_SIZE, interpolation=config.DATA.INTERPOLATION, train=False,
        test_crop=config.TEST.CROP, crop_pct=config.TEST.CROP_PCT,
    )
    order = eval_shard(len(file_list), rank, world_size)
    return _loader(config, file_list, order, config.DATA.BATCH_SIZE_VAL, spec, 0, device_id)
