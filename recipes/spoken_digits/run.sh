#!/usr/bin/env bash
# Spoken digits, end to end and offline: build the corpus with espeak-ng, train a class-conditional
# generator and a classifier, generate clips of every digit, score them (FID, IS, mIS, AM) with the
# classifier, and write OUT/results.json.
# Usage: recipes/spoken_digits/run.sh [OUT_DIR]   (default runs/spoken_digits)
# Environment: PROFILE=cpu (default: lm.yaml, classify.yaml) or gpu (lm_gpu.yaml, classify_gpu.yaml,
#              time-bounded); CORPUS=DIR uses an already built corpus; PER_CLASS=N generated clips
#              per digit (default 10 on the CPU, 100 on the GPU); PER_WORD=N corpus clips per digit;
#              TRAIN_ARGS="..." extra flags for both trainings (e.g. "--steps 20" for a quick check).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/spoken_digits}"
profile="${PROFILE:-cpu}"
case "$profile" in
    cpu) suffix="" per_class="${PER_CLASS:-10}" per_word="${PER_WORD:-100}" ;;
    gpu) suffix="_gpu" per_class="${PER_CLASS:-100}" per_word="${PER_WORD:-200}" ;;
    *) echo "PROFILE must be cpu or gpu, got '$profile'" >&2; exit 2 ;;
esac
corpus="${CORPUS:-$out/corpus}"

if [ -z "${CORPUS:-}" ]; then
    mamba-audio corpus spoken-digits --out "$corpus" --per-word "$per_word" --sample-rate 8000
fi
mamba-audio train --task lm --conditional --data "$corpus" --out "$out/lm" \
    --config "$here/lm$suffix.yaml" --segment-seconds "$([ "$profile" = gpu ] && echo 1.0 || echo 0.25)" \
    ${TRAIN_ARGS:-}
mamba-audio train --task classify --data "$corpus" --out "$out/classifier" \
    --config "$here/classify$suffix.yaml" --segment-seconds 1.0 ${TRAIN_ARGS:-}
mamba-audio generate "$out/lm/checkpoint" --per-class "$per_class" --seconds 1 \
    --top-p 0.95 --seed 0 --out "$out/samples"
mamba-audio evaluate "$out/classifier/checkpoint" --generated "$out/samples" \
    --real "$corpus" --out "$out/scores.json"
python3 "$here/results.py" "$out"
