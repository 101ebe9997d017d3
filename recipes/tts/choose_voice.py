"""Which corpus voice does the recogniser understand best? Pocketsphinx WER of each voice's recordings.

    python recipes/tts/choose_voice.py --out runs/voices [--count 30] [--voice flite:slt --voice ...]

Every voice speaks the same ``count`` grammar sentences (``build_sentence_corpus`` with that voice
alone, so the sentences are the same for all), pocketsphinx transcribes every recording, and the word
error rate against the sentences is written per voice, best first, to OUT/voice_wer.json (with the
machine and the command). The default TTS voice is trained on the best one: a model can only be as
intelligible as the recordings it learns from.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mamba_audio.data.sentences import DEFAULT_VOICES, SentenceCorpus, build_sentence_corpus
from mamba_audio.intelligibility import RECOGNIZER_SAMPLE_RATE, Transcriber
from mamba_audio.metrics import word_error_rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=30, help="sentences per voice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voice", action="append", help="repeatable; default: the corpus's eight voices")
    args = parser.parse_args()
    out = Path(args.out)
    transcribe = Transcriber()
    rows = []
    for voice in args.voice or DEFAULT_VOICES:
        started = time.perf_counter()
        root = build_sentence_corpus(out / voice.replace(":", "_").replace("+", "_"), count=args.count,
                                     seed=args.seed, voices=(voice,), progress=False)
        built = time.perf_counter() - started
        corpus = SentenceCorpus(root, sample_rate=RECOGNIZER_SAMPLE_RATE)
        references = [text for _, text, _ in corpus.entries]
        heard = [transcribe(corpus[i]["audio"], RECOGNIZER_SAMPLE_RATE) for i in range(len(corpus))]
        seconds = sum(corpus[i]["audio"].numel() for i in range(len(corpus))) / RECOGNIZER_SAMPLE_RATE
        rows.append({"voice": voice, "wer": round(word_error_rate(references, heard), 4),
                     "sentences": len(references), "audio_seconds_per_sentence": round(seconds / len(corpus), 2),
                     "build_seconds_per_sentence": round(built / len(corpus), 3),
                     "examples": [{"text": r, "heard": h} for r, h in list(zip(references, heard))[:3]]})
        print(f"{voice:32s} WER {rows[-1]['wer']:.3f}", flush=True)
    rows.sort(key=lambda row: row["wer"])
    result = {"voices": rows, "best": rows[0]["voice"], "sentences_seed": args.seed,
              "device": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
              "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    (out / "voice_wer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"best: {result['best']}; wrote {out / 'voice_wer.json'}")


if __name__ == "__main__":
    main()
