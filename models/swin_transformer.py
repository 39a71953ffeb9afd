"""Swin Transformer (v1), written for this project.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
ICCV 2021. It is our own so that the fused window kernel (kernels/window_process) and
apex's fused LayerNorm can plug in.

Parameter names and shapes follow timm's ``swin_*`` models (timm 1.0.x): a timm state
dict loads after :func:`remap_timm_state_dict`, which only drops timm's buffers (ours are
not saved). Checkpoints of the original Microsoft code (which the paper's code uses)
load through the same function, which renames their keys (see its docstring).

Semantics that differ from timm, on purpose:
- MODEL.DROP_RATE is the dropout of the paper's code (after the patch embedding, after
  the attention projection and in the MLP), not a classifier dropout.
- A resolution that is not a multiple of the window is padded at the bottom/right
  *before* the cyclic shift (as in Swin's detection code), so the shift mask matches
  the padded map. timm shifts first; the two agree whenever no padding is needed.
- The input size is fixed by ``img_size`` (the masks are built once, at construction).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

from kernels.window_process import window_process as fused_window

__all__ = ["SwinTransformer", "remap_timm_state_dict"]


def _pair(v) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def relative_position_index(window: Tuple[int, int]) -> torch.Tensor:
    """(N, N) index into the (2wh-1)(2ww-1) bias table, N = wh*ww, for every token pair."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)


def shifted_window_mask(size: Tuple[int, int], window: Tuple[int, int], shift: Tuple[int, int]) -> torch.Tensor:
    """(nW, N, N) additive mask: -100 between tokens that the cyclic shift brought from
    different regions of the (padded) map, else 0."""
    H, W = size
    regions = torch.zeros(H, W)
    label = 0
    for hs in (slice(0, H - window[0]), slice(H - window[0], H - shift[0]), slice(H - shift[0], H)):
        for ws in (slice(0, W - window[1]), slice(W - window[1], W - shift[1]), slice(W - shift[1], W)):
            regions[hs, ws] = label
            label += 1
    wins = fused_window.roll_partition_reference(regions[None, :, :, None], (0, 0), window)
    wins = wins.reshape(-1, window[0] * window[1])
    diff = wins[:, None, :] - wins[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias."""

    def __init__(self, dim: int, window: Tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        n_rel = (2 * window[0] - 1) * (2 * window[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n_rel, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)  # 1, nH, N, N

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) or None."""
        BW, N, C = x.shape
        q, k, v = self.qkv(x).view(BW, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias().to(q.dtype)
        if mask is not None:
            nW = mask.shape[0]
            bias = bias.view(1, 1, self.num_heads, N, N) + mask.to(q.dtype).view(1, nW, 1, N, N)
            bias = bias.expand(BW // nW, nW, self.num_heads, N, N).reshape(BW, self.num_heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(BW, N, C)
        return self.proj_drop(self.proj(x))

    def flops(self, n: int) -> int:
        """Multiply-adds for one window of n tokens (the convention of the Swin paper)."""
        return n * self.dim * 3 * self.dim + 2 * self.num_heads * n * n * (self.dim // self.num_heads) \
            + n * self.dim * self.dim


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each in a pre-norm residual branch.

    Works on (B, H, W, C) maps of the fixed size ``input_resolution``.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_layer=nn.LayerNorm,
                 fused_window_process: bool = False):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.mlp_ratio = mlp_ratio
        # A window no smaller than the map covers it whole: no partition, no shift.
        window = []
        shifts = []
        for r in self.input_resolution:
            if r <= window_size:
                window.append(r)
                shifts.append(0)
            else:
                window.append(window_size)
                shifts.append(window_size // 2 if shift else 0)
        self.window = tuple(window)
        self.shift = tuple(shifts)
        self.padded_resolution = tuple(-(-r // w) * w for r, w in zip(self.input_resolution, self.window))
        self.fused_window_process = fused_window_process

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                    proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if any(self.shift):
            mask = shifted_window_mask(self.padded_resolution, self.window, self.shift)
        else:
            mask = None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _use_fused(self, x: torch.Tensor) -> bool:
        # Under torch.compile, Inductor fuses roll + partition itself and cannot trace the
        # extension, so the fused kernel is for eager mode only.
        return (self.fused_window_process and x.is_cuda and fused_window.is_available()
                and not torch.compiler.is_compiling())

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        Hp, Wp = self.padded_resolution
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if self._use_fused(x):
            windows = fused_window.WindowProcess.apply(x, self.shift, self.window)
        else:
            windows = fused_window.roll_partition_reference(x, self.shift, self.window)
        n = self.window[0] * self.window[1]
        windows = self.attn(windows.view(-1, n, C), mask=self.attn_mask)
        windows = windows.view(-1, self.window[0], self.window[1], C)
        if self._use_fused(windows):
            x = fused_window.WindowProcessReverse.apply(windows, Hp, Wp, self.shift)
        else:
            x = fused_window.merge_roll_reference(windows, Hp, Wp, self.shift)
        if (Hp, Wp) != (H, W):
            x = x[:, :H, :W, :].contiguous()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attention(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x

    def flops(self) -> int:
        H, W = self.input_resolution
        Hp, Wp = self.padded_resolution
        n_windows = (Hp // self.window[0]) * (Wp // self.window[1])
        f = H * W * self.dim  # norm1
        f += n_windows * self.attn.flops(self.window[0] * self.window[1])
        f += 2 * H * W * self.dim * int(self.dim * self.mlp_ratio)  # mlp
        f += H * W * self.dim  # norm2
        return f


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C), normalise, project to 2C: (B, H, W, C) -> (B, H/2, W/2, 2C).

    The channel order is [(0,0), (1,0), (0,1), (1,1)] over (row, column) offsets, as in
    both the original code and timm. Odd sizes are padded by one row/column.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))

    def flops(self) -> int:
        H, W = self.input_resolution
        Ho, Wo = (H + 1) // 2, (W + 1) // 2
        return Ho * Wo * 4 * self.dim + Ho * Wo * 4 * self.dim * 2 * self.dim


class SwinTransformerStage(nn.Module):
    """An optional PatchMerging, then ``depth`` blocks alternating plain and shifted windows."""

    def __init__(self, dim: int, input_resolution: Tuple[int, int], depth: int, num_heads: int, window_size: int,
                 downsample: bool, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: Sequence[float], norm_layer, fused_window_process: bool, use_checkpoint: bool):
        super().__init__()
        if downsample:
            self.downsample = PatchMerging(dim // 2, input_resolution, norm_layer=norm_layer)
            resolution = ((input_resolution[0] + 1) // 2, (input_resolution[1] + 1) // 2)
        else:
            self.downsample = nn.Identity()
            resolution = tuple(input_resolution)
        self.resolution = resolution
        self.grad_checkpointing = use_checkpoint
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(dim, resolution, num_heads, window_size=window_size, shift=i % 2 == 1,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                                 drop_path=drop_path[i], norm_layer=norm_layer,
                                 fused_window_process=fused_window_process)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def flops(self) -> int:
        f = self.downsample.flops() if isinstance(self.downsample, PatchMerging) else 0
        return f + sum(b.flops() for b in self.blocks)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, img_size: Tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, norm_layer=None):
        super().__init__()
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} does not match the model's img_size "
                             f"{self.img_size} (DATA.IMG_SIZE)")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))

    def flops(self) -> int:
        Ho, Wo = self.grid_size
        f = Ho * Wo * self.embed_dim * self.in_chans * self.patch_size * self.patch_size
        if not isinstance(self.norm, nn.Identity):
            f += Ho * Wo * self.embed_dim
        return f


class ClassifierHead(nn.Module):
    """Global average pool over (H, W) and a linear layer (``head.fc``, as in timm)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin Transformer v1 for classification of ``img_size`` images."""

    def __init__(self, img_size=224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, norm_layer=nn.LayerNorm,
                 ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False,
                 fused_window_process: bool = False):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        img_size = _pair(img_size)
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.ape = ape

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      norm_layer=norm_layer if patch_norm else None)
        grid = self.patch_embed.grid_size
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        resolution = grid
        for i, depth in enumerate(depths):
            stage = SwinTransformerStage(
                dim=int(embed_dim * 2 ** i), input_resolution=resolution, depth=depth, num_heads=num_heads[i],
                window_size=window_size, downsample=i > 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer, fused_window_process=fused_window_process, use_checkpoint=use_checkpoint)
            stages.append(stage)
            resolution = stage.resolution
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set:
        """Parameter names that should not be decayed (as in the original code)."""
        return {"absolute_pos_embed"}

    def no_weight_decay_keywords(self) -> set:
        return {"relative_position_bias_table"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.ape:
            B, H, W, C = x.shape
            x = x + self.absolute_pos_embed.view(1, H, W, C)
        x = self.pos_drop(x)
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def flops(self) -> int:
        """Multiply-adds of one forward pass of one image (Swin-T at 224: about 4.5e9)."""
        f = self.patch_embed.flops()
        f += sum(stage.flops() for stage in self.layers)
        H, W = self.layers[-1].resolution
        f += H * W * self.num_features  # final norm
        if isinstance(self.head.fc, nn.Linear):
            f += self.num_features * self.num_classes
        return f


_TIMM_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")


def remap_timm_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A timm (or original Microsoft) Swin v1 state dict, with keys as this model names them.

    - timm ``swin_*`` (1.0.x): same names; only the buffers ``relative_position_index`` and
      ``attn_mask`` are dropped (this model rebuilds them and does not save them).
    - Microsoft's ``Swin-Transformer`` checkpoints (``{"model": ...}`` or a plain dict): the
      PatchMerging of stage i is stored at the end of stage i, here at the start of stage
      i+1, so ``layers.{i}.downsample.*`` becomes ``layers.{i+1}.downsample.*``; the
      classifier ``head.*`` becomes ``head.fc.*``; ``blocks.{j}.mlp.fc1/fc2`` keep their
      names. The patch-merging channel order is the same in both.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    microsoft = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in _TIMM_BUFFERS:
            continue
        if microsoft:
            parts = key.split(".")
            if len(parts) > 2 and parts[0] == "layers" and parts[2] == "downsample":
                parts[1] = str(int(parts[1]) + 1)
                key = ".".join(parts)
            elif key.startswith("head.") and not key.startswith("head.fc."):
                key = "head.fc." + key[len("head."):]
        out[key] = value
    return out
