#!/usr/bin/env bash
# The graph path's fidelity beyond the kd modes (README, "GPU throughput"; under 2 minutes on an H200):
# 1. fidelity: FT and its paraphraser, CRD, DML, BSS (its fixed-size step, beside an eager run whose initial
#    weights were nudged: its float-noise floor), born-again and DKD, each trained 2 epochs eagerly and with
#    graphs from the same seed; and FSP / AB with a fresh CE-phase optimizer after a 1-epoch init phase
#    (init_optimizer separate / features), whose first CE step runs eagerly before the capture;
# 2. seeds: CRD's and BSS's seeds trained together, as resources.seeds_together trains them, against each
#    alone (each run has a CUDA generator state of its own, kdpipe.engine.OwnCudaGenerators, and captures its
#    graphs on its own stream, StepRunner.capture_stream; before those, CRD's second seed parted).
# One GPU, from the repository root, at most 9 minutes: each part stopped at its limit (a table is written
# as it ends); writes gpu.md and gpu.json under $OUT/fidelity, $OUT/seeds-crd and $OUT/seeds-bss when OUT
# is set (else prints). The step costs again, with every other method and net: bash bench/gpu.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 240 python3 bench/gpu.py --only fidelity --methods ft_paraphraser,ft,crd,dml,bss,dkd,fsp-separate,ab-features ${OUT:+--out "$OUT/fidelity"}
for method in crd bss; do
    timeout 150 python3 bench/gpu.py --only seeds --methods $method ${OUT:+--out "$OUT/seeds-$method"}
done
