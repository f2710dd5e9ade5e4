#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (about 8 minutes on an H100, an estimate: not yet run
# from this repository): set up, run the demo on the GPU, then measure one GPU's share of a Lucie-7B training
# step in the plan's fast main-leg layout (TP1 PP1, mbs 2: full-width layers) and in the original layout (TP4
# PP4, mbs 2: the matrix shapes of one TP4 rank, 8 layers = one PP4 stage), bf16 and fp8: tokens/s, model
# TFLOP/s, MFU, and peak memory against `lucie plan`'s estimate. The bf16 TFLOP/s of the fast layout is the
# figure to pass to `lucie plan --tflops`. GPU_TESTS=1 first runs the suite's GPU-only tests (tests/test_gpu.py,
# a few minutes more).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv
make setup
# Transformer Engine for the GPU layer spec; without it the benchmark uses megatron-core's local layers.
.venv/bin/python -m pip install --quiet "transformer-engine[pytorch]" || echo "note: Transformer Engine not installed; local layers"
# The suite's GPU-only tests (Transformer Engine layers in bf16 and FP8, checkpoints, `lucie train --precision fp8`).
if [ "${GPU_TESTS:-0}" = 1 ]; then
    .venv/bin/python -m pytest -q tests/test_gpu.py || echo "note: GPU-only tests failed (see above)"
fi
.venv/bin/lucie demo --fast --workdir "${DEMO_DIR:-/tmp/lucie-demo-gpu}"
LAYERS="${LAYERS:-4}"
for precision in bf16 fp8; do
    echo "== fast main leg (TP1 PP1 mbs 2), $precision, $LAYERS full-width layers"
    .venv/bin/python bench/layer_throughput.py --layers "$LAYERS" --micro-batch 2 --precision "$precision"
    echo "== original layout (one TP4 rank of a PP4 stage, mbs 2), $precision"
    .venv/bin/python bench/layer_throughput.py --layers 8 --micro-batch 2 --tp-shape 4 --precision "$precision"
done
.venv/bin/lucie plan pretrain --nodes 128 --gpus-per-node 4 | sed -n '1,8p'
