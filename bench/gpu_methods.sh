#!/usr/bin/env bash
# The methods whose steps became CUDA graphs after bench/gpu.sh last ran in full (FT and its paraphraser, CRD,
# DML, BSS with its fixed-size step, born-again; DKD, whose one-hot no longer syncs the host): fidelity (each
# trained 2 epochs eagerly and with graphs from the same seed), their step costs with graphs and eagerly,
# for `python -m kdpipe plan`, and CRD's and BSS's seeds trained together as resources.seeds_together trains
# them against each alone (gpu.py's seeds section: each run's own generators on a shared GPU).
# One GPU, from the repository root, about 6 minutes on an H200; writes gpu.md,
# gpu.json and step_costs.csv under $OUT when set (else prints, and updates kdpipe/reference/step_costs.csv).
# With the new rows in kdpipe/reference/step_costs.csv, `pytest tests/test_costplan.py -k readme` prints the
# plan table README must then show (it fails until README does).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
table=kdpipe/reference/step_costs.csv
if [ -n "${OUT:-}" ]; then cp "$table" "$OUT/step_costs.csv"; table="$OUT/step_costs.csv"; fi
methods=ft,crd,bss,born-again,dml,ft_paraphraser,dkd
timeout 330 python3 bench/gpu.py --only seeds,fidelity --methods ft_paraphraser,ft,crd,dml,bss,dkd --calibration "$table"
label=$(python3 -c 'import sys, torch; sys.path.insert(0, "."); from kdpipe.costplan import device_label; print(device_label(torch.cuda.get_device_name()))')
common=(--device cuda --nets none --only "$methods" --repeats 1 --out "$table")
timeout 60 python3 bench/calibrate.py "${common[@]}" --graphs 1
timeout 60 python3 bench/calibrate.py "${common[@]}" --graphs 0 --label "$label-eager"
