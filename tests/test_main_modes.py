"""main.py in one process: THROUGHPUT_MODE, EVAL_MODE from a checkpoint, gradient
accumulation, and the class-count rules."""
import json
import os

import pytest
import torch

from conftest import ROOT
from main import main, parse_args

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")


def opts_for(image_tree, *extra):
    train, val = image_tree
    return ["--opts", "DATA.DATA_PATH_TRAIN", str(train), "DATA.DATA_PATH_VAL", str(val), "MODEL.NUM_CLASSES", "3",
            "DATA.IMG_SIZE", "16", "DATA.BATCH_SIZE_TRAIN", "4", "DATA.BATCH_SIZE_VAL", "4", "TRAIN.EPOCHS", "2",
            "DATA.NUM_WORKERS", "1", *extra]


def test_throughput_mode_reports_both_rates(image_tree, tmp_path):
    result = main(parse_args(["--config", CONFIG, "--output", str(tmp_path / "t"), "--throughput",
                              *opts_for(image_tree)]))
    assert result["batch_size"] == 4
    assert result["forward_img_per_s"] > 0 and result["train_step_img_per_s"] > 0


def test_eval_mode_reproduces_the_last_validation(image_tree, tmp_path):
    out = str(tmp_path / "run")
    last = main(parse_args(["--config", CONFIG, "--output", out, *opts_for(image_tree)]))
    ckpt = os.path.join(out, "ckpts", "ckpt_epoch_1.pth")
    metrics = main(parse_args(["--config", CONFIG, "--output", str(tmp_path / "eval"), "--eval", "--resume", ckpt,
                               *opts_for(image_tree)]))
    assert metrics["val_samples"] == 15
    assert metrics["acc1"] == pytest.approx(last["acc1"])
    assert metrics["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)


def test_gradient_accumulation_counts_updates(image_tree, tmp_path):
    out = str(tmp_path / "accum")
    # 30 images, batch 4: 7 batches per epoch; accumulating 2 -> 4 updates per epoch.
    main(parse_args(["--config", CONFIG, "--output", out, *opts_for(image_tree, "TRAIN.ACCUMULATION_STEPS", "2")]))
    ckpt = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_1.pth"), weights_only=True)
    assert ckpt["lr_scheduler"]["num_updates"] == 8
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1]


def test_a_finished_run_is_not_repeated(image_tree, tmp_path):
    out = str(tmp_path / "done")
    args = ["--config", CONFIG, "--output", out, *opts_for(image_tree, "TRAIN.EPOCHS", "1")]
    main(parse_args(args))
    before = os.path.getmtime(os.path.join(out, "ckpts", "ckpt_epoch_0.pth"))
    assert main(parse_args(args)) == {}
    assert os.path.getmtime(os.path.join(out, "ckpts", "ckpt_epoch_0.pth")) == before


def test_custom_dataset_needs_a_class_count(image_tree, tmp_path):
    with pytest.raises(ValueError, match="MODEL.NUM_CLASSES"):
        main(parse_args(["--config", CONFIG, "--output", str(tmp_path / "x"),
                         *opts_for(image_tree, "MODEL.NUM_CLASSES", "0")]))


def test_label_outside_the_class_count_names_the_line(image_tree, tmp_path):
    from main import InputError

    with pytest.raises(InputError, match=r"file_list.txt:\d+: label 2 is outside \[0, 2\)"):
        main(parse_args(["--config", CONFIG, "--output", str(tmp_path / "x"),
                         *opts_for(image_tree, "MODEL.NUM_CLASSES", "2")]))
    assert not os.path.exists(tmp_path / "x")
