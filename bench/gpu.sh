#!/usr/bin/env bash
# GPU benchmark: run on a machine with one CUDA GPU, from the repository root; finishes within
# 8 minutes on an H100. Needs only PyTorch (no install of kdpipe: it runs from the checkout).
#   bash bench/gpu.sh            # prints markdown tables; record them in README.md with the card's name
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 470 python3 bench/gpu.py "$@"
