#!/usr/bin/env bash
# Checks and measurements that need a CUDA GPU. From the repository root:
#
#     bash tests/gpu/run_gpu_checks.sh [OUT_DIR]        # default OUT_DIR: output/gpu_checks
#
# 1. builds the fused window kernel (kernels/window_process/setup.py) into OUT_DIR/ext;
# 2. runs its unit tests (kernel vs torch.roll + partition, outputs and gradients);
# 3. times one Swin-T training step with and without the kernel;
# 4. times the kernel against roll + partition at the Swin-T stage shapes
#    (batch 128, float16 and bfloat16, forward + backward, CUDA events, median).
# Logs and JSON results go to OUT_DIR; copy the tables into docs/benchmarks.md.
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/output/gpu_checks}" && cd "${1:-$ROOT/output/gpu_checks}" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
cd "$ROOT"

step() { printf '\n=== %s ===\n' "$*"; }

step "environment"
{
    nvidia-smi || true
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
    if command -v nvcc > /dev/null; then nvcc --version | tail -n 2; else echo "nvcc not on PATH"; fi
} 2>&1 | tee "$OUT/environment.txt"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch")'

step "1. build the window kernel"
start=$(date +%s)
if ! (cd kernels/window_process &&
        "$PYTHON" setup.py build_ext --build-temp "$OUT/ext_build" --build-lib "$OUT/ext") \
        > "$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log"
    echo "build failed: see $OUT/build.log" >&2
    exit 1
fi
echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
export PYTHONPATH="$OUT/ext:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'from kernels.window_process import window_process as wp; assert wp.is_available(), "not importable"'

step "2. kernel unit tests"
"$PYTHON" -m pytest tests/test_window_process.py -q -m "not slow" -p no:cacheprovider 2>&1 |
    tee "$OUT/test_window_process.log"

step "3. Swin-T training step with and without the kernel (batch 128)"
"$PYTHON" benchmarks/bench_window_process.py swin --batch 128 --dtypes float16 bfloat16 --no-jit \
    --json "$OUT/swin_step.json" 2>&1 | tee "$OUT/swin_step.log"

step "4. kernel vs roll + partition at Swin-T stage shapes (batch 128)"
"$PYTHON" benchmarks/bench_window_process.py ops --batch 128 --dtypes float16 bfloat16 --no-jit \
    --json "$OUT/window_ops.json" 2>&1 | tee "$OUT/window_ops.log"

# (produce-mode run and training-throughput measurements are added here by their owner)

step "done: results in $OUT"
