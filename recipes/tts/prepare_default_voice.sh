#!/usr/bin/env bash
# The default voice's data, made on the CPU for one bounded GPU run: a one-voice sentence corpus, tokenized.
#   recipes/tts/prepare_default_voice.sh CODEC OUT     (COUNT=32000 sentences, VOICE=flite:rms, SEED=0)
# CODEC is a codec checkpoint (mamba-audio train-codec, or the spectral codec). Writes OUT/corpus (kept here
# for evaluate.py) and OUT/tokens: what the GPU run carries (57 MB for 32000 sentences, 29 MB as a .tar.gz,
# which is how it fits beside the working tree in the 64 MiB the GPU machine takes).
# Idempotent: a corpus built with the same arguments is reused, the tokens are rewritten.
set -euo pipefail
CODEC=$1
OUT=$2
COUNT=${COUNT:-32000}
VOICE=${VOICE:-flite:rms}
SEED=${SEED:-0}

started=$(date +%s)
python -c "from mamba_audio.data.sentences import build_sentence_corpus as b
b('$OUT/corpus', count=$COUNT, seed=$SEED, voices=('$VOICE',))"
# a corpus built before the builder timed flite's phones (alignments.csv) gets the timings now, by speaking
# it again (3.5 min for 8000 sentences): the default voice's duration guide trains on them
[ -f "$OUT/corpus/alignments.csv" ] || python -c "from mamba_audio.data.sentences import align_sentence_corpus as a
a('$OUT/corpus')"
built=$(date +%s)
# one thread: on the busy 2-core dev machine, ConvCodec tokenizing took 3 s a clip with torch's two threads
# (under nice 5) and 0.07 s with one
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} mamba-audio tokenize --codec "$CODEC" --data "$OUT/corpus" --out "$OUT/tokens"
finished=$(date +%s)
echo "corpus of $COUNT sentences ($VOICE): $((built - started)) s; tokenized: $((finished - built)) s"
du -sh "$OUT/tokens"
