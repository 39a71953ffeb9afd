"""The model factory: every MODEL.TYPE builds, runs forward and backward on CPU, and
honours the config; our Swin equals timm's; parameter counts equal timm's."""
import logging
import sys
import types

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

from models.build import build_model
from models.layers import get_layernorm
from models.swin_transformer import SwinTransformer, remap_timm_state_dict
from utils.config import load_config

# Small variants of every type, for CPU: (opts, image size).
SMALL = {
    "swin": ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[2, 2]", "MODEL.SWIN.NUM_HEADS", "[1, 2]",
             "MODEL.SWIN.WINDOW_SIZE", "4", "DATA.IMG_SIZE", "32"],
    "swinv2": ["MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS", "[2, 2]", "MODEL.SWINV2.NUM_HEADS", "[1, 2]",
               "MODEL.SWINV2.WINDOW_SIZE", "4", "DATA.IMG_SIZE", "32"],
    "convnext": ["MODEL.CONVNEXT.DEPTHS", "[1, 1, 1, 1]", "MODEL.CONVNEXT.DIMS", "[8, 16, 32, 64]",
                 "DATA.IMG_SIZE", "32"],
    "vit": ["MODEL.VIT.PATCH_SIZE", "8", "MODEL.VIT.EMBED_DIM", "32", "MODEL.VIT.DEPTH", "2",
            "MODEL.VIT.NUM_HEADS", "2", "DATA.IMG_SIZE", "32"],
    "resnet": ["MODEL.NAME", "resnet_tiny", "DATA.IMG_SIZE", "32"],
    "timm": ["MODEL.NAME", "vit_tiny_patch16_224", "DATA.IMG_SIZE", "32"],
}
NUM_CLASSES = 7


def small_config(model_type: str, *opts: str):
    base = ["MODEL.TYPE", model_type, "MODEL.NUM_CLASSES", str(NUM_CLASSES), "MODEL.DROP_PATH_RATE", "0.0"]
    return load_config(None, base + SMALL[model_type] + list(opts))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def swin_tiny():
    torch.manual_seed(0)
    return build_model(load_config(None, ["MODEL.NUM_CLASSES", "1000"])).eval()


# -----------------------------------------------------------------------------
# Every type, small, forward + backward
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(SMALL))
def test_forward_backward(model_type):
    torch.manual_seed(0)
    config = small_config(model_type)
    model = build_model(config).train()
    x = torch.randn(2, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    out.logsumexp(1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_resnet_tiny_is_registered_and_small():
    model = timm.create_model("resnet_tiny", num_classes=10)
    assert isinstance(model, timm.models.resnet.ResNet)
    assert n_params(model) < 500_000
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_micro_is_resnet_tiny_at_half_width():
    micro, tiny = timm.create_model("resnet_micro", num_classes=10), timm.create_model("resnet_tiny", num_classes=10)
    # every stage at half the width (timm's plain stem stays 64 channels wide in both)
    assert [m.out_channels for m in micro.modules() if isinstance(m, torch.nn.Conv2d)][1:] == [
        m.out_channels // 2 for m in tiny.modules() if isinstance(m, torch.nn.Conv2d)][1:]
    assert n_params(micro) < n_params(tiny) / 3
    assert micro(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_type_names_key_and_known_types():
    config = load_config(None, ["MODEL.TYPE", "mystery", "MODEL.NUM_CLASSES", "10"])
    with pytest.raises(ValueError, match=r"MODEL\.TYPE 'mystery'.*swin.*convnext.*timm"):
        build_model(config)


def test_unknown_timm_name():
    config = load_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "no_such_net", "MODEL.NUM_CLASSES", "10"])
    with pytest.raises(ValueError, match="MODEL.NAME 'no_such_net'"):
        build_model(config)


def test_resnet_type_needs_a_resnet_name():
    config = load_config(None, ["MODEL.TYPE", "resnet", "MODEL.NAME", "convnext_tiny", "MODEL.NUM_CLASSES", "10"])
    with pytest.raises(ValueError, match="MODEL.TYPE resnet"):
        build_model(config)


# -----------------------------------------------------------------------------
# Parameter counts and FLOPs (1000 classes)
# -----------------------------------------------------------------------------
def test_swin_tiny_params_and_flops(swin_tiny):
    assert n_params(swin_tiny) == 28_288_354
    assert abs(swin_tiny.flops() - 4.5e9) / 4.5e9 < 0.02


@pytest.mark.parametrize("model_type, opts, expected", [
    ("swin", ["MODEL.SWIN.EMBED_DIM", "128", "MODEL.SWIN.DEPTHS", "[2, 2, 18, 2]",
              "MODEL.SWIN.NUM_HEADS", "[4, 8, 16, 32]"], 87_768_224),
    ("convnext", [], 28_589_128),
    ("resnet", ["MODEL.NAME", "resnet50"], 25_557_032),
    ("swinv2", ["DATA.IMG_SIZE", "256"], 28_347_154),
    ("vit", [], 86_567_656),
])
def test_param_counts(model_type, opts, expected):
    config = load_config(None, ["MODEL.TYPE", model_type, "MODEL.NUM_CLASSES", "1000"] + opts)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(config)
    assert n_params(model) == expected


# -----------------------------------------------------------------------------
# Our Swin against timm's
# -----------------------------------------------------------------------------
def test_swin_equals_timm(swin_tiny):
    torch.manual_seed(1)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    # A fresh model of ours, so that the fixture's weights stay as they were.
    ours = build_model(load_config(None, ["MODEL.NUM_CLASSES", "1000"])).eval()
    ours.load_state_dict(remap_timm_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_remap_microsoft_keys():
    """Original-code checkpoints: downsample at the end of a stage, head without .fc."""
    torch.manual_seed(0)
    timm_sd = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3,
                                embed_dim=8, num_heads=(1, 1, 1, 1)).state_dict()
    microsoft = {}
    for k, v in timm_sd.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        k = ".".join(parts).replace("head.fc.", "head.")
        microsoft[k] = v
    remapped = remap_timm_state_dict({"model": microsoft})
    assert set(remapped) == set(remap_timm_state_dict(timm_sd))
    assert all(torch.equal(remapped[k], timm_sd[k]) for k in remapped)


def test_swin_pads_when_resolution_is_not_a_multiple_of_the_window():
    # 40 px / patch 4 = 10x10 tokens, window 4: padded to 12x12; stage 2 is 5x5 -> 8x8.
    config = small_config("swin", "DATA.IMG_SIZE", "40")
    model = build_model(config)
    assert model.layers[0].blocks[1].padded_resolution == (12, 12)
    assert model.layers[1].blocks[1].shift == (2, 2)
    out = model(torch.randn(2, 3, 40, 40))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    out.sum().backward()


def test_swin_padding_changes_nothing_where_there_is_none():
    """The padding path is a no-op when it pads nothing: a window of the map's size."""
    torch.manual_seed(0)
    model = SwinTransformer(img_size=32, patch_size=4, num_classes=3, embed_dim=8, depths=(2,), num_heads=(1,),
                            window_size=4, drop_path_rate=0.0).eval()
    assert model.layers[0].blocks[1].shift == (2, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_swin_rejects_other_input_size():
    model = build_model(small_config("swin"))
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


def test_swin_ape():
    model = build_model(small_config("swin", "MODEL.SWIN.APE", "True"))
    assert model.absolute_pos_embed.shape == (1, 64, 16)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert model.absolute_pos_embed.grad is not None


def test_fused_window_process_falls_back_without_extension(caplog):
    from kernels.window_process import window_process

    if window_process.is_available():
        pytest.skip("the extension is built here")
    with caplog.at_level(logging.WARNING):
        model = build_model(small_config("swin", "ACCELERATION.FUSED_WINDOW_PROCESS", "True"))
    assert "FUSED_WINDOW_PROCESS" in caplog.text
    assert not any(b.fused_window_process for s in model.layers for b in s.blocks)


# -----------------------------------------------------------------------------
# Fused LayerNorm
# -----------------------------------------------------------------------------
def test_fused_layernorm_falls_back_to_torch(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # makes `import apex...` raise ImportError
    with caplog.at_level(logging.WARNING):
        norm = get_layernorm(True)
    assert norm is nn.LayerNorm
    assert "apex" in caplog.text
    with caplog.at_level(logging.WARNING):
        model = build_model(small_config("swin", "ACCELERATION.FUSED_LAYERNORM", "True"))
    assert isinstance(model.norm, nn.LayerNorm)


def test_fused_layernorm_uses_apex_when_importable(monkeypatch):
    class FakeFusedLayerNorm(nn.LayerNorm):
        def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True):  # no device/dtype, as apex
            super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine)

    apex = types.ModuleType("apex")
    normalization = types.ModuleType("apex.normalization")
    normalization.FusedLayerNorm = FakeFusedLayerNorm
    apex.normalization = normalization
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.normalization", normalization)
    assert isinstance(get_layernorm(True)(8, eps=1e-6, device="cpu"), FakeFusedLayerNorm)
    assert get_layernorm(False) is nn.LayerNorm
    for model_type in ("swin", "swinv2", "vit"):
        model = build_model(small_config(model_type, "ACCELERATION.FUSED_LAYERNORM", "True"))
        assert isinstance(model.norm, FakeFusedLayerNorm), model_type
        model(torch.randn(1, 3, 32, 32))


# -----------------------------------------------------------------------------
# Drop-path, dropout, gradient checkpointing
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(SMALL))
def test_drop_path_and_dropout_honoured(model_type):
    config = small_config(model_type, "MODEL.DROP_PATH_RATE", "0.3", "MODEL.DROP_RATE", "0.25")
    model = build_model(config)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.3)
    # timm's ResNet applies its drop_rate functionally in forward_head.
    assert getattr(model, "drop_rate", None) == 0.25 or any(
        isinstance(m, nn.Dropout) and m.p == 0.25 for m in model.modules())
    none = build_model(small_config(model_type))
    assert not any(isinstance(m, DropPath) and m.drop_prob > 0 for m in none.modules())


def test_timm_type_passes_zero_drop_path():
    """timm's Swin defaults to drop_path_rate 0.1: a configured 0 must reach it."""
    config = load_config(None, ["MODEL.TYPE", "timm", "MODEL.NAME", "swin_tiny_patch4_window7_224",
                                "MODEL.NUM_CLASSES", "10", "MODEL.DROP_PATH_RATE", "0.0"])
    with torch.device("meta"):
        model = build_model(config)
    assert not any(isinstance(m, DropPath) and m.drop_prob > 0 for m in model.modules())


def test_swin_drop_path_is_random_in_train_only():
    torch.manual_seed(0)
    model = build_model(small_config("swin", "MODEL.DROP_PATH_RATE", "0.5"))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["swin", "convnext"])
def test_grad_checkpointing_same_gradients(model_type, monkeypatch):
    torch.manual_seed(0)
    plain = build_model(small_config(model_type)).train()
    ckpt = build_model(small_config(model_type, "TRAIN.USE_CHECKPOINT", "True")).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    x = torch.randn(2, 3, 32, 32)
    plain(x).square().mean().backward()
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    ckpt(x).square().mean().backward()
    assert calls, "torch.utils.checkpoint.checkpoint was not used"
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


# -----------------------------------------------------------------------------
# torch.compile and DDP
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["swin", "resnet"])
def test_compiles_without_graph_breaks(model_type):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(small_config(model_type)).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    out = compiled(x)
    out.sum().backward()
    assert out.shape == (2, NUM_CLASSES)


def test_ddp_single_process(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(build_model(small_config("swin", "MODEL.DROP_PATH_RATE", "0.2")))
        for _ in range(2):
            model(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        dist.destroy_process_group()
