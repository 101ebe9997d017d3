"""Choose a voice's sampling on held-out sentences it is not scored on: pocketsphinx WER per setting.

    python recipes/tts/sampling_sweep.py --voice OUT/voice --tokens TOKENS --corpus CORPUS \
        --temperatures 0.05,0.15,0.3,0.5 [--cfg-scales 1,2,3] [--first 120 --sentences 160] [--out sweep.json]

The sentences are the held-out clips ``first`` .. ``first + sentences`` of TOKENS (gpu_train.py and
evaluate.py score the first 120, so the default starts after them: the setting is not chosen on the
sentences it is then reported on). Each setting speaks them all through one batched loop (seed 0, as
gpu_train.py), from the corpus's symbols; the recordings of the same sentences are scored beside them.
With --cfg-scales every temperature is tried at each classifier-free guidance scale (a voice trained with
``cfg_text_dropout``); without it, at the voice's own.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_train import speak  # noqa: E402  (the sentences spoken as there)

from mamba_audio.data.sentences import SentenceCorpus  # noqa: E402
from mamba_audio.data.speech_tokens import SpeechTokens, clip_id  # noqa: E402
from mamba_audio.intelligibility import Transcriber  # noqa: E402
from mamba_audio.metrics import word_error_rate  # noqa: E402
from mamba_audio.tts import TextToSpeech  # noqa: E402

BLOCK_STEPS = 48  # long blocks: many sentences at once, few decoder calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", required=True, help="a TextToSpeech checkpoint")
    parser.add_argument("--tokens", required=True, help="the tokenized corpus it was trained on")
    parser.add_argument("--corpus", required=True, help="that corpus (its recordings are scored too)")
    parser.add_argument("--temperatures", default="0.05,0.15,0.3,0.5,1.0")
    parser.add_argument("--cfg-scales", help="comma-separated classifier-free guidance scales (default: the voice's)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--first", type=int, default=120)
    parser.add_argument("--sentences", type=int, default=160)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    scales = [float(s) for s in args.cfg_scales.split(",")] if args.cfg_scales else [None]
    loaded = TextToSpeech.from_pretrained(args.voice, device=args.device, max_streams=1)
    clips = SpeechTokens(args.tokens, loaded.model.text, loaded.model.config.voices, "heldout").tokens.metadata
    clips = clips[args.first:args.first + args.sentences]
    if not clips:
        raise SystemExit(f"{args.tokens} has no held-out clips from {args.first}")
    corpus = SentenceCorpus(args.corpus, split="heldout")
    index = {entry[0]: i for i, entry in enumerate(corpus.entries)}
    references = [corpus.entries[index[clip_id(clip)]][1] for clip in clips]
    transcribe = Transcriber()
    rows = {"recordings": word_error_rate(references, [
        transcribe(corpus[index[clip_id(clip)]]["audio"], corpus.sample_rate) for clip in clips])}
    for temperature, scale in [(t, s) for t in temperatures for s in scales]:  # the loaded weights, a loop each
        voice = TextToSpeech(loaded.model, loaded.codec, max_streams=32, block_steps=BLOCK_STEPS,
                             temperature=temperature, top_p=args.top_p, cfg_scale=scale)
        setting = f"temperature {temperature}" + ("" if scale is None else f", cfg {scale}")
        began, heard = time.perf_counter(), []
        for start in range(0, len(clips), voice.loop.max_streams):  # together: iterating one advances them all
            streams = [speak(voice, clip) for clip in clips[start:start + voice.loop.max_streams]]
            heard += [transcribe(torch.cat([c.audio for c in stream]), voice.sample_rate) for stream in streams]
        rows[setting] = word_error_rate(references, heard)
        print(f"{setting}: WER {rows[setting]:.4f} ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    result = {"command": " ".join(["python", *sys.argv]), "device": args.device,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "sentences": len(clips), "first": args.first, "top_p": args.top_p,
              "wer": {key: round(value, 4) for key, value in rows.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
