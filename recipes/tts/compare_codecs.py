"""Codec round trips of held-out sentences, side by side: pocketsphinx WER (all, flite and espeak-ng voices;
of the whole decode and of the streamed one, decoded in chunks as SpeechStream does), mrstft distance,
CPU real-time factor, and chunked (streaming) against whole decoding.

    python recipes/tts/compare_codecs.py --corpus CORPUS --codec DIR [--codec DIR ...] [--sentences 24] [--out JSON]

CORPUS is a sentence corpus (recipes/tts/README.md); each --codec is anything `load_codec` opens. The
recordings themselves are scored too, as the floor a codec can reach.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mamba_audio.codecs import load_codec
from mamba_audio.data.sentences import SentenceCorpus
from mamba_audio.intelligibility import RECOGNIZER_SAMPLE_RATE, Transcriber
from mamba_audio.metrics import decode_in_chunks, mrstft_distance, word_error_rate
from mamba_audio.tts import DECODE_CONTEXT_FRAMES, DECODE_LOOKAHEAD_FRAMES

STREAM_CHUNK_FRAMES = 4  # what SpeechStream decodes at a time (one block of 4 codec steps)


def word_error_rates(references: list[str], hypotheses: list[str], voices: list[str]) -> dict:
    """WER over all sentences and per synthesizer family (the voice's prefix: flite, espeak-ng)."""
    rates = {"all": word_error_rate(references, hypotheses)}
    for family in sorted({v.split(":")[0] for v in voices}):
        pairs = [(r, h) for r, h, v in zip(references, hypotheses, voices) if v.split(":")[0] == family]
        rates[family] = word_error_rate(*map(list, zip(*pairs)))
    return {name: round(rate, 4) for name, rate in rates.items()}


def score_codec(codec, items: list[dict], transcribe: Transcriber) -> dict:
    hypotheses, chunked_hypotheses, distances, chunk_distances, decode_seconds = [], [], [], [], 0.0
    for item in items:
        audio = item["audio"]
        tokens = codec.encode(audio[None], sample_rate=item["sample_rate"])
        started = time.perf_counter()
        decoded = codec.decode(tokens).cpu()
        decode_seconds += time.perf_counter() - started
        chunked = decode_in_chunks(codec, tokens, STREAM_CHUNK_FRAMES, DECODE_CONTEXT_FRAMES, DECODE_LOOKAHEAD_FRAMES)
        chunk_distances.append(float(mrstft_distance(chunked, decoded)))
        decoded = decoded[0, : audio.shape[0]]
        distances.append(float(mrstft_distance(decoded[None], audio[None])))
        hypotheses.append(transcribe(decoded, codec.sample_rate))
        chunked_hypotheses.append(transcribe(chunked[0, : audio.shape[0]], codec.sample_rate))
    seconds = sum(item["audio"].shape[0] for item in items) / items[0]["sample_rate"]
    return {"codec": repr(codec), "hypotheses": hypotheses, "chunked_hypotheses": chunked_hypotheses,
            "mrstft_distance": round(sum(distances) / len(items), 4),
            "chunked_vs_whole_mrstft_distance": round(sum(chunk_distances) / len(items), 4),
            "decode_realtime_factor": round(decode_seconds / seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--codec", action="append", required=True, help="repeatable: anything load_codec opens")
    parser.add_argument("--sentences", type=int, default=24, help="the first N held-out sentences")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    heldout = SentenceCorpus(args.corpus, split="heldout", sample_rate=RECOGNIZER_SAMPLE_RATE)
    items = [heldout[i] for i in range(min(args.sentences, len(heldout)))]
    references, voices = [item["transcript"] for item in items], [item["voice"] for item in items]
    transcribe = Transcriber()
    results = {"command": "python recipes/tts/compare_codecs.py " + " ".join(
                   [f"--corpus {args.corpus}", *(f"--codec {c}" for c in args.codec), f"--sentences {len(items)}"]),
               "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads)",
               "sentences": len(items), "chunked_decoding": {"chunk_frames": STREAM_CHUNK_FRAMES,
                                                              "context_frames": DECODE_CONTEXT_FRAMES,
                                                              "lookahead_frames": DECODE_LOOKAHEAD_FRAMES},
               "recordings": {"wer": word_error_rates(references, [transcribe(i["audio"], i["sample_rate"])
                                                                   for i in items], voices)},
               "codecs": {}}
    print(f"recordings: WER {results['recordings']['wer']}")
    for spec in args.codec:
        scores = score_codec(load_codec(spec, device="cpu"), items, transcribe)
        scores["wer"] = word_error_rates(references, scores.pop("hypotheses"), voices)
        scores["chunked_wer"] = word_error_rates(references, scores.pop("chunked_hypotheses"), voices)
        results["codecs"][spec] = scores
        print(f"{spec}: WER {scores['wer']} (streamed decode: {scores['chunked_wer']}), "
              f"mrstft {scores['mrstft_distance']}, chunked vs whole "
              f"{scores['chunked_vs_whole_mrstft_distance']}, decode {scores['decode_realtime_factor']}x real time")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
