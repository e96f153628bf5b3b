#!/usr/bin/env bash
# The GPU check of issue 16: keras_mtl's step time on Keras's JAX backend, on
# an NVIDIA GPU, written as JSON (benchmarks/backend_step_time.py).
#
# For a machine with Python 3.12, JAX with CUDA and no TensorFlow, and no
# network. Keras and the pure-Python packages it needs that such a machine
# lacks travel as wheels in $WHEELS (default .whl); fetch them on a machine
# with network access first:
#
#     bash scripts/gpu_check.sh --download        # fills .whl/
#     bash scripts/gpu_check.sh                   # on the GPU machine
#     QUICK=1 bash scripts/gpu_check.sh           # tiny sizes (a dry run)
#
# Sizes (issue 16): batch 256, the ResNet-style CNN at 128x128 and the
# LeNet, T = 2, 8 and 40; per-task pullbacks by vmap and by loop. Writes
# $OUT/resnet128.json and $OUT/lenet.json (OUT defaults to gpu_check_out)
# and finishes within about 8 minutes (each benchmark has its own limit).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--download" ]; then
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" keras==3.15.1 optree==0.20.0 namex==0.1.0
    exit 0
fi

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target /tmp/keras_mtl_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/keras_mtl_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PYTHON" -c "import jax, keras, keras_mtl; print('devices:', jax.devices(), 'keras', keras.__version__)"
if "$PYTHON" -c "import tensorflow" 2>/dev/null; then
    echo "note: TensorFlow is importable here; the check is meant for a machine without it"
fi

if [ -n "${QUICK:-}" ]; then
    sizes=(--batch_sizes=8 --tasks=2,3 --steps=2 --rounds=1 --image_size=32)
else
    sizes=(--batch_sizes=256 --tasks=2,8,40 --steps=10 --rounds=3 --image_size=128)
fi
timeout 300 "$PYTHON" benchmarks/backend_step_time.py --net=resnet "${sizes[@]}" \
    --pullbacks=vmap,loop --json="$OUT/resnet128.json" || echo "resnet: exit $?"
timeout 180 "$PYTHON" benchmarks/backend_step_time.py --net=lenet "${sizes[@]}" \
    --json="$OUT/lenet.json" || echo "lenet: exit $?"
ls -l "$OUT"
