#!/usr/bin/env bash
# YouTubeMix recipe, offline and small: render a piano corpus with fluidsynth (the stand-in for YouTubeMix),
# train the lm.yaml model shrunk for a CPU (8 kHz, quarter-second crops), and write a two-second sample.
# Usage: recipes/youtubemix/run.sh [OUT_DIR]   (default runs/youtubemix); with the real data, see README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/youtubemix}"

mamba-audio corpus piano --out "$out/corpus" --pieces 12 --max-seconds 30 --seed 0
mamba-audio train --dataset youtubemix --data "$out/corpus" --out "$out/lm" --config "$here/lm.yaml" \
    --sample-rate 8000 --segment-seconds 0.25 --steps 100 --batch-size 8 --eval-every 50 --save-every 50 \
    --set model.backbone.d_model=32 --set model.backbone.n_layers=1 --set train.warmup_steps=10 \
    --set train.ema_decay=0 --set train.num_workers=0
mamba-audio generate "$out/lm/checkpoint" --seconds 2 --top-p 0.95 --seed 0 --out "$out/samples/piano.wav"
