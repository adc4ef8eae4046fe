#!/usr/bin/env bash
# GPU benchmark: run on a machine with one CUDA GPU, from the repository root, in under 10 minutes on an
# H100/H200. Needs only PyTorch (kdpipe runs from the checkout, no install).
#   bash bench/gpu.sh            # markdown tables (and gpu.md/gpu.json under $OUT when set); record them in README
# The calibration table (what `python -m kdpipe plan --device <gpu>` reads) gets this GPU's rows: the
# together section's ratios, then bench/calibrate.py's step costs of every net and method as kdpipe trains
# (CUDA graphs) and again eagerly (label <gpu>-eager): kdpipe/reference/step_costs.csv, or
# $OUT/step_costs.csv when OUT is set. Skip calibrate.py with KDPIPE_NO_CALIBRATE=1.
# A refreshed table changes README's plan figures: `pytest tests/test_costplan.py -k readme` prints them.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv,noheader || true
table=kdpipe/reference/step_costs.csv
if [ -n "${OUT:-}" ]; then cp "$table" "$OUT/step_costs.csv"; table="$OUT/step_costs.csv"; fi
timeout 400 python3 bench/gpu.py --calibration "$table" "$@"
if [ -z "${KDPIPE_NO_CALIBRATE:-}" ]; then
    label=$(python3 -c 'import sys, torch; sys.path.insert(0, "."); from kdpipe.costplan import device_label; print(device_label(torch.cuda.get_device_name()))')
    common=(--device cuda --nets resnet20,resnet56,resnet110 --repeats 1 --out "$table")
    timeout 120 python3 bench/calibrate.py "${common[@]}" --graphs 1
    timeout 150 python3 bench/calibrate.py "${common[@]}" --graphs 0 --label "$label-eager"
fi
