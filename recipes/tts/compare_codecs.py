"""Codec round trips of held-out sentences, side by side: pocketsphinx WER (all, flite and espeak-ng voices)
and mrstft distance to the recording, of the whole decode, of the streamed one (decoded in chunks as
SpeechStream does, continuing the audio already played) and of a streamed one that restarts in every
window; CPU real-time factor of the whole decode.

    python recipes/tts/compare_codecs.py --corpus CORPUS --codec DIR [--codec DIR ...] [--first 0] [--sentences 24]
        [--out JSON]

CORPUS is a sentence corpus (recipes/tts/README.md); each --codec is anything `load_codec` opens. The
recordings themselves are scored too, as the floor a codec can reach. The sentences are the held-out
clips ``first`` .. ``first + sentences`` (``--first 120`` keeps off the 120 that the voices are reported on).
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
    """Round trips of ``items``: transcripts and mrstft distance (to the recording) of the whole decode, of
    the streamed decode as SpeechStream does it (continuing the audio already played), and of the streamed
    decode restarting in every window (what streams did before ``decode(..., played=)``)."""
    hypotheses = {"whole": [], "streamed": [], "restarting": []}
    distances = {name: [] for name in hypotheses}
    chunk_distances, decode_seconds = [], 0.0
    for item in items:
        audio = item["audio"]
        tokens = codec.encode(audio[None], sample_rate=item["sample_rate"])
        started = time.perf_counter()
        decoded = codec.decode(tokens).cpu()
        decode_seconds += time.perf_counter() - started
        versions = {"whole": decoded, "streamed": decode_in_chunks(codec, tokens, STREAM_CHUNK_FRAMES,
                                                                   DECODE_CONTEXT_FRAMES, DECODE_LOOKAHEAD_FRAMES),
                    "restarting": decode_in_chunks(codec, tokens, STREAM_CHUNK_FRAMES, DECODE_CONTEXT_FRAMES,
                                                   DECODE_LOOKAHEAD_FRAMES, continuing=False)}
        chunk_distances.append(float(mrstft_distance(versions["streamed"], decoded)))
        for name, version in versions.items():
            version = version[0, : audio.shape[0]]
            distances[name].append(float(mrstft_distance(version[None], audio[None])))
            hypotheses[name].append(transcribe(version, codec.sample_rate))
    seconds = sum(item["audio"].shape[0] for item in items) / items[0]["sample_rate"]
    mean = {name: round(sum(values) / len(items), 4) for name, values in distances.items()}
    return {"codec": repr(codec), "hypotheses": hypotheses, "mrstft_distance": mean["whole"],
            "chunked_mrstft_distance": mean["streamed"], "chunked_restarting_mrstft_distance": mean["restarting"],
            "chunked_vs_whole_mrstft_distance": round(sum(chunk_distances) / len(items), 4),
            "decode_realtime_factor": round(decode_seconds / seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--codec", action="append", required=True, help="repeatable: anything load_codec opens")
    parser.add_argument("--first", type=int, default=0, help="start at this held-out sentence")
    parser.add_argument("--sentences", type=int, default=24, help="how many held-out sentences")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    heldout = SentenceCorpus(args.corpus, split="heldout", sample_rate=RECOGNIZER_SAMPLE_RATE)
    items = [heldout[i] for i in range(args.first, min(args.first + args.sentences, len(heldout)))]
    if not items:
        raise SystemExit(f"{args.corpus} has no held-out sentences from {args.first}")
    references, voices = [item["transcript"] for item in items], [item["voice"] for item in items]
    transcribe = Transcriber()
    command = [f"--corpus {args.corpus}", *(f"--codec {c}" for c in args.codec), f"--first {args.first}",
               f"--sentences {len(items)}"]
    results = {"command": "python recipes/tts/compare_codecs.py " + " ".join(command),
               "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads)",
               "first": args.first, "sentences": len(items), "ids": [item["id"] for item in items],
               "chunked_decoding": {"chunk_frames": STREAM_CHUNK_FRAMES, "context_frames": DECODE_CONTEXT_FRAMES,
                                    "lookahead_frames": DECODE_LOOKAHEAD_FRAMES},
               "recordings": {"wer": word_error_rates(references, [transcribe(i["audio"], i["sample_rate"])
                                                                   for i in items], voices)},
               "codecs": {}}
    print(f"recordings: WER {results['recordings']['wer']}")
    for spec in args.codec:
        scores = score_codec(load_codec(spec, device="cpu"), items, transcribe)
        hypotheses = scores.pop("hypotheses")
        for name, key in (("whole", "wer"), ("streamed", "chunked_wer"), ("restarting", "chunked_restarting_wer")):
            scores[key] = word_error_rates(references, hypotheses[name], voices)
        results["codecs"][spec] = scores
        print(f"{spec}: WER {scores['wer']} (streamed decode: {scores['chunked_wer']}, restarting in every window: "
              f"{scores['chunked_restarting_wer']}), mrstft {scores['mrstft_distance']} (streamed "
              f"{scores['chunked_mrstft_distance']}, restarting {scores['chunked_restarting_mrstft_distance']}), "
              f"decode {scores['decode_realtime_factor']}x real time")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
