#!/usr/bin/env bash
# The GPU check of a node without network: about 7.5 minutes on one H100/H200 (the per-stage estimates below
# come from the 2026-12-04 run on an H200, bench/results/). Copy the repository and wheelhouse/ (`make
# wheelhouse`, on a machine with network) to the node, then run it with the node's Python 3.12 and its torch:
#
#   PYTHON=python3 bench/gpu_check.sh [WHEELHOUSE]      (env: WORK=/tmp/lucie-gpu-check, LOG=<file>)
#
# Stages, each reported (a failure does not stop the next one):
#   1. nvidia-smi;
#   2. the install from the wheelhouse into $WORK/venv over the node's Python (scripts/install_wheelhouse.py),
#      with its version check;
#   3. the GPU-only tests (tests/test_gpu.py; those that need Transformer Engine only where it is installed);
#   4. bench/layer_throughput.py on full-width Lucie-7B layers in bf16: the fast main leg's shape (TP1, mbs 2,
#      4 layers) and one rank of the original TP4 PP4 (8 layers with TP4 matrix shapes), FP8 too when
#      Transformer Engine is there;
#   5. bench/gpu_train_check.py: `lucie train pretrain` of a 4-layer full-width Lucie for 20 steps, its
#      checkpoint exported and verified on the GPU.
# Everything printed goes to the log file named at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${1:-wheelhouse}
WORK=${WORK:-/tmp/lucie-gpu-check}
LOG=${LOG:-$WORK/gpu_check-$(date +%Y%m%d-%H%M%S).log}
VENV=$WORK/venv
PY=$VENV/bin/python
mkdir -p "$WORK" "$(dirname "$LOG")"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

failed=()
stage() {  # stage NAME ESTIMATE COMMAND...: run COMMAND, report its time and status
    local name=$1 estimate=$2 start=$SECONDS status
    shift 2
    echo "== [$(date -u +%H:%M:%S)] $name (estimate $estimate)"
    "$@"
    status=$?
    if [ "$status" = 0 ]; then
        echo "== $name: ok, $((SECONDS - start)) s"
    else
        echo "== $name: FAILED (exit $status), $((SECONDS - start)) s"
        failed+=("$name")
    fi
}

echo "lucie-nemo $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
stage "nvidia-smi" "5 s" nvidia-smi
stage "install from $WHEELHOUSE" "30 s" "$PYTHON" scripts/install_wheelhouse.py "$WHEELHOUSE" --venv "$VENV"
if "$PY" -c 'import transformer_engine' 2>/dev/null; then te=1; markers=(); else te=0; markers=(-m "not transformer_engine"); fi
[ "$te" = 1 ] || echo "note: Transformer Engine absent: local layers, its tests deselected, FP8 not measured"
stage "GPU tests" "2 min" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py "${markers[@]}"
precisions=(bf16)
[ "$te" = 1 ] && precisions+=(fp8)
for precision in "${precisions[@]}"; do
    stage "layers: fast main leg (TP1 PP1 mbs 2, 4 layers), $precision" "30 s" \
        "$PY" bench/layer_throughput.py --layers 4 --micro-batch 2 --precision "$precision"
    stage "layers: one rank of the original TP4 PP4 (mbs 2, 8 layers), $precision" "30 s" \
        "$PY" bench/layer_throughput.py --layers 8 --micro-batch 2 --tp-shape 4 --precision "$precision"
done
[ "$te" = 1 ] || echo "Transformer Engine absent: FP8 not measured"
TRAIN_ARGS=${TRAIN_ARGS:---layers 4 --steps 20}  # a CPU dry run of this script: --layers 2 --steps 10 --tiny-width
stage "lucie train, export, verify (4 full-width layers, 20 steps)" "3.5 min" \
    "$PY" bench/gpu_train_check.py --workdir "$WORK/train" $TRAIN_ARGS
if [ "${#failed[@]}" = 0 ]; then echo "== all stages passed"; else echo "== failed stages: ${failed[*]}"; fi
echo "full log: $LOG"
[ "${#failed[@]}" = 0 ]
