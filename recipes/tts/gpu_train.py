"""One bounded GPU run: tokenize a sentence corpus with a trained codec, train TTS, speak the held-out sentences.

    python recipes/tts/gpu_train.py --corpus CORPUS --codec CODEC_CHECKPOINT --out $OUT [--config recipes/tts/tts.yaml]

The first two steps are the library's commands (`mamba-audio tokenize`, then `mamba-audio train --task tts`
on the tokenized corpus); this script adds the timings of speaking. Writes OUT/tokens/ (the tokenized
corpus), OUT/checkpoint/ and OUT/metrics.jsonl (the training run), OUT/voice/ (a TextToSpeech checkpoint:
tts/ and codec/), OUT/generated/<id>.wav for every held-out sentence (in the voice that spoke it in the
corpus) and OUT/run.json (device, command, timings: time to first audio and real-time factor on this
device). WER is computed afterwards, where pocketsphinx is installed:
`python recipes/tts/evaluate.py --corpus CORPUS --generated OUT/generated`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mamba_audio.audio import save_audio
from mamba_audio.cli import main as mamba_audio
from mamba_audio.configs import to_dict
from mamba_audio.data.tokenized import TokenizedDataset
from mamba_audio.training import resolve_device
from mamba_audio.tts import TextToSpeech


def run(*argv: str) -> None:
    if mamba_audio(list(argv)) != 0:
        sys.exit(f"mamba-audio {argv[1]} failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--codec", required=True, help="a trained codec checkpoint (mamba-audio train-codec)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(Path(__file__).with_name("tts.yaml")))
    parser.add_argument("--max-seconds", type=float, default=12.0, help="crop longer training clips to this length")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out, device = Path(args.out), resolve_device(args.device)
    started = time.time()
    run("--quiet", "tokenize", "--codec", args.codec, "--data", args.corpus, "--out", str(out / "tokens"),
        "--device", str(device))
    print(f"tokenized in {time.time() - started:.0f} s", flush=True)
    run("--quiet", "train", "--task", "tts", "--data", str(out / "tokens"), "--out", str(out), "--config",
        args.config, "--segment-seconds", str(args.max_seconds), "--device", str(device))

    tts = TextToSpeech.from_pretrained(out / "voice", device=device, max_streams=4)
    heldout = TokenizedDataset(out / "tokens", "heldout").metadata
    first_audio, factors = [], []
    for clip in heldout:
        begun = time.perf_counter()
        stream = tts.start(clip["transcript"], voice=clip["voice"], seed=0)
        chunks = [next(stream).audio]
        first_audio.append((time.perf_counter() - begun) * 1000)
        chunks += [chunk.audio for chunk in stream]
        audio = torch.cat(chunks)
        factors.append((time.perf_counter() - begun) / max(audio.numel() / tts.sample_rate, 1e-6))
        save_audio(out / "generated" / f"{clip['id']}.wav", audio, tts.sample_rate)
    trained = json.loads((out / "checkpoint" / "config.json").read_text())
    run_record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "command": " ".join(sys.argv), "train_steps": trained["step"], "heldout_sentences": len(heldout),
                  "time_to_first_audio_ms": statistics.median(first_audio),
                  "realtime_factor": statistics.median(factors), "seconds": round(time.time() - started),
                  "model_config": to_dict(tts.model.config)}
    (out / "run.json").write_text(json.dumps(run_record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in run_record.items() if k != "model_config"}, indent=2))


if __name__ == "__main__":
    main()
