"""Autograd wrappers of the fused Swin window kernels, and their plain-PyTorch reference.

The CUDA extension ``swin_window_process`` is either installed (``setup.py`` in this
folder) or compiled on first use with :func:`load_jit`. Without it, :func:`is_available`
is False and callers use :func:`roll_partition_reference` / :func:`merge_roll_reference`.

Layouts: an image is (B, H, W, C); windows are (B*nW, wh, ww, C) with
nW = (H/wh) * (W/ww), ordered row-major over the window grid of each image.
"""
import os
from typing import Optional, Tuple

import torch

EXTENSION_NAME = "swin_window_process"
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCES = (
    os.path.join(SOURCE_DIR, "window_process.cpp"),
    os.path.join(SOURCE_DIR, "window_process_kernel.cu"),
)

try:
    import swin_window_process as _ext
except ImportError:
    _ext = None


def is_available() -> bool:
    """True when the compiled extension is importable (built or JIT-loaded)."""
    return _ext is not None


def load_jit(build_directory: Optional[str] = None, verbose: bool = False):
    """Compile the extension with ``torch.utils.cpp_extension.load`` and use it.

    Returns the loaded module. Needs nvcc; raises what the compiler raises otherwise.
    """
    global _ext
    from torch.utils.cpp_extension import load

    if build_directory:
        os.makedirs(build_directory, exist_ok=True)
    _ext = load(
        name=EXTENSION_NAME,
        sources=list(SOURCES),
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        build_directory=build_directory,
        verbose=verbose,
    )
    return _ext


def _pair(v) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


# -----------------------------------------------------------------------------
# Reference: what the kernels compute, in plain PyTorch
# -----------------------------------------------------------------------------
def roll_partition_reference(x: torch.Tensor, shift, window) -> torch.Tensor:
    """torch.roll by -shift over (H, W), then partition into windows."""
    sh, sw = _pair(shift)
    wh, ww = _pair(window)
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def merge_roll_reference(windows: torch.Tensor, H: int, W: int, shift) -> torch.Tensor:
    """Merge windows into (B, H, W, C), then torch.roll by +shift over (H, W)."""
    sh, sw = _pair(shift)
    _, wh, ww, C = windows.shape
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)
    if sh or sw:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x


# -----------------------------------------------------------------------------
# Fused kernels with autograd (the backward of each is the other)
# -----------------------------------------------------------------------------
def _require_ext():
    if _ext is None:
        raise RuntimeError(
            f"the CUDA extension {EXTENSION_NAME} is not available: build it with "
            f"kernels/window_process/setup.py or call load_jit()"
        )
    return _ext


class WindowProcess(torch.autograd.Function):
    """Fused roll(x, -shift) + window partition: (B, H, W, C) -> (B*nW, wh, ww, C)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shift, window) -> torch.Tensor:
        ext = _require_ext()
        sh, sw = _pair(shift)
        wh, ww = _pair(window)
        ctx.geometry = (x.shape[1], x.shape[2], sh, sw)
        return ext.roll_partition(x, sh, sw, wh, ww)

    @staticmethod
    def backward(ctx, grad_windows: torch.Tensor):
        H, W, sh, sw = ctx.geometry
        grad_x = _require_ext().merge_roll(grad_windows.contiguous(), H, W, sh, sw)
        return grad_x, None, None


class WindowProcessReverse(torch.autograd.Function):
    """Fused window merge + roll(x, +shift): (B*nW, wh, ww, C) -> (B, H, W, C)."""

    @staticmethod
    def forward(ctx, windows: torch.Tensor, H: int, W: int, shift) -> torch.Tensor:
        ext = _require_ext()
        sh, sw = _pair(shift)
        ctx.geometry = (windows.shape[1], windows.shape[2], sh, sw)
        return ext.merge_roll(windows, int(H), int(W), sh, sw)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        wh, ww, sh, sw = ctx.geometry
        grad_windows = _require_ext().roll_partition(grad_x.contiguous(), sh, sw, wh, ww)
        return grad_windows, None, None, None


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def roll_partition(x: torch.Tensor, shift, window) -> torch.Tensor:
    """Fused path on CUDA when the extension is loaded, else the reference."""
    if _ext is not None and x.is_cuda and x.dtype in KERNEL_DTYPES:
        return WindowProcess.apply(x, shift, window)
    return roll_partition_reference(x, shift, window)


def merge_roll(windows: torch.Tensor, H: int, W: int, shift) -> torch.Tensor:
    """Fused path on CUDA when the extension is loaded, else the reference."""
    if _ext is not None and windows.is_cuda and windows.dtype in KERNEL_DTYPES:
        return WindowProcessReverse.apply(windows, H, W, shift)
    return merge_roll_reference(windows, H, W, shift)
