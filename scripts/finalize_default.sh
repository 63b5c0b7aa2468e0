#!/usr/bin/env bash
# After training the default generator (runs/default64): ship it with its encoder and interpreter,
# and measure what the README reports. Sequential (one heavy job at a time on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.venv/bin/dgan
RUN=${RUN:-runs/default64}
SHIP=model/generator/shipped
EVAL=runs/eval
mkdir -p "$EVAL" docs
cp "$RUN/generator.pt" "$SHIP/generator.pt"
cp "$RUN/log.jsonl" "$SHIP/training-log.jsonl"
cp "$(ls "$RUN"/grid-kimg*.png | tail -1)" docs/training-last-grid.png
[ -d data/test500 ] || $D domain render --n 500 --seed 1 --out data/test500 --quiet
[ -d data/shifted500 ] || $D domain render --n 500 --seed 1 --variant shifted --out data/shifted500 --quiet

echo "== encoder"; $D train-encoder --steps ${ENC_STEPS:-1500} --batch 32 --out "$SHIP/encoder.pt"
echo "== interpreter (16 labeled real images through inversion)"
$D fit --data data/domain64 --n 16 --out "$SHIP/interpreter.pt" | tee "$EVAL/fit.json"
echo "== U-Nets: 5000 vs 16 real labeled images"
$D train-segmenter --data data/domain64 --n 5000 --steps ${UNET_STEPS:-1000} --test data/test500 \
  --out "$EVAL/unet5000.pt" | tail -1 | tee "$EVAL/unet5000.json"
$D train-segmenter --data data/domain64 --n 16 --steps ${UNET_STEPS:-1000} --test data/test500 \
  --out "$EVAL/unet16.pt" | tail -1 | tee "$EVAL/unet16.json"
echo "== GAN Fréchet distance per checkpoint"
$D eval-gan --run "$RUN" --real data/domain64 --evaluator "$EVAL/unet5000.pt" --n 2000 > /dev/null
cp "$RUN/fd.json" "$EVAL/fd.json"
echo "== benches"
for b in generator inversion synthesis interpreter; do
  $D bench $b --json --out "$EVAL/bench-$b.json" > /dev/null
  cat "$EVAL/bench-$b.json" | head -c 600; echo
done
$D sample --n 32 --seed 0 --out docs/generator-grid.png
echo '== review loop'; .venv/bin/python scripts/review_loop.py | tee runs/eval/review_loop.json
echo '== predict latency'; .venv/bin/python scripts/predict_latency.py | tee runs/eval/predict_latency.json
