"""The paper's configs (configs/*.yaml): each one loads through the schema with the
recipe docs/semantics.md §6 describes, builds the architecture its MODEL.NAME names,
and runs main.py for two training steps and one validation step on a tiny image tree
shaped like its dataset (full architectures, tiny images, a few classes).

The 21K configs get a tree shaped like ImageNet-21K (synset directories, the empty
n04399382 placeholder), ImageNet-1K-like val and a mapping_dict.txt made by
`python -m data.prepare map-21k`; swin-tiny-21kto1k fine-tunes from the checkpoint the
swin-tiny-21k run writes, as in the paper's two-step recipe.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT

CONFIGS = os.path.join(ROOT, "configs")
PAPER_CONFIGS = [
    "swin-tiny-1k", "swin-base-1k", "swin-tiny-21k", "swin-tiny-21kprocess", "swin-tiny-21kto1k",
    "resnet50-1k-90", "convnext-tiny-1k", "swinv2-tiny-1k",
]

# Tiny trees. 1K: three classes, n04399382 among them (a 1K class that raw 21K lacks).
CLASSES_1K = ["n01440764", "n02102040", "n04399382"]
# 21K (raw): four classes with images plus the placeholder that map-21k creates.
CLASSES_21K = ["n00004475", "n01440764", "n02102040", "n03000134"]
MAPPING_21K = [1, 2, 4]  # CLASSES_1K among sorted(CLASSES_21K + ["n04399382"])
CLASSES_21K_PROCESSED = ["n00005787", "n00006484", "n01440764", "n02102040"]
_PALETTE = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 30], [200, 40, 220], [30, 210, 210]])


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, f"{name}.yaml")


def synset_tree(root, counts, size=(40, 32), seed=0, file_list=True):
    """ROOT/<synset>/<synset>_<i>.JPEG (noisy solid colours, one colour per synset, the
    colour following the synset's rank in `counts`) and, unless file_list is False,
    ROOT/file_list.txt written by `python -m data.prepare file-list`."""
    from PIL import Image

    from data.prepare import main as prepare

    rng = np.random.default_rng(seed)
    for k, (synset, count) in enumerate(sorted(counts.items())):
        os.makedirs(os.path.join(root, synset), exist_ok=True)
        for i in range(count):
            noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
            pixels = np.clip(_PALETTE[k % len(_PALETTE)] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, synset, f"{synset}_{i:04d}.JPEG"), format="JPEG")
    if file_list:
        assert prepare(["file-list", str(root), "--no-progress"]) == 0
    return os.path.join(root, "file_list.txt")


def map_21k(train_21k, val_1k, expect_classes, expect_val_classes):
    """`python -m data.prepare map-21k` as a user runs it; returns mapping_dict.txt's path."""
    proc = subprocess.run(
        [sys.executable, "-m", "data.prepare", "map-21k", "--train-21k", str(train_21k), "--val-1k", str(val_1k),
         "--expect-classes", str(expect_classes), "--expect-val-classes", str(expect_val_classes)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(train_21k, "mapping_dict.txt")


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


# --------------------------------------------------------------------------- loading


# What docs/semantics.md §6 (and the paper's released configs) say, per config:
# (dataset, type, epochs, optimizer, lr, weight decay, warm-up, global batch on 8 GPUs,
#  schedule, label smoothing, drop-path, grad clip).
RECIPES = {
    "swin-tiny-1k": ("ImageNet-1K", "swin", 300, "adamw", 1e-3, 0.05, 20, 1024, "cosine", 0.1, 0.2, 5.0),
    "swin-base-1k": ("ImageNet-1K", "swin", 300, "adamw", 1e-3, 0.05, 20, 1024, "cosine", 0.1, 0.2, 5.0),
    "swinv2-tiny-1k": ("ImageNet-1K", "swinv2", 300, "adamw", 1e-3, 0.05, 20, 1024, "cosine", 0.1, 0.2, 5.0),
    "swin-tiny-21k": ("ImageNet-21K_Fall11", "swin", 90, "adamw", 1e-3, 0.05, 5, 1024, "cosine", 0.1, 0.1, 5.0),
    "swin-tiny-21kprocess": ("ImageNet-21K-Processed_Fall11", "swin", 90, "adamw", 1e-3, 0.05, 5, 1024, "cosine",
                             0.1, 0.1, 5.0),
    "swin-tiny-21kto1k": ("ImageNet-1K", "swin", 30, "adamw", 4e-5, 1e-8, 5, 1024, "cosine", 0.1, 0.1, 5.0),
    "convnext-tiny-1k": ("ImageNet-1K", "convnext", 300, "adamw", 8e-3, 0.05, 20, 2048, "cosine", 0.1, 0.1, 0.0),
    "resnet50-1k-90": ("ImageNet-1K", "resnet", 90, "sgd", 0.8, 1e-4, 0, 2048, "step", 0.0, 0.0, 0.0),
}


def test_every_paper_config_is_listed():
    found = sorted(n[:-5] for n in os.listdir(CONFIGS) if n.endswith(".yaml") and not n.startswith("_"))
    assert sorted(PAPER_CONFIGS + ["demo-mnist"]) == found
    assert sorted(RECIPES) == sorted(PAPER_CONFIGS)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_config_loads_with_the_paper_recipe(name, tmp_path, monkeypatch):
    from utils.config import load_config

    monkeypatch.chdir(tmp_path)  # model_configs/ must be found from any working directory
    c = load_config(config_path(name))
    dataset, mtype, epochs, opt, lr, wd, warmup, batch, sched, smoothing, drop_path, clip = RECIPES[name]
    assert c.DATA.DATASET == dataset and c.MODEL.TYPE == mtype
    assert c.TRAIN.EPOCHS == epochs and c.TRAIN.OPTIMIZER.NAME == opt
    assert c.TRAIN.BASE_LR == pytest.approx(lr) and c.TRAIN.WEIGHT_DECAY == pytest.approx(wd)
    assert c.TRAIN.WARMUP_EPOCHS == warmup and 8 * c.DATA.BATCH_SIZE_TRAIN * c.TRAIN.ACCUMULATION_STEPS == batch
    assert c.TRAIN.LR_SCHEDULER.NAME == sched and c.MODEL.LABEL_SMOOTHING == pytest.approx(smoothing)
    assert c.MODEL.DROP_PATH_RATE == pytest.approx(drop_path) and c.TRAIN.CLIP_GRAD == pytest.approx(clip)
    # Every paper config: AutoAugment on, no Mixup/CutMix, the counts from the dataset table.
    assert c.AUG.AUTO_AUGMENT and c.AUG.MIXUP == 0 and c.AUG.CUTMIX == 0 and c.AUG.CUTMIX_MINMAX is None
    assert c.MODEL.NUM_CLASSES == 0 and c.DATA.DATA_PATH_TRAIN and c.DATA.DATA_PATH_VAL
    if name == "resnet50-1k-90":
        assert c.TRAIN.OPTIMIZER.MOMENTUM == 0.9 and c.TRAIN.LR_SCHEDULER.DECAY_EPOCHS == 30
        assert c.TRAIN.LR_SCHEDULER.DECAY_RATE == pytest.approx(0.1)
    else:
        assert c.AMP_ENABLE
    # 21K (raw) validates on 1K val through the mapping; the processed set has its own val.
    assert bool(c.DATA.MAPPING_DICT_PATH) == (name in ("swin-tiny-21k", "swin-tiny-21kto1k"))
    # ImageNet-ReaL is scored by the 1K configs (the 21K ones turn it off, as the paper does).
    assert c.DATA.REAL_LABEL == (dataset == "ImageNet-1K")
    assert not c.DATA.REAL_LABEL or c.DATA.REAL_JSON_PATH.endswith("real.json")


# The architecture each config describes has exactly the parameters of the timm
# architecture its MODEL.NAME names (1,000 classes), built on the meta device.
@pytest.mark.parametrize("name", ["swin-tiny-1k", "swin-base-1k", "swinv2-tiny-1k", "convnext-tiny-1k",
                                  "resnet50-1k-90"])
def test_architecture_matches_its_timm_name(name):
    import timm

    from models.build import build_model
    from utils.config import load_config

    c = load_config(config_path(name), ["MODEL.NUM_CLASSES", "1000", "ACCELERATION.FUSED_WINDOW_PROCESS", "False",
                                        "ACCELERATION.FUSED_LAYERNORM", "False"])
    with torch.device("meta"):
        ours = sum(p.numel() for p in build_model(c).parameters())
        reference = sum(p.numel() for p in timm.create_model(c.MODEL.NAME, pretrained=False).parameters())
    assert ours == reference


def test_user_config_inheriting_a_paper_config_from_another_folder(tmp_path, monkeypatch):
    # MODEL_CONFIG_PATH is relative to the paper config that names it, not to the user's file.
    from utils.config import load_config

    mine = tmp_path / "my-swin-base.yaml"
    mine.write_text(f"BASE: ['{config_path('swin-base-1k')}']\nDATA:\n  DATA_PATH_TRAIN: /data/in1k/train\n")
    monkeypatch.chdir(tmp_path)
    c = load_config(str(mine))
    assert c.MODEL.SWIN.EMBED_DIM == 128 and list(c.MODEL.SWIN.DEPTHS) == [2, 2, 18, 2]


# --------------------------------------------------------------------------- smoke runs

SMOKE_OPTS = ["TRAIN.EPOCHS", "1", "DATA.BATCH_SIZE_TRAIN", "2", "DATA.NUM_WORKERS", "1", "DATA.NUM_THREADS", "1",
              "PRINT_FREQ", "1"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The tiny datasets, laid out as docs/data_preparation.md describes."""
    root = tmp_path_factory.mktemp("paper-data")
    t = {"root": root}
    # ImageNet-1K: train 3 x 2 images, val 3 x 2; a coreset of 4 lines = 2 batches of 2.
    in1k = root / "ImageNet-1K"
    synset_tree(in1k / "train", {c: 2 for c in CLASSES_1K}, seed=0)
    synset_tree(in1k / "val", {c: 2 for c in CLASSES_1K}, seed=1)
    t["coreset_1k"] = write_lines(root / "coreset_4.txt", read_lines(in1k / "train" / "file_list.txt")[1:5])
    # ImageNet-ReaL: one list per val image, some empty, some with several labels.
    with open(in1k / "real.json", "w") as f:
        json.dump([[0], [], [1, 2], [1], [], [2, 0]], f)
    # ImageNet-21K (raw): 4 classes x 1 image (= 2 batches) + the placeholder.
    in21k = root / "ImageNet-21K_Fall11"
    synset_tree(in21k, {c: 1 for c in CLASSES_21K}, seed=2, file_list=False)
    t["mapping"] = map_21k(in21k, in1k / "val", len(CLASSES_21K) + 1, len(CLASSES_1K))
    synset_tree(in21k, {}, file_list=True)  # the file list, once the placeholder exists
    # ImageNet-21K-Processed: its own train (4 x 1) and val (4 x 1) splits.
    processed = root / "ImageNet-21K-Processed_Fall11"
    synset_tree(processed / "imagenet21k_train", {c: 1 for c in CLASSES_21K_PROCESSED}, seed=3)
    synset_tree(processed / "imagenet21k_val", {c: 1 for c in CLASSES_21K_PROCESSED}, seed=4)
    return t


def test_tiny_21k_tree_is_shaped_like_21k(trees):
    in21k = trees["root"] / "ImageNet-21K_Fall11"
    assert sorted(os.listdir(in21k / "n04399382")) == []
    lines = read_lines(in21k / "file_list.txt")
    assert len(lines) == 4 and all(line.split()[1] != "4" for line in lines)  # the placeholder has no lines
    np.testing.assert_array_equal(np.loadtxt(trees["mapping"]).astype(int), MAPPING_21K)
    proc = subprocess.run([sys.executable, "-m", "data.prepare", "check", str(in21k / "file_list.txt"),
                           "--num-classes", "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def data_opts(trees, name):
    """(--opts for the data, --coreset or None, val images, classes)."""
    root = trees["root"]
    in1k = root / "ImageNet-1K"
    if name == "swin-tiny-21k":
        return (["DATA.DATA_PATH_TRAIN", str(root / "ImageNet-21K_Fall11"), "DATA.DATA_PATH_VAL", str(in1k / "val"),
                 "DATA.MAPPING_DICT_PATH", trees["mapping"], "DATA.BATCH_SIZE_VAL", "6",
                 "MODEL.NUM_CLASSES", str(len(CLASSES_21K) + 1)], None, 6, len(CLASSES_21K) + 1)
    if name == "swin-tiny-21kprocess":
        processed = root / "ImageNet-21K-Processed_Fall11"
        return (["DATA.DATA_PATH_TRAIN", str(processed / "imagenet21k_train"),
                 "DATA.DATA_PATH_VAL", str(processed / "imagenet21k_val"), "DATA.BATCH_SIZE_VAL", "4",
                 "MODEL.NUM_CLASSES", "4"], None, 4, 4)
    opts = ["DATA.DATA_PATH_TRAIN", str(in1k / "train"), "DATA.DATA_PATH_VAL", str(in1k / "val"),
            "DATA.REAL_JSON_PATH", str(in1k / "real.json"), "DATA.BATCH_SIZE_VAL", "6", "MODEL.NUM_CLASSES", "3"]
    if name == "swin-tiny-21kto1k":
        opts += ["DATA.MAPPING_DICT_PATH", trees["mapping"]]
    return opts, trees["coreset_1k"], 6, 3


def smoke_run(trees, name, tmp_path, pretrain=None):
    """main.py in this process (saves the imports of a subprocess); the root logger's
    handlers, which main replaces, are restored afterwards."""
    from main import main, parse_args

    opts, coreset, _, _ = data_opts(trees, name)
    out = str(tmp_path / name)
    argv = ["--config", config_path(name), "--output", out]
    argv += ["--coreset", coreset] if coreset else []
    argv += ["--pretrain", pretrain] if pretrain else []
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    try:
        record = main(parse_args(argv + ["--opts", *opts, *SMOKE_OPTS]))
    finally:
        for handler in list(root_logger.handlers):
            root_logger.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root_logger.addHandler(handler)
        root_logger.setLevel(level)
    return out, record


def check_smoke(trees, name, out, record):
    from utils.config import load_config

    _, coreset, val_images, num_classes = data_opts(trees, name)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 1 and records[0]["epoch"] == 0 and records[0] == pytest.approx(record)
    r = records[0]
    assert r["val_samples"] == val_images and 0 <= r["acc1"] <= r["acc5"] <= 100
    assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
    if name in ("swin-tiny-21k", "swin-tiny-21kprocess"):
        assert "real_acc1" not in r
    else:  # the 1K configs score ImageNet-ReaL: 4 of the 6 lists are not empty
        assert r["real_samples"] == 4 and 0 <= r["real_acc1"] <= r["real_acc5"] <= 100
    with open(os.path.join(out, "log_rank0.txt")) as f:
        log = f.read()
    assert "train epoch 0 [2/2]" in log and "[3/" not in log  # exactly two steps
    # The resolved config beside the outputs keeps the paper's recipe, with our overrides.
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    paper = load_config(config_path(name))
    assert saved["MODEL"]["NUM_CLASSES"] == num_classes and saved["TRAIN"]["EPOCHS"] == 1
    for key in ("BASE_LR", "WEIGHT_DECAY", "WARMUP_EPOCHS", "CLIP_GRAD"):
        assert saved["TRAIN"][key] == paper.TRAIN[key]
    assert saved["MODEL"]["TYPE"] == paper.MODEL.TYPE and saved["MODEL"]["SWIN"] == dict(paper.MODEL.SWIN)
    ckpt = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_0.pth"), map_location="cpu", weights_only=True)
    heads = [v for k, v in ckpt["model"].items() if k.endswith(("head.weight", "head.fc.weight", "fc.weight"))]
    assert [h.shape[0] for h in heads] == [num_classes]
    return log


def remove_checkpoints(out):
    """Swin-B's checkpoint with AdamW state is ~1 GB: do not leave it in the temp folder."""
    folder = os.path.join(out, "ckpts")
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


@pytest.mark.parametrize("name", ["swin-tiny-1k", "swin-base-1k", "swinv2-tiny-1k", "convnext-tiny-1k",
                                  "resnet50-1k-90", "swin-tiny-21kprocess"])
def test_two_steps_and_validation(trees, name, tmp_path):
    out, record = smoke_run(trees, name, tmp_path)
    check_smoke(trees, name, out, record)
    remove_checkpoints(out)


@pytest.fixture(scope="module")
def run_21k(trees, tmp_path_factory):
    out, record = smoke_run(trees, "swin-tiny-21k", tmp_path_factory.mktemp("run-21k"))
    return out, record


def test_21k_two_steps_and_validation_on_1k_val(trees, run_21k):
    out, record = run_21k
    check_smoke(trees, "swin-tiny-21k", out, record)  # 5-class model, scored on the 6 images of 1K val


def test_21kto1k_fine_tune_from_the_21k_checkpoint(trees, run_21k, tmp_path):
    ckpt_21k = os.path.join(run_21k[0], "ckpts", "ckpt_epoch_0.pth")
    out, record = smoke_run(trees, "swin-tiny-21kto1k", tmp_path, pretrain=ckpt_21k)
    log = check_smoke(trees, "swin-tiny-21kto1k", out, record)
    assert f"kept the 3 rows of the {len(CLASSES_21K) + 1}-class head" in log
    assert "re-initialised" not in log


def test_saved_config_of_a_run_loads_again(run_21k, tmp_path, monkeypatch):
    # OUTPUT/config.yaml names the model file by its absolute path: it loads from anywhere.
    from utils.config import load_config

    monkeypatch.chdir(tmp_path)
    again = load_config(os.path.join(run_21k[0], "config.yaml"))
    assert again.MODEL.SWIN.EMBED_DIM == 96 and again.DATA.DATASET == "ImageNet-21K_Fall11"


def test_data_preparation_doc_commands_parse():
    """Every `python -m data.prepare ...` line of docs/data_preparation.md is a valid command."""
    import shlex

    from data.prepare import _parser

    with open(os.path.join(ROOT, "docs", "data_preparation.md")) as f:
        commands = [line.strip() for line in f if line.strip().startswith("python -m data.prepare ")]
    assert {shlex.split(c)[3] for c in commands} == {"file-list", "map-21k", "check"}
    for command in commands:
        _parser().parse_args(shlex.split(command)[3:])
