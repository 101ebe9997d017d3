#!/usr/bin/env bash
# Spoken digits, end to end and offline: build the corpus with espeak-ng, train a class-conditional
# generator and a classifier, generate one clip per digit, and let the classifier label them.
# Usage: recipes/spoken_digits/run.sh [OUT_DIR]   (default runs/spoken_digits)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/spoken_digits}"
digits=(zero one two three four five six seven eight nine)

mamba-audio corpus spoken-digits --out "$out/corpus" --per-word 100 --sample-rate 8000
mamba-audio train --task lm --conditional --data "$out/corpus" --out "$out/lm" \
    --config "$here/lm.yaml" --segment-seconds 0.25
mamba-audio train --task classify --data "$out/corpus" --out "$out/classifier" \
    --config "$here/classify.yaml" --segment-seconds 1.0
for digit in "${digits[@]}"; do
    mamba-audio generate "$out/lm/checkpoint" --class-name "$digit" --seconds 1 \
        --top-p 0.95 --seed 0 --out "$out/samples/$digit.wav"
done
mamba-audio classify "$out/classifier/checkpoint" "$out"/samples/*.wav --top 1
