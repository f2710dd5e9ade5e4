#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU: set up, run the demo on the GPU, then measure
# the training throughput of full-width Lucie-7B layers. Not yet run on a GPU from this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv
make setup
# Transformer Engine for the GPU layer spec; without it the benchmark uses megatron-core's local layers.
.venv/bin/python -m pip install --quiet "transformer-engine[pytorch]" || echo "note: Transformer Engine not installed; local layers"
.venv/bin/lucie demo --fast --workdir "${DEMO_DIR:-/tmp/lucie-demo-gpu}"
.venv/bin/python bench/layer_throughput.py --layers "${LAYERS:-4}" --micro-batch "${MICRO_BATCH:-1}"
