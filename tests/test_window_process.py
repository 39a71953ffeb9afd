"""The fused window kernels against plain PyTorch roll + partition.

The kernels only move elements, so their outputs and gradients must equal the
reference exactly in every dtype. The CUDA tests skip without a GPU; the compile test
(slow) only needs nvcc.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from kernels.window_process import window_process as wp

# (B, H, W, C, window, shift): Swin-T stage shapes, B=1, H != W, odd channel counts
# (copies narrower than 16 bytes), no shift, rectangular windows.
SHAPES = [
    (2, 56, 56, 96, 7, 3),
    (1, 28, 28, 192, 7, 3),
    (3, 14, 14, 384, 7, 3),
    (1, 7, 7, 768, 7, 0),
    (2, 14, 21, 8, 7, 3),
    (1, 16, 12, 5, 4, 2),
    (2, 8, 8, 3, 4, 0),
    (1, 12, 8, 6, (4, 2), (2, 1)),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


# -----------------------------------------------------------------------------
# The reference itself (CPU)
# -----------------------------------------------------------------------------
def test_reference_matches_definition():
    x = torch.randn(2, 8, 12, 3)
    windows = wp.roll_partition_reference(x, 2, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 3)
    rolled = torch.roll(x, shifts=(-2, -2), dims=(1, 2))
    # window (b=1, row 1, column 2) is index 1*6 + 1*3 + 2
    torch.testing.assert_close(windows[1 * 6 + 1 * 3 + 2], rolled[1, 4:8, 8:12], rtol=0, atol=0)


@pytest.mark.parametrize("B, H, W, C, window, shift", SHAPES)
def test_reference_merge_is_inverse_and_adjoint(B, H, W, C, window, shift):
    x = torch.randn(B, H, W, C, dtype=torch.float64)
    windows = wp.roll_partition_reference(x, shift, window)
    torch.testing.assert_close(wp.merge_roll_reference(windows, H, W, shift), x, rtol=0, atol=0)
    y = torch.randn_like(windows)
    # <P x, y> == <x, M y>: the merge is the backward of the partition.
    torch.testing.assert_close((windows * y).sum(), (x * wp.merge_roll_reference(y, H, W, shift)).sum())


# -----------------------------------------------------------------------------
# The kernels (CUDA)
# -----------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    if not wp.is_available():
        wp.load_jit(str(tmp_path_factory.mktemp("swin_window_process_build")))
    return wp


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, C, window, shift", SHAPES)
def test_partition_kernel(extension, B, H, W, C, window, shift, dtype):
    torch.manual_seed(0)
    x = torch.randn(B, H, W, C, device="cuda", dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = extension.WindowProcess.apply(x, shift, window)
    ref = wp.roll_partition_reference(x_ref, shift, window)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, C, window, shift", SHAPES)
def test_merge_kernel(extension, B, H, W, C, window, shift, dtype):
    torch.manual_seed(0)
    wh, ww = _pair(window)
    n = B * (H // wh) * (W // ww)
    windows = torch.randn(n, wh, ww, C, device="cuda", dtype=dtype, requires_grad=True)
    windows_ref = windows.detach().clone().requires_grad_(True)
    out = extension.WindowProcessReverse.apply(windows, H, W, shift)
    ref = wp.merge_roll_reference(windows_ref, H, W, shift)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(windows.grad, windows_ref.grad, rtol=0, atol=0)


@cuda
def test_kernel_takes_non_contiguous_input(extension):
    x = torch.randn(2, 14, 14, 64, device="cuda").transpose(1, 2)
    torch.testing.assert_close(extension.WindowProcess.apply(x, 3, 7), wp.roll_partition_reference(x, 3, 7),
                               rtol=0, atol=0)


@cuda
def test_kernel_rejects_bad_input(extension):
    with pytest.raises(RuntimeError, match="multiples of the window"):
        extension.WindowProcess.apply(torch.randn(1, 10, 14, 8, device="cuda"), 3, 7)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        extension.WindowProcess.apply(torch.randn(1, 14, 14, 8, device="cuda", dtype=torch.float64), 3, 7)


@cuda
def test_swin_block_with_and_without_kernel(extension):
    """A shifted Swin block gives the same output and gradients on both paths."""
    from models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    fused = SwinTransformerBlock(96, (28, 28), 3, window_size=7, shift=True, fused_window_process=True).cuda()
    plain = SwinTransformerBlock(96, (28, 28), 3, window_size=7, shift=True).cuda()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 28, 28, 96, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = fused(x), plain(x_ref)
    # The windows are identical; attention's backward may accumulate in another order.
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


# -----------------------------------------------------------------------------
# Compiling the sources (CPU is enough; needs nvcc)
# -----------------------------------------------------------------------------
def _cuda_home():
    nvcc = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if nvcc:  # nvcc may be a wrapper script outside the toolkit; its folder's parent is a guess
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


@pytest.mark.slow
def test_extension_compiles(tmp_path):
    """setup.py build_ext into a temporary folder (several minutes on 2 CPU cores)."""
    home = _cuda_home()
    if home is None:
        pytest.skip("nvcc not found")
    env = dict(os.environ, CUDA_HOME=home)
    if not torch.cuda.is_available():
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no GPU to ask: pick one architecture
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    start = time.time()
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"),
         "--build-lib", str(tmp_path / "lib")],
        cwd=wp.SOURCE_DIR, env=env, capture_output=True, text=True,
    )
    elapsed = time.time() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = [p for p in os.listdir(tmp_path / "lib") if p.startswith("swin_window_process") and p.endswith(".so")]
    assert built, os.listdir(tmp_path / "lib")
    print(f"swin_window_process compiled in {elapsed:.0f} s")
