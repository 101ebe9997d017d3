#!/usr/bin/env bash
# Our codec, bounded in time: train it on a corpus, then score it beside mu-law on the corpus's held-out clips.
#   recipes/tts/train_codec.sh CORPUS OUT [FLAGS]   MINUTES=8 of training (codec.yaml); CPU_CLIPS=20;
#                                                   FLAGS go to train-codec (e.g. --set model.num_codebooks=8)
# OUT/codec/             the checkpoint (config.json, model.safetensors): --codec for tokenize and the TTS recipe
# OUT/metrics.jsonl      the training curve
# OUT/codec_results.json mrstft distance on the held-out clips for ours and for mu-law (8 bits), the round
#                        trip's speed on this device, and ours on one CPU thread (codec_results_cpu.json)
set -euo pipefail
CORPUS=$1
OUT=$2
HERE=$(dirname "$0")
RUN=${RUN:-$(mktemp -d)}  # trainer state stays out of OUT: only the checkpoint and the figures come back

mamba-audio --quiet train-codec --data "$CORPUS" --out "$RUN" --config "$HERE/codec.yaml" \
    --max-minutes "${MINUTES:-8}" "${@:3}"
mkdir -p "$OUT"
cp -r "$RUN/checkpoint" "$OUT/codec"
cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"
mamba-audio --quiet evaluate-codec --codec "$OUT/codec" --codec mulaw8 --data "$CORPUS" \
    --out "$OUT/codec_results.json"
OMP_NUM_THREADS=1 mamba-audio --quiet evaluate-codec --codec "$OUT/codec" --data "$CORPUS" --device cpu \
    --max-clips "${CPU_CLIPS:-20}" --out "$OUT/codec_results_cpu.json"
