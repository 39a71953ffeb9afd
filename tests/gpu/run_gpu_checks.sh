#!/usr/bin/env bash
# Checks and measurements that need a CUDA GPU. From the repository root:
#
#     bash tests/gpu/run_gpu_checks.sh [OUT_DIR]        # default OUT_DIR: output/gpu_checks
#
# 1. builds the fused window kernel (kernels/window_process/setup.py) into OUT_DIR/ext;
# 2. runs its unit tests (kernel vs torch.roll + partition, outputs and gradients);
# 3. times one Swin-T training step with and without the kernel;
# 4. times the kernel against roll + partition at the Swin-T stage shapes
#    (batch 128, float16 and bfloat16, forward + backward, CUDA events, median);
# 5. a short produce run with DALI mixed decoding (nccl with several GPUs) and get_coreset;
#    CMYK/grayscale/PNG-as-JPEG/RGBA/16-bit/EXIF-rotated images through nvJPEG vs Pillow;
# 6. training-step throughput of Swin-T, ResNet-50 and ConvNeXt-T, batch 128, AMP,
#    with and without COMPILE_ENABLE.
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

step "5. short produce run: DALI mixed decoding, nccl when there are several GPUs"
NGPU=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
"$PYTHON" -m data.mnist_demo "$OUT/mnist"
DEMO_OPTS=(DATA.DATA_PATH_TRAIN "$OUT/mnist/train" DATA.DATA_PATH_VAL "$OUT/mnist/val")
rm -rf "$OUT/produce"
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" main_and_produce.py \
    --config configs/demo-mnist.yaml --output "$OUT/produce" \
    --opts "${DEMO_OPTS[@]}" DATA.DECODE_DEVICE mixed TRAIN.EPOCHS 3 AMP_ENABLE True 2>&1 | tee "$OUT/produce.log"
"$PYTHON" get_coreset.py --input "$OUT/produce" --dataset_file_list "$OUT/mnist/train/file_list.txt" \
    --fraction 0.75 --window 2 --output "$OUT/produce/coreset.txt" | tee -a "$OUT/produce.log"

step "5a. the same produce run on the demo as WebDataset shards and as an HF dataset (mixed decoding)"
rm -rf "$OUT/fmt" && mkdir -p "$OUT/fmt"
"$PYTHON" -m data.export --file-list "$OUT/mnist/train/file_list.txt" --shards "$OUT/fmt/train-%02d.tar" \
    --per-shard 1000 --hf "$OUT/fmt/hf_train"
"$PYTHON" -m data.export --file-list "$OUT/mnist/val/file_list.txt" --shards "$OUT/fmt/val-%02d.tar" \
    --per-shard 1000 --hf "$OUT/fmt/hf_val"
for fmt in wds hf; do
    if [ "$fmt" = wds ]; then
        FMT_OPTS=(DATA.FORMAT wds DATA.TRAIN_SHARDS "$OUT/fmt/train-{00..03}.tar" DATA.VAL_SHARDS "$OUT/fmt/val-00.tar")
    else
        FMT_OPTS=(DATA.FORMAT hf DATA.HF_TRAIN "$OUT/fmt/hf_train" DATA.HF_VAL "$OUT/fmt/hf_val")
    fi
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" main_and_produce.py \
        --config configs/demo-mnist.yaml --output "$OUT/fmt/produce_$fmt" \
        --opts "${FMT_OPTS[@]}" DATA.DECODE_DEVICE mixed TRAIN.EPOCHS 3 AMP_ENABLE True 2>&1 | tee "$OUT/fmt/$fmt.log"
    "$PYTHON" get_coreset.py --input "$OUT/fmt/produce_$fmt" --fraction 0.75 --window 2 \
        --output "$OUT/fmt/kept_$fmt.txt" | tee -a "$OUT/fmt/$fmt.log"
    # Same order and seed as step 5: identical unless the GPU kernels are not deterministic.
    for f in "$OUT"/produce/pred_prob_history/prob_*.npy; do
        cmp -s "$f" "$OUT/fmt/produce_$fmt/pred_prob_history/$(basename "$f")" && r=identical || r=differs
        echo "$fmt $(basename "$f") vs the folder run: $r" | tee -a "$OUT/fmt/$fmt.log"
    done
done

step "5b. odd images (CMYK, grayscale, PNG named .JPEG, RGBA, 16-bit, EXIF) with mixed decoding"
"$PYTHON" -m pytest tests/test_odd_images.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/odd_images.log"
if grep -q "needs a CUDA GPU" "$OUT/odd_images.log"; then echo "mixed decoding was skipped" >&2; exit 1; fi

step "6. training-step throughput at batch 128 with AMP, with and without torch.compile"
# One real DALI batch (mixed decoding, 224 px) repeated; images/s per GPU.
for cfg in swin-tiny-1k resnet50-1k-90 convnext-tiny-1k; do
    for compile in False True; do
        "$PYTHON" main.py --config "configs/$cfg.yaml" --output "$OUT/throughput_${cfg}_compile${compile}" \
            --throughput --opts "${DEMO_OPTS[@]}" DATA.DATASET custom MODEL.NUM_CLASSES 1000 DATA.REAL_LABEL False \
            DATA.IMG_SIZE 224 DATA.BATCH_SIZE_TRAIN 128 AMP_ENABLE True COMPILE_ENABLE "$compile" 2>&1 |
            grep -E "throughput|Error|error" | sed "s/^/$cfg compile=$compile: /" | tee -a "$OUT/throughput.log"
    done
done

step "done: results in $OUT"
