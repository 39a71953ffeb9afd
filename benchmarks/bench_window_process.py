"""Speed of the fused Swin window kernels against torch.roll + window partition.

    python benchmarks/bench_window_process.py ops  [--batch 128] [--dtypes float16 bfloat16]
    python benchmarks/bench_window_process.py swin [--batch 128] [--dtypes float16]

``ops``: each operation (partition = roll(-s) + partition, merge = merge + roll(+s)),
forward + backward, at the Swin-T stage shapes for 224 px (window 7, shift 3), kernel
against plain PyTorch. ``swin``: one Swin-T training step (forward + backward, autocast)
with and without the kernel, after checking that both give the same output.

Times are medians over --iters runs measured with CUDA events, after --warmup runs.
``--device cpu`` runs the PyTorch rows only (a smoke test of this script). The
extension is imported if built, else compiled with torch.utils.cpp_extension.load
(``--no-jit`` to skip). ``--json FILE`` also writes the rows as JSON.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.window_process import window_process as wp  # noqa: E402

# Swin-T at 224 px: (H, W, C) of each stage, window 7; the last stage is one window, no shift.
SWIN_T_STAGES = [(56, 56, 96, 3), (28, 28, 192, 3), (14, 14, 384, 3), (7, 7, 768, 0)]
WINDOW = 7


def median_ms(fn: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def fwd_bwd(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        op(x).backward(grad)
    return run


def bench_ops(args, device: torch.device, use_kernel: bool) -> List[Dict]:
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for H, W, C, shift in SWIN_T_STAGES:
            x = torch.randn(args.batch, H, W, C, device=device, dtype=dtype, requires_grad=True)
            n_win = args.batch * (H // WINDOW) * (W // WINDOW)
            windows = torch.randn(n_win, WINDOW, WINDOW, C, device=device, dtype=dtype, requires_grad=True)
            g_windows = torch.randn(n_win, WINDOW, WINDOW, C, device=device, dtype=dtype)
            g_image = torch.randn(args.batch, H, W, C, device=device, dtype=dtype)
            ops = {
                "partition": (x, g_windows,
                              lambda t: wp.roll_partition_reference(t, shift, WINDOW),
                              lambda t: wp.WindowProcess.apply(t, shift, WINDOW)),
                "merge": (windows, g_image,
                          lambda t: wp.merge_roll_reference(t, H, W, shift),
                          lambda t: wp.WindowProcessReverse.apply(t, H, W, shift)),
            }
            for op_name, (inp, grad, reference, kernel) in ops.items():
                row = dict(op=op_name, dtype=dtype_name, batch=args.batch, H=H, W=W, C=C, shift=shift,
                           torch_ms=median_ms(fwd_bwd(reference, inp, grad), args.iters, args.warmup, device))
                if use_kernel:
                    out_k, out_r = kernel(inp), reference(inp)
                    if not torch.equal(out_k, out_r):
                        raise AssertionError(f"{op_name} {dtype_name} {H}x{W}x{C}: kernel output differs")
                    row["kernel_ms"] = median_ms(fwd_bwd(kernel, inp, grad), args.iters, args.warmup, device)
                    row["speedup"] = row["torch_ms"] / row["kernel_ms"]
                rows.append(row)
                print_row(row)
            del x, windows, g_windows, g_image
    return rows


def bench_swin(args, device: torch.device, use_kernel: bool) -> List[Dict]:
    from models.build import build_model
    from utils.config import load_config

    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        models = {}
        for fused in ([False, True] if use_kernel else [False]):
            config = load_config(None, ["MODEL.NUM_CLASSES", "1000", "MODEL.DROP_PATH_RATE", "0.0",
                                        "ACCELERATION.FUSED_WINDOW_PROCESS", str(fused)])
            torch.manual_seed(0)
            models[fused] = build_model(config).to(device).train()
        if use_kernel:
            models[True].load_state_dict(models[False].state_dict())
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        amp = device.type == "cuda" and dtype != torch.float32
        outputs = {}
        for fused, model in models.items():
            def step(model=model) -> torch.Tensor:
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    out = model(x)
                out.float().square().mean().backward()
                return out

            outputs[fused] = step().detach().float()
            row = dict(op="swin_t_train_step", dtype=dtype_name, batch=args.batch, fused=fused,
                       ms=median_ms(step, args.iters, args.warmup, device))
            row["img_per_s"] = args.batch / row["ms"] * 1e3
            rows.append(row)
            print_row(row)
        if use_kernel:
            # The kernel moves the same values as roll + partition, so the logits should be
            # identical; allow for nondeterministic library kernels all the same.
            diff = (outputs[True] - outputs[False]).abs().max().item()
            print(f"  max |fused - plain| logits ({dtype_name}): {diff:.3g}")
            tolerance = 1e-4 if dtype == torch.float32 else 2e-2
            if not diff <= tolerance:
                raise AssertionError(f"Swin-T logits differ with the kernel ({dtype_name}): {diff} > {tolerance}")
        del models, x
    return rows


def print_row(row: Dict) -> None:
    parts = []
    for k, v in row.items():
        parts.append(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}")
    print("  " + " ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops", "swin"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"],
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-jit", action="store_true", help="do not compile the extension if it is not built")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu for a smoke test")
    use_kernel = device.type == "cuda"
    if use_kernel and not wp.is_available():
        if args.no_jit:
            raise SystemExit("the swin_window_process extension is not built (and --no-jit)")
        t = time.time()
        wp.load_jit()
        print(f"compiled swin_window_process in {time.time() - t:.0f} s")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    rows = (bench_ops if args.what == "ops" else bench_swin)(args, device, use_kernel)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(what=args.what, device=str(device), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
