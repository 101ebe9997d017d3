#!/usr/bin/env bash
# Text-to-speech end to end: sentence corpus -> codec -> TTS -> word error rates.
#   recipes/tts/run.sh [OUT]        (OUT defaults to runs/tts; COUNT=2000 sentences, SEED=0)
# On a GPU the codec and TTS steps are bounded by their configs' max_minutes.
set -euo pipefail
OUT=${1:-runs/tts}
COUNT=${COUNT:-2000}
SEED=${SEED:-0}
HERE=$(dirname "$0")

python -c "from mamba_audio.data.sentences import build_sentence_corpus as b; b('$OUT/corpus', count=$COUNT, seed=$SEED)"
mamba-audio train-codec --data "$OUT/corpus" --out "$OUT/codec" --config "$HERE/codec.yaml" \
    --max-minutes "${CODEC_MINUTES:-20}"   # the corpus root: its held-out sentences stay out of training
# mamba-audio tokenize, then mamba-audio train --task tts, then the held-out sentences spoken and timed
python "$HERE/gpu_train.py" --corpus "$OUT/corpus" --codec "$OUT/codec/checkpoint" --out "$OUT/tts" --config "$HERE/tts.yaml"
python "$HERE/evaluate.py" --corpus "$OUT/corpus" --generated "$OUT/tts/generated" --run "$OUT/tts/run.json" \
    --out "$OUT/results.json"
