"""ImageNet evaluation through main.py, with 2 processes (torchrun, gloo, CPU) where the
distribution matters, checked against an independent single-process computation:

- a 21K (raw) model on 1K val: the logits are restricted to the mapping_dict columns;
- 21K -> 1K fine-tuning: --pretrain keeps exactly the head rows mapping_dict lists; a
  checkpoint whose head does not fit (21K-processed) gets a fresh head, and the log says so;
- ImageNet-ReaL: hits and counts are summed over ranks (empty label lists skipped);
  a missing real.json stops the run at start-up;
- a val set that does not divide into world size x batch size is counted exactly once.

The paper's configs are used as they are, with the model swapped for resnet_tiny at
32 px (the restriction, the head selection and the reductions do not depend on the
architecture; test_paper_configs.py runs the real architectures).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_paper_configs import CLASSES_1K, CLASSES_21K, MAPPING_21K, config_path, map_21k, synset_tree

VAL_COUNTS = {"n01440764": 5, "n02102040": 4, "n04399382": 4}  # 13 images: 7 on rank 0, 6 on rank 1
NUM_VAL = sum(VAL_COUNTS.values())
CLASSES_21K_ALL = len(CLASSES_21K) + 1  # with the n04399382 placeholder
SMALL = ["MODEL.TYPE", "resnet", "MODEL.NAME", "resnet_tiny", "MODEL.DROP_PATH_RATE", "0.0", "DATA.IMG_SIZE", "32",
         "DATA.BATCH_SIZE_TRAIN", "2", "DATA.BATCH_SIZE_VAL", "4", "DATA.NUM_WORKERS", "1", "DATA.NUM_THREADS", "1",
         "ACCELERATION.FUSED_WINDOW_PROCESS", "False", "ACCELERATION.FUSED_LAYERNORM", "False", "PRINT_FREQ", "1",
         "TRAIN.EPOCHS", "1"]
LR_ZERO = ["TRAIN.BASE_LR", "0.0", "TRAIN.WARMUP_LR", "0.0", "TRAIN.MIN_LR", "0.0"]


def run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def run_main(*args, nproc=2, check=True):
    """main.py under torchrun with `nproc` CPU processes (gloo), or plain python for 1."""
    script = os.path.join(ROOT, "main.py")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = run((launcher if nproc > 1 else [sys.executable]) + [script, *args])
    if check:
        assert proc.returncode == 0, f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def read_log(out):
    with open(os.path.join(out, "log_rank0.txt")) as f:
        return f.read()


def eval_metrics(out):
    """What --eval writes to OUT/eval.json."""
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-eval")
    in1k, in21k = root / "ImageNet-1K", root / "ImageNet-21K_Fall11"
    synset_tree(in1k / "train", {c: 2 for c in CLASSES_1K}, seed=0)
    synset_tree(in1k / "val", VAL_COUNTS, seed=1)
    synset_tree(in21k, {c: 1 for c in CLASSES_21K}, seed=2, file_list=False)
    mapping = map_21k(in21k, in1k / "val", CLASSES_21K_ALL, len(CLASSES_1K))
    synset_tree(in21k, {})  # the file list, once the placeholder exists
    paths_1k = ["DATA.DATA_PATH_TRAIN", str(in1k / "train"), "DATA.DATA_PATH_VAL", str(in1k / "val")]
    return {
        "root": root,
        "mapping": mapping,
        "opts_21k": SMALL + ["DATA.DATA_PATH_TRAIN", str(in21k), "DATA.DATA_PATH_VAL", str(in1k / "val"),
                             "DATA.MAPPING_DICT_PATH", mapping, "MODEL.NUM_CLASSES", str(CLASSES_21K_ALL)],
        "opts_21kto1k": SMALL + paths_1k + ["DATA.MAPPING_DICT_PATH", mapping, "DATA.REAL_LABEL", "False",
                                            "MODEL.NUM_CLASSES", str(len(CLASSES_1K))],
        # A 1K model with more outputs than val classes, so that top-5 is not trivially 100%.
        "opts_1k": SMALL + paths_1k + ["MODEL.NUM_CLASSES", "8"],
    }


def load(name, opts):
    from utils.config import load_config

    return load_config(config_path(name), opts)


def initial_state(config):
    """The weights of the model main.py builds for `config`, from another seed than the
    run's own initialisation."""
    from main import seed_everything
    from models.build import build_model

    seed_everything(config.SEED, 0, 1)
    return {k: v.clone() for k, v in build_model(config).state_dict().items()}


def save_checkpoint(state, path):
    torch.save({"model": state}, path)
    return str(path)


def forward_val(config, state):
    """Single process, no main.py: the logits of every val image (in file-list order)
    through the same DALI val preprocessing, and the labels."""
    from data.build import build_val_loader, load_file_lists
    from models.build import build_model

    model = build_model(config)
    model.load_state_dict(state)
    model.eval()
    val = load_file_lists(config).val
    logits = torch.full((len(val), config.MODEL.NUM_CLASSES), float("nan"))
    with torch.no_grad():
        for batch in build_val_loader(config, val, 0, 1, None):
            logits[batch["indices"]] = model(batch["images"]).float()
    assert not logits.isnan().any()
    return logits, torch.from_numpy(val.labels.astype(np.int64))  # int32 in the file-list index


def centre_head(config, state):
    """Shift the head's biases so that each class's logit averages 0 over val: with a
    random backbone every image would otherwise get the same top-1."""
    logits, _ = forward_val(config, state)
    state["fc.bias"] -= logits.mean(0)
    return state


def accuracy(logits, labels):
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top5 == labels.view(-1, 1)
    return {"acc1": 100 * hits[:, 0].double().mean().item(), "acc5": 100 * hits.any(1).double().mean().item(),
            "val_loss": torch.nn.functional.cross_entropy(logits.double(), labels).item()}


def assert_same_metrics(reported, expected):
    assert reported["val_samples"] == NUM_VAL
    assert reported["acc1"] == pytest.approx(expected["acc1"], abs=1e-9)
    assert reported["acc5"] == pytest.approx(expected["acc5"], abs=1e-9)
    assert reported["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)


# --------------------------------------------------------------------------- 21K on 1K val


@pytest.fixture(scope="module")
def eval_21k(data):
    root = data["root"]
    config = load("swin-tiny-21k", data["opts_21k"])
    state = centre_head(config, initial_state(config))
    # The 21K classes that 1K val does not have win every unrestricted argmax.
    state["fc.bias"][[k for k in range(CLASSES_21K_ALL) if k not in MAPPING_21K]] += 100.0
    ckpt = save_checkpoint(state, root / "ckpt_21k.pth")
    out = str(root / "eval-21k")
    run_main("--config", config_path("swin-tiny-21k"), "--eval", "--pretrain", ckpt, "--output", out,
             "--opts", *data["opts_21k"])
    return config, ckpt, state, eval_metrics(out)


def test_21k_model_on_1k_val_is_scored_on_the_mapped_columns(eval_21k):
    config, _, state, reported = eval_21k
    logits, labels = forward_val(config, state)
    mapping = torch.as_tensor(MAPPING_21K)
    # Unrestricted, every prediction is a class 1K val does not have.
    assert not torch.isin(logits.argmax(1), mapping).any()
    restricted = logits[:, mapping]
    assert len(set(restricted.argmax(1).tolist())) > 1  # the test can tell images apart
    assert_same_metrics(reported, accuracy(restricted, labels))


# --------------------------------------------------------------------------- 21K -> 1K


def test_21k_to_1k_model_with_the_kept_rows_scores_as_the_restricted_21k_model(data, eval_21k):
    _, ckpt, _, reported_21k = eval_21k
    out = str(data["root"] / "eval-21kto1k")
    run_main("--config", config_path("swin-tiny-21kto1k"), "--eval", "--pretrain", ckpt, "--output", out,
             "--opts", *data["opts_21kto1k"])
    assert f"kept the 3 rows of the {CLASSES_21K_ALL}-class head" in read_log(out)
    assert_same_metrics(eval_metrics(out), reported_21k)


def test_21k_to_1k_pretrain_keeps_exactly_the_mapped_head_rows(data, eval_21k):
    # One epoch at learning rate 0: the checkpoint holds the weights as loaded.
    _, ckpt, state_21k, _ = eval_21k
    out = str(data["root"] / "finetune-lr0")
    run_main("--config", config_path("swin-tiny-21kto1k"), "--pretrain", ckpt, "--output", out,
             "--opts", *data["opts_21kto1k"], *LR_ZERO, nproc=1)
    loaded = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_0.pth"), weights_only=True)["model"]
    rows = torch.as_tensor(MAPPING_21K)
    torch.testing.assert_close(loaded["fc.weight"], state_21k["fc.weight"][rows], rtol=0, atol=0)
    torch.testing.assert_close(loaded["fc.bias"], state_21k["fc.bias"][rows], rtol=0, atol=0)
    torch.testing.assert_close(loaded["conv1.weight"], state_21k["conv1.weight"], rtol=0, atol=0)
    assert "re-initialised" not in read_log(out)


@pytest.mark.parametrize("mapping", ["none", "config's"])
def test_processed_21k_checkpoint_gets_a_fresh_head(data, mapping):
    from main import seed_everything
    from models.build import build_model

    root = data["root"]
    processed = load("swin-tiny-21kprocess", SMALL + ["MODEL.NUM_CLASSES", "4"])
    state = initial_state(processed)
    ckpt = save_checkpoint(state, root / f"ckpt_processed_{mapping[:4]}.pth")
    opts = data["opts_21kto1k"] + LR_ZERO + (["DATA.MAPPING_DICT_PATH", ""] if mapping == "none" else [])
    out = str(root / f"finetune-processed-{mapping[:4]}")
    run_main("--config", config_path("swin-tiny-21kto1k"), "--pretrain", ckpt, "--output", out, "--opts", *opts,
             nproc=1)
    log = read_log(out)
    said = [line for line in log.splitlines() if "head is re-initialised" in line]
    assert len(said) == 1 and "4" in said[0] and "3" in said[0] and "kept the" not in log
    # The head is the run's own initialisation; the rest comes from the checkpoint.
    config = load("swin-tiny-21kto1k", opts)
    seed_everything(config.SEED, 0, 0)
    fresh = build_model(config).state_dict()
    loaded = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_0.pth"), weights_only=True)["model"]
    torch.testing.assert_close(loaded["fc.weight"], fresh["fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"], rtol=0, atol=0)


# --------------------------------------------------------------------------- ImageNet-ReaL


def real_hits(top5, real, indices):
    """(top-1 hits, top-5 hits, counted) by hand over these val indices."""
    h1 = h5 = n = 0
    for i in indices:
        if real[i]:
            n += 1
            h1 += top5[i][0] in real[i]
            h5 += any(p in real[i] for p in top5[i])
    return h1, h5, n


@pytest.fixture(scope="module")
def eval_1k(data):
    """--eval on 2 ranks, batch 4, of a 1K model with 8 outputs over the 13 val images,
    with a real.json written for its predictions."""
    root = data["root"]
    config = load("resnet50-1k-90", data["opts_1k"])
    state = centre_head(config, initial_state(config))
    ckpt = save_checkpoint(state, root / "ckpt_1k.pth")
    logits, labels = forward_val(config, state)
    top5 = logits.topk(5, dim=1).indices.tolist()

    def missing(i):  # a class outside image i's top 5
        return next(c for c in range(8) if c not in top5[i])

    # Rank 0 reads the even indices (7 images), rank 1 the odd ones (6): most of rank 1's
    # lists are empty, so averaging per rank would give another number than summing.
    real = [[] for _ in range(NUM_VAL)]
    real[0] = [top5[0][0], missing(0)]  # several labels, top-1 among them
    real[2] = [top5[2][1]]  # top-5 hit only
    real[4] = [missing(4)]  # miss
    real[6] = [top5[6][0]]
    real[10] = [top5[10][4], missing(10)]  # top-5 hit only
    real[12] = [top5[12][0]]
    real[9] = [top5[9][0]]
    real[11] = [missing(11), top5[11][0]]
    path = root / "real.json"
    path.write_text(json.dumps(real))
    out = str(root / "eval-1k")
    run_main("--config", config_path("resnet50-1k-90"), "--eval", "--pretrain", ckpt, "--output", out,
             "--opts", *data["opts_1k"], "DATA.REAL_LABEL", "True", "DATA.REAL_JSON_PATH", str(path))
    return logits, labels, real, eval_metrics(out)


def test_real_labels_are_summed_over_ranks(eval_1k):
    logits, _, real, reported = eval_1k
    top5 = logits.topk(5, dim=1).indices.tolist()
    assert len({row[0] for row in top5}) > 1
    h1, h5, n = real_hits(top5, real, range(NUM_VAL))
    assert (h1, h5, n) == (5, 7, 8)
    ranks = [real_hits(top5, real, range(r, NUM_VAL, 2)) for r in range(2)]
    assert np.mean([r[0] / r[2] for r in ranks]) != h1 / n  # the test tells the two reductions apart
    assert reported["real_samples"] == n
    assert reported["real_acc1"] == pytest.approx(100 * h1 / n, abs=1e-9)
    assert reported["real_acc5"] == pytest.approx(100 * h5 / n, abs=1e-9)


def test_val_set_not_divisible_by_ranks_times_batch_is_counted_once(eval_1k):
    # 13 images, 2 ranks, batch 4: rank 0 reads 4 + 3, rank 1 reads 4 + 2; nothing is
    # padded or dropped, and the metrics equal a single-process pass.
    logits, labels, _, reported = eval_1k
    assert_same_metrics(reported, accuracy(logits, labels))


def test_missing_real_json_stops_the_run_before_training(data):
    root = data["root"]
    out = str(root / "no-real")
    missing = str(root / "nowhere" / "real.json")
    proc = run_main("--config", config_path("resnet50-1k-90"), "--output", out, "--opts", *data["opts_1k"],
                    "DATA.REAL_LABEL", "True", "DATA.REAL_JSON_PATH", missing, nproc=1, check=False)
    assert proc.returncode != 0
    assert "DATA.REAL_JSON_PATH" in proc.stderr and missing in proc.stderr
    assert "train epoch" not in read_log(out)
    assert not os.path.exists(os.path.join(out, "ckpts")) and not os.path.exists(os.path.join(out, "metrics.jsonl"))


# --------------------------------------------------------------------------- after training


@pytest.fixture(scope="module")
def trained(data):
    """One epoch of training on 2 ranks (batch 2), validated on the 13 images (batch 4)."""
    out = str(data["root"] / "train-13")
    run_main("--config", config_path("resnet50-1k-90"), "--output", out, "--opts", *data["opts_1k"],
             "DATA.REAL_LABEL", "False", "TRAIN.BASE_LR", "0.05")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return out, records


def test_epoch_validation_counts_every_image_once(trained):
    _, records = trained
    assert [r["epoch"] for r in records] == [0] and records[0]["val_samples"] == NUM_VAL


def test_epoch_validation_scores_the_saved_weights(data, trained):
    out, records = trained
    state = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_0.pth"), weights_only=True)["model"]
    logits, labels = forward_val(load("resnet50-1k-90", data["opts_1k"]), state)
    assert_same_metrics(records[0], accuracy(logits, labels))
