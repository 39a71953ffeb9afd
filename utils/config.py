"""The one configuration schema.

Every key the code reads has its default here. ``MODEL.MODEL_CONFIG_PATH`` may name a
YAML file with the architecture hyper-parameters (relative to the file that names it);
the config file overrides it (and may inherit from other files with ``BASE: [file,
...]``), and ``--opts KEY VALUE ...`` overrides everything last. An unknown key is an
error naming the key and the file it came from.
"""
import ast
import os
from typing import Dict, Iterable, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

_C = CN()
_C.BASE = [""]

# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
_C.DATA = CN()
# One of the names in data/datasets.py, or "custom" (then MODEL.NUM_CLASSES is required).
_C.DATA.DATASET = "ImageNet-1K"
# Training images; the file list's paths are relative to this folder.
_C.DATA.DATA_PATH_TRAIN = ""
# File list of the training set, relative to DATA_PATH_TRAIN unless absolute.
# `--coreset FILE` replaces it for one run.
_C.DATA.TRAIN_FILE_LIST = "file_list.txt"
# Validation images and their file list (relative to DATA_PATH_VAL unless absolute).
_C.DATA.DATA_PATH_VAL = ""
_C.DATA.VAL_FILE_LIST = "file_list.txt"
# Where the images are: folder (an image tree named by the file lists above) | wds
# (WebDataset tar shards, data/shards.py) | hf (a Hugging Face dataset on disk,
# data/hf_data.py). With wds and hf, `--coreset FILE` holds sample keys, one per line.
_C.DATA.FORMAT = "folder"
# wds: brace patterns of local tar files (e.g. /data/imagenet-1k-wds/imagenet1k-train-{0000..1023}.tar);
# a sample is the members sharing a key: KEY.jpg|jpeg|png|webp (image), KEY.cls (label).
_C.DATA.TRAIN_SHARDS = ""
_C.DATA.VAL_SHARDS = ""
# hf: a save_to_disk folder, or parquet files (a file, a folder, a glob); never a hub name.
_C.DATA.HF_TRAIN = ""
_C.DATA.HF_VAL = ""
# hf: the columns holding the encoded image (datasets' Image feature) and the integer label.
_C.DATA.HF_IMAGE_KEY = "image"
_C.DATA.HF_LABEL_KEY = "label"
# Per-process batch sizes.
_C.DATA.BATCH_SIZE_TRAIN = 128
_C.DATA.BATCH_SIZE_VAL = 128
_C.DATA.IMG_SIZE = 224
# bicubic | bilinear | triangular | nearest
_C.DATA.INTERPOLATION = "bicubic"
# Threads that read image files ahead of the DALI pipeline, per process.
_C.DATA.NUM_WORKERS = 4
# DALI threads per pipeline.
_C.DATA.NUM_THREADS = 4
_C.DATA.PREFETCH = 2
# auto: "mixed" (nvJPEG on LOCAL_RANK's GPU) when CUDA is available, else "cpu".
_C.DATA.DECODE_DEVICE = "auto"
# ImageNet-ReaL evaluation (real.json: 50,000 label lists in val file-list order).
_C.DATA.REAL_LABEL = False
_C.DATA.REAL_JSON_PATH = ""
# ImageNet-21K (raw) models evaluated on ImageNet-1K val: 1,000 column indices.
_C.DATA.MAPPING_DICT_PATH = ""

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# swin | swinv2 | resnet | convnext | vit | timm
_C.MODEL.TYPE = "swin"
# A label for logs; for TYPE resnet and timm it is the timm architecture name.
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"
# A YAML file with architecture hyper-parameters, merged into this config.
_C.MODEL.MODEL_CONFIG_PATH = ""
# Weights to start from (set by --pretrain); a mismatched head is re-initialised.
_C.MODEL.PRETRAINED = ""
# A checkpoint to resume from (set by --resume); else TRAIN.AUTO_RESUME looks in OUTPUT.
_C.MODEL.RESUME = ""
# 0: the class count of DATA.DATASET.
_C.MODEL.NUM_CLASSES = 0
_C.MODEL.DROP_RATE = 0.0
_C.MODEL.DROP_PATH_RATE = 0.1
_C.MODEL.LABEL_SMOOTHING = 0.1

_C.MODEL.SWIN = CN()
_C.MODEL.SWIN.PATCH_SIZE = 4
_C.MODEL.SWIN.IN_CHANS = 3
_C.MODEL.SWIN.EMBED_DIM = 96
_C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
_C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
_C.MODEL.SWIN.WINDOW_SIZE = 7
_C.MODEL.SWIN.MLP_RATIO = 4.0
_C.MODEL.SWIN.QKV_BIAS = True
_C.MODEL.SWIN.APE = False
_C.MODEL.SWIN.PATCH_NORM = True

_C.MODEL.SWINV2 = CN()
_C.MODEL.SWINV2.PATCH_SIZE = 4
_C.MODEL.SWINV2.IN_CHANS = 3
_C.MODEL.SWINV2.EMBED_DIM = 96
_C.MODEL.SWINV2.DEPTHS = [2, 2, 6, 2]
_C.MODEL.SWINV2.NUM_HEADS = [3, 6, 12, 24]
_C.MODEL.SWINV2.WINDOW_SIZE = 8
_C.MODEL.SWINV2.MLP_RATIO = 4.0
_C.MODEL.SWINV2.QKV_BIAS = True
_C.MODEL.SWINV2.PRETRAINED_WINDOW_SIZES = [0, 0, 0, 0]

_C.MODEL.CONVNEXT = CN()
_C.MODEL.CONVNEXT.IN_CHANS = 3
_C.MODEL.CONVNEXT.DEPTHS = [3, 3, 9, 3]
_C.MODEL.CONVNEXT.DIMS = [96, 192, 384, 768]
_C.MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE = 1e-6
_C.MODEL.CONVNEXT.HEAD_INIT_SCALE = 1.0

_C.MODEL.VIT = CN()
_C.MODEL.VIT.PATCH_SIZE = 16
_C.MODEL.VIT.IN_CHANS = 3
_C.MODEL.VIT.EMBED_DIM = 768
_C.MODEL.VIT.DEPTH = 12
_C.MODEL.VIT.NUM_HEADS = 12
_C.MODEL.VIT.MLP_RATIO = 4.0
_C.MODEL.VIT.QKV_BIAS = True

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0
_C.TRAIN.EPOCHS = 300
_C.TRAIN.WARMUP_EPOCHS = 20
_C.TRAIN.WEIGHT_DECAY = 0.05
# The learning rate itself (not scaled by the batch size).
_C.TRAIN.BASE_LR = 1e-3
_C.TRAIN.WARMUP_LR = 1e-6
_C.TRAIN.MIN_LR = 1e-5
# 0 disables clipping.
_C.TRAIN.CLIP_GRAD = 5.0
_C.TRAIN.AUTO_RESUME = True
# Checkpoints kept in OUTPUT/ckpts: 0 keeps all (the paper's behaviour); N > 0 keeps the
# newest N that load, deleting older ones only after a new one is written and loads.
_C.TRAIN.KEEP_CHECKPOINTS = 0
_C.TRAIN.ACCUMULATION_STEPS = 1
# Gradient checkpointing, to trade compute for memory.
_C.TRAIN.USE_CHECKPOINT = False

_C.TRAIN.LR_SCHEDULER = CN()
# cosine | linear | step | multistep
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"
# step: decay every DECAY_EPOCHS; multistep: at each of MULTISTEPS.
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1
_C.TRAIN.LR_SCHEDULER.MULTISTEPS = []

_C.TRAIN.OPTIMIZER = CN()
# adamw | sgd | fusedadam | fusedlamb (the last two need NVIDIA apex)
_C.TRAIN.OPTIMIZER.NAME = "adamw"
_C.TRAIN.OPTIMIZER.EPS = 1e-8
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9
_C.TRAIN.OPTIMIZER.NESTEROV = False

# Dynamic pruning (dynunc/training/online_pruning.py; README, "Dynamic pruning"): each epoch,
# RATIO of the well-learned samples (score below the mean of the scored samples) are
# skipped, drawn at random; the rest of them have their loss scaled by 1 / (1 - ratio).
_C.TRAIN.DYNAMIC_PRUNE = CN()
_C.TRAIN.DYNAMIC_PRUNE.ENABLE = False
# The share of the candidates dropped each epoch, in [0, 1).
_C.TRAIN.DYNAMIC_PRUNE.RATIO = 0.5
# loss: the sample's training loss the last time it was trained; dynunc: the dynamic
# uncertainty so far of its true-label probability on the training forward (WINDOW).
_C.TRAIN.DYNAMIC_PRUNE.SCORE = "loss"
# dynunc only: the window, in the sample's own trained epochs (>= 2).
_C.TRAIN.DYNAMIC_PRUNE.WINDOW = 3
# The share of final epochs trained on the full data, in [0, 1]: every epoch from
# floor((1 - ANNEAL) x EPOCHS) on, as InfoBatch's code anneals (its default 0.125, delta 0.875).
_C.TRAIN.DYNAMIC_PRUNE.ANNEAL = 0.125

# -----------------------------------------------------------------------------
# Augmentation (train view only)
# -----------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.RANDOM_RESIZED_CROP_SCALE = (0.08, 1.0)
_C.AUG.RANDOM_RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_C.AUG.HORIZONTAL_FLIP = True
# ImageNet AutoAugment policy (DALI's auto_augment_image_net).
_C.AUG.AUTO_AUGMENT = True
# Mixup / CutMix (timm); both 0 disables them.
_C.AUG.MIXUP = 0.8
_C.AUG.CUTMIX = 1.0
_C.AUG.CUTMIX_MINMAX = None
_C.AUG.MIXUP_PROB = 1.0
_C.AUG.MIXUP_SWITCH_PROB = 0.5
# batch | pair | elem
_C.AUG.MIXUP_MODE = "batch"

# -----------------------------------------------------------------------------
# Testing
# -----------------------------------------------------------------------------
_C.TEST = CN()
# True: resize the shorter side to IMG_SIZE / CROP_PCT, then centre-crop IMG_SIZE.
# False: resize straight to IMG_SIZE x IMG_SIZE.
_C.TEST.CROP = True
_C.TEST.CROP_PCT = 0.875

# -----------------------------------------------------------------------------
# Speed-ups, each optional with a plain-PyTorch fallback
# -----------------------------------------------------------------------------
_C.ACCELERATION = CN()
# Swin: fused roll + window partition CUDA kernel (kernels/window_process).
_C.ACCELERATION.FUSED_WINDOW_PROCESS = False
# apex FusedLayerNorm when NVIDIA apex is importable, else torch.nn.LayerNorm.
_C.ACCELERATION.FUSED_LAYERNORM = False

# -----------------------------------------------------------------------------
# Produce mode (main_and_produce.py): coreset stability while producing
# (dynunc/training/stability.py; README, "Stability while producing")
# -----------------------------------------------------------------------------
_C.PRODUCE = CN()
# After each epoch with a dynamic-uncertainty score, rank 0 compares the coreset of the
# epochs so far with the one from TRACK_DELTA epochs earlier, at each of these fractions
# (kept-set overlap), and the two score vectors (Spearman). [] switches tracking off.
_C.PRODUCE.TRACK_FRACTIONS = [0.5, 0.75]
# 1: consecutive epochs, the finest resolution for the stopping rule and the least state
# (one earlier score vector); PATIENCE then asks for that many quiet steps in a row.
_C.PRODUCE.TRACK_DELTA = 1
# The dynunc window of the tracked coresets: the paper's 10 (get_coreset's default), cut
# to TRAIN.EPOCHS - 1 for shorter runs; select with the same --window to get them.
_C.PRODUCE.TRACK_WINDOW = 10
_C.PRODUCE.STOP_WHEN_STABLE = CN()
# End the produce run once the overlap at FRACTION (one of TRACK_FRACTIONS) has stayed
# >= OVERLAP for PATIENCE consecutive epochs; a checkpoint and the history so far are kept.
_C.PRODUCE.STOP_WHEN_STABLE.ENABLE = False
_C.PRODUCE.STOP_WHEN_STABLE.OVERLAP = 0.95
_C.PRODUCE.STOP_WHEN_STABLE.PATIENCE = 3
_C.PRODUCE.STOP_WHEN_STABLE.FRACTION = 0.5
# Embeddings (dynunc/training/embeddings.py): the classifier's input on the eval view, randomly
# projected to EMBED_DIM values and stored float16 as embed_{epoch}.npy (training list)
# and val_embed_{epoch}.npy (validation list). 0 records none; -1 records the classifier's
# input itself, unprojected (its full width: 2,048 values for a ResNet-50).
_C.PRODUCE.EMBED_DIM = 128
# The epochs that record them; [] is the last epoch, negative values count from the end.
_C.PRODUCE.EMBED_EPOCHS = []
# Top-k class probabilities (dynunc/training/topk.py): each training sample's K largest
# softmax probabilities and their classes, topk_prob_{epoch}.npy (float16) and
# topk_class_{epoch}.npy, for the epochs of EPOCHS ([] is the last, negative values count
# from the end); what confident learning (get_coreset.py --label-score cleanlab) and the
# suggested labels of --label-issues read. 0 records none. K <= MODEL.NUM_CLASSES.
_C.PRODUCE.TOPK = CN()
_C.PRODUCE.TOPK.K = 0
_C.PRODUCE.TOPK.EPOCHS = []
# AUM's threshold samples (dynunc/training/threshold.py): 1 or 2 trains N // (C + 1) images,
# set 1 or the disjoint set 2, under an extra class (the model gets MODEL.NUM_CLASSES + 1
# outputs); get_coreset.py --label-issues then cuts at the 99th percentile of their mean
# margins. Such a run is for label errors only (its coresets are refused). 0: none.
_C.PRODUCE.THRESHOLD_SAMPLES = 0

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
# Mixed precision on CUDA (always off on CPU).
_C.AMP_ENABLE = True
# float16 | bfloat16
_C.AMP_DTYPE = "float16"
_C.COMPILE_ENABLE = False
_C.OUTPUT = ""
# Save a checkpoint every SAVE_FREQ epochs (and after the last epoch).
_C.SAVE_FREQ = 1
_C.PRINT_FREQ = 10
_C.SEED = 0
_C.EVAL_MODE = False
_C.THROUGHPUT_MODE = False


def get_defaults() -> CN:
    """A mutable copy of the defaults."""
    return _C.clone()


def _read_yaml(path: str) -> Tuple[dict, Dict[str, int]]:
    """The file's mapping, and the line (1-based) of each dotted key in it, for messages."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
        raise ValueError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data, _key_lines(yaml.compose(text))


def _key_lines(node, prefix: str = "") -> Dict[str, int]:
    """{dotted key: line} for the nested mappings of a composed YAML node."""
    lines: Dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            full = f"{prefix}{key.value}"
            lines[full] = key.start_mark.line + 1
            lines.update(_key_lines(value, full + "."))
    return lines


def _parse_text(text: str):
    """A command-line or YAML string meant for a non-string key: a Python or YAML literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def _coerce(value, original, key: str, source: str):
    """`value` converted to the type of the default `original`, or an error naming the key.
    Strings stay strings for string keys (no literal evaluation: OUTPUT '2024' is a path)."""
    if isinstance(value, str) and not isinstance(original, str) and original is not None:
        value = _parse_text(value)
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, (list, tuple)) and isinstance(original, (list, tuple)):
        return type(original)(value)
    if value is None or original is None or type(value) is type(original):
        return value
    raise ValueError(f"{source}: {key} expects {type(original).__name__}, got {value!r}")


def _merge_dict(node: CN, data: dict, source: str, lines: Dict[str, int], prefix: str = "") -> None:
    """Merge a parsed YAML mapping into the schema, refusing unknown keys by name and line."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        where = f"{source}:{lines[full]}" if full in lines else source
        if key not in node:
            raise KeyError(f"{where}: unknown config key {full}")
        if isinstance(node[key], CN):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {full} is a section; got {value!r}")
            _merge_dict(node[key], value, source, lines, full + ".")
        elif isinstance(value, dict):
            raise KeyError(f"{where}: {full} is a value, not a section")
        else:
            node[key] = _coerce(value, node[key], full, where)


def _merge_file(config: CN, path: str, seen: Sequence[str] = ()) -> None:
    path = os.path.abspath(path)
    if path in seen:
        raise ValueError(f"{path}: BASE inheritance loops back to this file")
    data, lines = _read_yaml(path)
    bases = data.pop("BASE", None) or []
    for base in [bases] if isinstance(bases, str) else bases:
        if base:
            _merge_file(config, os.path.join(os.path.dirname(path), base), (*seen, path))
    _merge_dict(config, data, path, lines)
    model_cfg = (data.get("MODEL") or {}).get("MODEL_CONFIG_PATH")
    if model_cfg:  # relative to the file that names it (else to the cwd); stored absolute
        config.MODEL.MODEL_CONFIG_PATH = os.path.abspath(_beside(model_cfg, path))


def _beside(target: str, config_path: str) -> str:
    """`target` relative to `config_path`'s folder if it exists there, else as given."""
    if os.path.isabs(target):
        return target
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), target)
    return beside if os.path.exists(beside) else target


def _merge_opts(config: CN, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd count: {list(opts)}")
    for key, value in zip(opts[0::2], opts[1::2]):
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, CN) or part not in node or not isinstance(node[part], CN):
                raise KeyError(f"--opts: unknown config key {key}")
            node = node[part]
        last = parts[-1]
        if last not in node or isinstance(node[last], CN):
            raise KeyError(f"--opts: unknown config key {key}")
        node[last] = _coerce(value, node[last], key, "--opts")


def load_config(path: Optional[str], opts: Iterable[str] = ()) -> CN:
    """Defaults < MODEL.MODEL_CONFIG_PATH's file < `path` (with its BASE files) < `opts`.

    Returns a frozen CfgNode. The model file is named by `path` or `opts`, so they are read
    once to find it, then everything is merged again in order of precedence.
    """
    opts = list(opts or [])
    config = get_defaults()
    if path:
        _merge_file(config, path)
    _merge_opts(config, opts)
    model_cfg = config.MODEL.MODEL_CONFIG_PATH
    if model_cfg:
        config = get_defaults()
        _merge_file(config, model_cfg)
        if path:
            _merge_file(config, path)
        _merge_opts(config, opts)
    config.freeze()
    return config


def config_to_yaml(config: CN) -> str:
    return config.dump()
