#!/usr/bin/env bash
# CUDA end-to-end check of every entry point (a few seconds each), run from the repository root
# on a machine with one GPU and PyTorch: bf16 autocast, channels_last, the teacher cache built on
# the GPU, the batched BSS attack, CRD's memory on the device. Prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=$(mktemp -d)
cuda=${KDPIPE_CUDA:-1}  # KDPIPE_CUDA=0 runs the same check on the CPU
common=(--data_name digits --epochs 2 --batch_size 64 --train_subset 256 --cuda "$cuda" --save_root "$out" --print_freq 1000)
pair=(--t_model "$out/t/model.pt" --t_name resnet20 --s_name resnet8)
python3 -m kdpipe base "${common[@]}" --net_name resnet20 --note t
python3 -m kdpipe teacher_cache --data_name digits --train_subset 256 --cuda "$cuda" --t_model "$out/t/model.pt" \
    --t_name resnet20 --save_root "$out" --note cache
for mode in st rkd cc; do
    python3 -m kdpipe kd "${common[@]}" "${pair[@]}" --kd_mode "$mode" --teacher_cache "$out/cache" --note "kd-$mode-cache"
done
for mode in logits at fitnet nst pkt fsp ab sp sobolev lwm irg vid ofd afd; do
    python3 -m kdpipe kd "${common[@]}" "${pair[@]}" --kd_mode "$mode" --note "kd-$mode"
done
python3 -m kdpipe ft "${common[@]}" "${pair[@]}" --note ft
python3 -m kdpipe crd "${common[@]}" "${pair[@]}" --nce_n 4096 --note crd
python3 -m kdpipe crd "${common[@]}" "${pair[@]}" --nce_n 4096 --teacher_cache "$out/cache" --mode relax --note crd-cache
python3 -m kdpipe dml "${common[@]}" --net1_name resnet20 --net2_name resnet8 --note dml
python3 -m kdpipe bss "${common[@]}" "${pair[@]}" --attack_size 16 --note bss
python3 - "$out" <<'PY'
import json, pathlib, sys
for record in sorted(pathlib.Path(sys.argv[1]).glob("*/run.json")):
    r = json.loads(record.read_text())
    roles = ", ".join(f"{k} {v['last_test_acc']}" for k, v in r["roles"].items())
    print(f"{record.parent.name:16s} {r['device']:7s} bf16={r['amp_bf16']} {r['mean_epoch_s']:.2f}s/epoch  {roles}  "
          f"teacher={r['info'].get('teacher_source', '-')}")
PY
