#!/usr/bin/env bash
# GPU benchmark: run on a machine with one CUDA GPU, from the repository root; bench/gpu.py finishes
# within 8 minutes on an H100. Needs only PyTorch (no install of kdpipe: it runs from the checkout).
#   bash bench/gpu.sh            # prints markdown tables; record them in README.md with the card's name
# Then bench/calibrate.py measures every net's and method's step cost on this GPU and replaces the GPU's
# rows of kdpipe/reference/step_costs.csv (what `python -m kdpipe plan` reads); skip it with KDPIPE_NO_CALIBRATE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 470 python3 bench/gpu.py "$@"
if [ -z "${KDPIPE_NO_CALIBRATE:-}" ]; then
    timeout 420 python3 bench/calibrate.py --device cuda --nets all
fi
