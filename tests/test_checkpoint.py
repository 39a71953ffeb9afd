"""utils/checkpoint.py (plain-data checkpoints, atomic writes, resume by epoch number) and
models/pretrained.py (adapting --pretrain weights: 21K head rows, Swin bias tables)."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.pretrained import adapt_pretrained_state
from utils.checkpoint import (checkpoint_dir, checkpoint_path, latest_checkpoint, load_checkpoint, load_pretrained,
                              model_state, prune_checkpoints, save_checkpoint)
from utils.config import config_to_yaml, load_config
from dynunc.io import atomic_open


class Net(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def trained_state(seed=0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loss = model(torch.randn(6, 4)).logsumexp(dim=1).mean()
    loss.backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_weights_only(tmp_path):
    model, optimizer = trained_state()
    config = load_config(None, ["TRAIN.EPOCHS", "5", "DATA.DATASET", "custom"])
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
             "config": config_to_yaml(config), "lr_scheduler": {"num_updates": 42}}
    path = checkpoint_path(str(tmp_path), 3)
    save_checkpoint(path, state)
    assert path == os.path.join(str(tmp_path), "ckpts", "ckpt_epoch_3.pth")
    # the strictest loader reads it
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded["epoch"] == 3
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k
    assert loaded["config"] == config_to_yaml(config)
    assert loaded["lr_scheduler"] == {"num_updates": 42}
    # the optimizer resumes with its moments
    model2 = Net()
    model2.load_state_dict(loaded["model"])
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=0.01)
    optimizer2.load_state_dict(loaded["optimizer"])
    for p, q in zip(optimizer.state_dict()["state"].values(), optimizer2.state_dict()["state"].values()):
        assert torch.equal(p["exp_avg"], q["exp_avg"])
        assert torch.equal(p["exp_avg_sq"], q["exp_avg_sq"])
    assert [f for f in os.listdir(checkpoint_dir(str(tmp_path)))] == ["ckpt_epoch_3.pth"]


def test_pickled_object_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "bad.pth")
    torch.save({"config": load_config(None)}, path)  # the paper's checkpoints pickled the config object
    with pytest.raises(RuntimeError, match="bad.pth"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))


def save_epoch(output, epoch):
    save_checkpoint(checkpoint_path(output, epoch), {"epoch": epoch, "w": torch.full((3,), float(epoch))})


def test_latest_picks_highest_epoch_number_not_mtime(tmp_path):
    out = str(tmp_path)
    for epoch in (1, 2, 10, 9):
        save_epoch(out, epoch)
    # epoch 2 is touched last: newest by time, and '2' > '10' as a string
    later = os.path.getmtime(checkpoint_path(out, 10)) + 100
    os.utime(checkpoint_path(out, 2), (later, later))
    path, state = latest_checkpoint(out)
    assert path == checkpoint_path(out, 10)
    assert state["epoch"] == 10


def test_latest_skips_truncated_newest(tmp_path):
    out = str(tmp_path)
    save_epoch(out, 4)
    save_epoch(out, 5)
    with open(checkpoint_path(out, 5), "rb") as f:
        content = f.read()
    with open(checkpoint_path(out, 5), "wb") as f:
        f.write(content[: len(content) // 2])
    path, state = latest_checkpoint(out)
    assert path == checkpoint_path(out, 4)
    assert state["epoch"] == 4


def test_latest_ignores_other_files(tmp_path):
    out = str(tmp_path)
    save_epoch(out, 1)
    folder = checkpoint_dir(out)
    for name in ("ckpt_epoch_7.pth.tmp", ".ckpt_epoch_8.pth.abc.tmp", "ckpt_epoch_x.pth", "best.pth"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"junk")
    path, state = latest_checkpoint(out)
    assert path == checkpoint_path(out, 1)


def test_latest_none(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None  # no ckpts folder
    os.makedirs(checkpoint_dir(str(tmp_path)))
    assert latest_checkpoint(str(tmp_path)) is None  # empty folder
    with open(checkpoint_path(str(tmp_path), 0), "wb") as f:
        f.write(b"not a checkpoint")
    assert latest_checkpoint(str(tmp_path)) is None  # only an unreadable one


def truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def listing(out):
    return sorted(os.listdir(checkpoint_dir(out)))


def test_prune_keeps_the_newest_by_epoch_number_and_other_files(tmp_path):
    out = str(tmp_path)
    for epoch in (0, 1, 2, 9, 10):
        save_epoch(out, epoch)
    with open(os.path.join(checkpoint_dir(out), "best.pth"), "wb") as f:
        f.write(b"not ours")
    later = os.path.getmtime(checkpoint_path(out, 10)) + 100
    os.utime(checkpoint_path(out, 1), (later, later))  # newest by time: irrelevant
    assert prune_checkpoints(out, 2) == [checkpoint_path(out, e) for e in (0, 1, 2)]
    assert listing(out) == ["best.pth", "ckpt_epoch_10.pth", "ckpt_epoch_9.pth"]
    assert prune_checkpoints(out, 2) == []  # nothing more to do
    assert prune_checkpoints(out, 5) == [] and latest_checkpoint(out)[1]["epoch"] == 10


def test_prune_counts_only_checkpoints_that_load(tmp_path):
    """The newest is truncated: it does not count, an older one is kept in its place, and
    the unreadable file is left for a person to look at (resume skips it)."""
    out = str(tmp_path)
    for epoch in range(5):
        save_epoch(out, epoch)
    truncate(checkpoint_path(out, 4))
    truncate(checkpoint_path(out, 1))
    assert prune_checkpoints(out, 2) == [checkpoint_path(out, e) for e in (0, 1)]
    assert listing(out) == ["ckpt_epoch_2.pth", "ckpt_epoch_3.pth", "ckpt_epoch_4.pth"]
    assert latest_checkpoint(out)[1]["epoch"] == 3
    # None loads: nothing is deleted.
    out2 = str(tmp_path / "none")
    for epoch in range(3):
        save_epoch(out2, epoch)
        truncate(checkpoint_path(out2, epoch))
    assert prune_checkpoints(out2, 1) == [] and len(listing(out2)) == 3


def test_prune_needs_a_positive_count(tmp_path):
    with pytest.raises(ValueError, match="KEEP_CHECKPOINTS"):
        prune_checkpoints(str(tmp_path), 0)


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = checkpoint_path(str(tmp_path), 1)
    save_checkpoint(path, {"epoch": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"epoch": 2, "x": Unsaveable()})
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(checkpoint_dir(str(tmp_path))) == ["ckpt_epoch_1.pth"]


def test_atomic_open_writer_raises(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_open(path, "wb") as f:
            f.write(b"new but incomplete")
            raise ValueError("crash")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_model_state_variants():
    w = {"a": torch.zeros(1)}
    assert model_state({"model": w, "epoch": 1}) is w
    assert model_state({"state_dict": w}) is w
    assert model_state({"model_ema": w}) is w
    assert model_state(w) is w


# -----------------------------------------------------------------------------
# --pretrain
# -----------------------------------------------------------------------------
def test_load_pretrained_drops_mismatched_head_and_strips_module(tmp_path):
    torch.manual_seed(1)
    source = Net(num_classes=5)
    source.body[1].running_mean.fill_(0.25)
    state = {"module." + k: v for k, v in source.state_dict().items()}
    path = str(tmp_path / "pre.pth")
    torch.save({"model": state, "epoch": 7}, path)

    torch.manual_seed(2)
    model = Net(num_classes=3)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_pretrained(model, path)
    for k, v in source.body.state_dict().items():
        assert torch.equal(model.body.state_dict()[k], v), k
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k  # left as initialised


def test_load_pretrained_bare_state_dict_same_shape(tmp_path):
    source = Net()
    path = str(tmp_path / "bare.pth")
    torch.save(source.state_dict(), path)
    model = Net()
    load_pretrained(model, path)
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_load_pretrained_calls_adapt_after_stripping(tmp_path):
    source = Net()
    path = str(tmp_path / "pre.pth")
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    seen = []

    def adapt(state, model):
        seen.extend(state)
        state = dict(state)
        state["head.bias"] = torch.full_like(state["head.bias"], 7.0)
        return state

    model = Net()
    load_pretrained(model, path, adapt=adapt)
    assert seen and not any(k.startswith("module.") for k in seen)
    assert torch.equal(model.head.bias, torch.full((3,), 7.0))


def head_config(tmp_path, num_classes, mapping=None):
    opts = ["MODEL.NUM_CLASSES", str(num_classes), "DATA.DATASET", "custom"]
    if mapping is not None:
        path = str(tmp_path / "mapping_dict.txt")
        np.savetxt(path, np.asarray(mapping))
        opts += ["DATA.MAPPING_DICT_PATH", path]
    return load_config(None, opts)


def big_head_state(classes=10):
    torch.manual_seed(3)
    source = Net(num_classes=classes)
    return source.state_dict()


def test_adapt_selects_mapped_head_rows(tmp_path):
    state = big_head_state(10)
    config = head_config(tmp_path, 3, mapping=[7, 2, 5])
    model = Net(num_classes=3)
    adapted = adapt_pretrained_state(config, state, model)
    rows = torch.tensor([7, 2, 5])
    assert torch.equal(adapted["head.weight"], state["head.weight"][rows])
    assert torch.equal(adapted["head.bias"], state["head.bias"][rows])
    assert torch.equal(adapted["body.0.weight"], state["body.0.weight"])
    assert state["head.weight"].shape == (10, 8)  # the input is not modified


def test_mapped_head_loads_through_load_pretrained(tmp_path):
    state = big_head_state(10)
    path = str(tmp_path / "in21k.pth")
    torch.save({"model": state}, path)
    config = head_config(tmp_path, 3, mapping=[9, 0, 4])
    model = Net(num_classes=3)
    load_pretrained(model, path, adapt=lambda s, m: adapt_pretrained_state(config, s, m))
    assert torch.equal(model.head.weight.detach(), state["head.weight"][[9, 0, 4]])


def test_adapt_without_mapping_leaves_head_for_reinit(tmp_path):
    state = big_head_state(10)
    config = head_config(tmp_path, 3)
    model = Net(num_classes=3)
    adapted = adapt_pretrained_state(config, state, model)
    assert adapted["head.weight"].shape == (10, 8)  # unchanged: load_pretrained will drop it
    path = str(tmp_path / "pre.pth")
    torch.save(state, path)
    before = model.head.weight.detach().clone()
    load_pretrained(model, path, adapt=lambda s, m: adapt_pretrained_state(config, s, m))
    assert torch.equal(model.head.weight.detach(), before)
    assert torch.equal(model.body[0].weight.detach(), state["body.0.weight"])


def test_adapt_mapping_that_does_not_fit(tmp_path):
    state = big_head_state(10)
    model = Net(num_classes=3)
    wrong_count = adapt_pretrained_state(head_config(tmp_path, 3, mapping=[1, 2]), state, model)
    assert wrong_count["head.weight"].shape == (10, 8)
    out_of_range = adapt_pretrained_state(head_config(tmp_path, 3, mapping=[1, 2, 12]), state, model)
    assert out_of_range["head.weight"].shape == (10, 8)


class TinySwin(nn.Module):
    """Just the names a Swin block's attention has."""

    def __init__(self, window, heads=2):
        super().__init__()
        self.layers = nn.ModuleList([nn.Module()])
        self.layers[0].blocks = nn.ModuleList([nn.Module()])
        attn = nn.Module()
        attn.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        attn.register_buffer("relative_position_index", torch.zeros(window * window, window * window,
                                                                     dtype=torch.long))
        self.layers[0].blocks[0].attn = attn


def test_adapt_resizes_swin_bias_table():
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    torch.manual_seed(4)
    old = TinySwin(window=4).state_dict()
    old[key] = torch.randn(49, 2)  # 7x7 grid, 2 heads
    model = TinySwin(window=7)  # 13x13 grid
    config = load_config(None, ["MODEL.NUM_CLASSES", "3"])
    adapted = adapt_pretrained_state(config, old, model)
    assert adapted[key].shape == (169, 2)
    expected = F.interpolate(old[key].t().reshape(1, 2, 7, 7), size=(13, 13), mode="bicubic",
                             align_corners=False).reshape(2, 169).t()
    torch.testing.assert_close(adapted[key], expected)
    # the index buffer of another window size is dropped (the model computes its own)
    assert "layers.0.blocks.0.attn.relative_position_index" not in adapted
    model.load_state_dict(adapted, strict=False)
    torch.testing.assert_close(model.layers[0].blocks[0].attn.relative_position_bias_table.detach(), expected)


def test_adapt_bias_table_constant_stays_constant():
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    old = TinySwin(window=7).state_dict()
    old[key] = torch.full((169, 3), 0.5)
    model = TinySwin(window=12, heads=3)
    adapted = adapt_pretrained_state(load_config(None, ["MODEL.NUM_CLASSES", "3"]), old, model)
    assert adapted[key].shape == (23 * 23, 3)
    torch.testing.assert_close(adapted[key], torch.full((529, 3), 0.5))


def test_adapt_same_window_untouched():
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    old = TinySwin(window=4).state_dict()
    old[key] = torch.randn(49, 2)
    adapted = adapt_pretrained_state(load_config(None, ["MODEL.NUM_CLASSES", "3"]), old, TinySwin(window=4))
    assert torch.equal(adapted[key], old[key])
    assert "layers.0.blocks.0.attn.relative_position_index" in adapted
