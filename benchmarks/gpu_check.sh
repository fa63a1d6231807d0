#!/usr/bin/env bash
# The GPU checks, in one call of under 8 minutes on a machine with an NVIDIA GPU:
#   1. the GPU-marked tests (auto precision, XLA and augmentation on the GPU, a mirrored run over every GPU);
#   2. a mirrored resnet_small run on the bundled sample (2 epochs), over every visible GPU;
#   3. `fast` at airbench94's widths (64/256/256, batch 1024) on the full CIFAR-10 copy under a 3-minute
#      budget, printing its time to 94% test accuracy (benchmarks/time_to_accuracy.py --target 0.94).
# Usage: benchmarks/gpu_check.sh [path/to/cifar-10-python.tar.gz]   (default: ../shared/data/cifar10/...)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/cifar10/cifar-10-python.tar.gz}"
PY=.venv/bin/python
[ -x "$PY" ] || { python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" benchmarks/machine_limit.py --seconds 2
"$PY" -m pytest -q -n 0 -m gpu tests/test_gpu.py
"$PY" cli.py run recipe=resnet_small data.name=sample trainer.epochs=2 trainer.strategy=mirrored \
  trainer.verbose=epoch trainer.out_dir="$(mktemp -d)/mirrored"
if [ -e "$DATA" ]; then
  "$PY" benchmarks/time_to_accuracy.py --contenders fast --data "$DATA" --budget 3min --target 0.94 \
    --override model.width1=64 --override model.width2=256 --override model.width3=256 \
    --override trainer.batch_size=1024 --override optimizer.lr=1.5 --out "$(mktemp -d)/tta94"
else
  echo "no CIFAR-10 copy at $DATA: time to 94% skipped"
fi
