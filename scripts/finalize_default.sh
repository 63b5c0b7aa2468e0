#!/usr/bin/env bash
# After training the default generator (runs/default64, shipped already): train its encoder and
# interpreter, and measure what the README reports. Sequential: one heavy job at a time on 2 cores.
# Each step is skipped when its output exists, so the script resumes after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.venv/bin/dgan
RUN=${RUN:-runs/default64}
SHIP=model/generator/shipped
EVAL=${EVAL:-runs/eval}
mkdir -p "$EVAL" docs
step() { echo "== $1 ($(date +%T))"; }
[ -d data/domain64 ] || $D domain render --n 6000 --seed 0 --out data/domain64 --quiet
[ -d data/test500 ] || $D domain render --n 500 --seed 1 --out data/test500 --quiet

step encoder
[ -f "$SHIP/encoder.pt" ] || $D train-encoder --steps ${ENC_STEPS:-600} --batch 32 --out "$SHIP/encoder.pt" 2>&1 | tr '\r' '\n' | tail -2
step "interpreter (16 labeled real images through inversion)"
[ -f "$SHIP/interpreter.pt" ] || $D fit --data data/domain64 --n 16 --out "$SHIP/interpreter.pt" | tee "$EVAL/fit.json"
step benches
for b in generator interpreter inversion synthesis; do
  [ -f "$EVAL/bench-$b.json" ] || $D bench $b --json --out "$EVAL/bench-$b.json" > /dev/null
  head -c 400 "$EVAL/bench-$b.json"; echo
done
step "FD evaluator: U-Net on 5000 real images"
[ -f "$EVAL/unet5000.pt" ] || $D train-segmenter --data data/domain64 --n 5000 --steps ${UNET_STEPS:-1000} \
  --test data/test500 --out "$EVAL/unet5000.pt" | tail -1 | tee "$EVAL/unet5000.json"
step "GAN Fréchet distance per checkpoint"
[ -f "$EVAL/fd.json" ] || { $D eval-gan --run "$RUN" --real data/domain64 --evaluator "$EVAL/unet5000.pt" --n 2000 > /dev/null
  cp "$RUN/fd.json" "$EVAL/fd.json"; }
cat "$EVAL/fd.json"
step "sample grid"
$D sample --n 32 --seed 0 --out docs/generator-grid.png
step "quality table"
[ -f "$EVAL/quality/quality.json" ] && grep -q '"complete": true' "$EVAL/quality/quality.json" || \
  $D bench quality --unet-steps ${UNET_STEPS:-1000} --out-dir "$EVAL/quality" --json > /dev/null
cat "$EVAL/quality/quality.md"
step done
