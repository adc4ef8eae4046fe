#!/usr/bin/env bash
# Whether kdpipe's CUDA default, bf16 autocast, should stay (the references train in float32): what float32
# (--amp off) costs per step (bench/gpu.py's amp section: ResNet-20 and ResNet-110, eager and as CUDA graphs;
# also bf16 with cudnn.benchmark off, as kdpipe's training leaves it while the benchmarks turn it on)
# and how far bf16 moves each kd mode's gradient from its float32 one (bench/amp_gradients.py: a ResNet-32
# teacher trained on digits, ResNet-20 students at init and after 60 float32 steps; the ce row is the yardstick).
# One GPU, from the repository root, about 3 minutes; writes amp/gpu.md, amp/gpu.json and amp/amp_gradients.md
# under $OUT when set (else prints). README's "bf16 on CUDA" paragraph records the figures.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/amp"; fi
timeout 150 python3 bench/gpu.py --only amp ${OUT:+--out "$OUT/amp"}
timeout 240 python3 bench/amp_gradients.py --cuda 1 ${OUT:+--out "$OUT/amp/amp_gradients.md"}
