#!/usr/bin/env bash
# The CUDA checks in one run, for a machine with a GPU: the gpu-marked tests, the adversarial-training
# step against its floor in float32 and bf16 (the default model at the main job's size, and the paper's
# DeepLabV3-ResNet-50 at 512 px), then the main job on the GPU with its wall time.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]      # logs go to LOG_DIR (default: outputs/gpu_check)
#
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-outputs/gpu_check}
mkdir -p "$LOG_DIR"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1
status=0

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to LOG_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee "$LOG_DIR/device.log"
stage tests 180 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
stage at_step 150 bash -c "
    $PYTHON benchmarks/class_prediction.py --device cuda &&
    for precision in 32 bf16; do
        $PYTHON benchmarks/at_step.py --device cuda --batch 16 --size 64 --repeats 20 --precision \$precision &&
        $PYTHON benchmarks/at_step.py --device cuda --model deeplabv3 --encoder resnet50 --num-classes 21 \
            --batch 8 --size 512 --repeats 5 --precision \$precision || exit 1
    done"
SECONDS=0
stage main_job 200 "$PYTHON" train.py experiment=shapes_eroseg_at trainer=gpu logger=csv dataset.num_workers=6
echo "main job wall time: $SECONDS s" | tee -a "$LOG_DIR/main_job.log"
exit $status
