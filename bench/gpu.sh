#!/usr/bin/env bash
# The GPU benchmark in one command: bench/gpu.sh [bench_gpu.py options]   (or: make bench-gpu)
#
# On a machine with an NVIDIA GPU: uses the current Python if its TensorFlow already sees a GPU,
# else installs the project with the `gpu` extra into its own venv ($GPU_VENV, default
# build/venv-gpu; kept, so a second run installs nothing), then runs bench/bench_gpu.py with the
# rest of the 8-minute budget ($BUDGET_S, default 480 s, install included). It prints one
# Markdown table and writes bench/results/gpu.json and gpu.md.
#
# bench/gpu.sh --dry-run [...]: no GPU needed and no install: tiny configs on whatever device
# the current Python has (the test suite runs this; the figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${BUDGET_S:-480}
GPU_VENV=${GPU_VENV:-build/venv-gpu}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then PY=$VIRTUAL_ENV/bin/python
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

case " $* " in
*" --dry-run "*) exec "$PY" bench/bench_gpu.py "$@" ;;
esac

sees_gpu() {  # does this Python's TensorFlow see a GPU?
  TF_CPP_MIN_LOG_LEVEL=3 "$1" -c \
    'import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)' \
    2>/dev/null
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi -L failed); run 'bench/gpu.sh --dry-run' to check the harness on CPU" >&2
  exit 2
fi
nvidia-smi -L

if sees_gpu "$PY"; then
  echo "using $PY: its TensorFlow sees the GPU"
else
  if [ ! -f "$GPU_VENV/.installed" ]; then
    echo "installing the gpu extra into $GPU_VENV (tensorflow[and-cuda], pinned CUDA/cuDNN wheels)"
    python3 -m venv "$GPU_VENV"
    "$GPU_VENV/bin/pip" install --quiet --upgrade pip
    "$GPU_VENV/bin/pip" install --quiet -e ".[gpu]"
    touch "$GPU_VENV/.installed"
  fi
  PY=$GPU_VENV/bin/python
  if ! sees_gpu "$PY"; then
    echo "bench/gpu.sh: TensorFlow in $GPU_VENV does not see the GPU (driver too old for CUDA 12? see: $PY -c 'import tensorflow as tf; print(tf.sysconfig.get_build_info())')" >&2
    exit 2
  fi
fi

left=$((BUDGET_S - SECONDS))
if [ "$left" -lt 60 ]; then
  echo "bench/gpu.sh: setup took ${SECONDS} s of the ${BUDGET_S} s budget; run bench/gpu.sh again (the GPU venv is kept: no install then)" >&2
  exit 3
fi
echo "setup took ${SECONDS} s; measuring for at most ${left} s"
exec "$PY" bench/bench_gpu.py --budget-s "$left" "$@"
