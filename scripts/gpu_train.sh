#!/usr/bin/env bash
# Train the default generator on a lent GPU machine, time-boxed, resumable across machines.
# Run from the repository root on the GPU machine (its python3 has torch + CUDA). Reads a previous
# state from gpu-carry/state.pt if present; writes state (split in <16 MiB parts), generator, log and
# the last grid to $OUT. Here, reassemble with: cat OUT/state.pt.part-* > gpu-carry/state.pt
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
MIN=${MIN:-8}            # training minutes in this call
N=${N:-50000}            # rendered training images
RUN=runs/gpu64
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
t0=$(date +%s)
seq 0 $((N / 2500 - 1)) | xargs -P 16 -I{} sh -c \
  'python3 -m ls_backend.cli domain render --n 2500 --start $(({} * 2500)) --seed 0 --size 64 --out data/domain64 --quiet >/dev/null'
echo "rendered $(ls data/domain64/images | wc -l) images in $(( $(date +%s) - t0 )) s"
mkdir -p "$RUN"
resume=""
if [ -f gpu-carry/state.pt ]; then cp gpu-carry/state.pt "$RUN/state.pt"; cp gpu-carry/log.jsonl "$RUN/log.jsonl" 2>/dev/null || true; resume=--resume; fi
python3 -m ls_backend.cli train-gan --data data/domain64 --out "$RUN" --device cuda --batch ${BATCH:-64} \
  --r1-gamma ${GAMMA:-0.02} --kimg 100000 --checkpoint-minutes 3 --time-limit-minutes "$MIN" $resume 2>&1 \
  | tr '\r' '\n' | awk 'NR % 200 == 0 || /trained|Error|error/' | tee "$OUT/train.log"
split -b 15M "$RUN/state.pt" "$OUT/state.pt.part-"
cp "$RUN/generator.pt" "$RUN/log.jsonl" "$OUT/"
cp "$(ls "$RUN"/grid-kimg*.png | tail -1)" "$OUT/last-grid.png"
tail -3 "$RUN/log.jsonl"
