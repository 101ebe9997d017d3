"""Time a trained voice on this machine as gpu_train.py times it on the GPU: time to first audio and
real-time factor of one stream (medians over the first held-out sentences, one untimed sentence first).

    python recipes/tts/time_voice.py --voice OUT/voice --tokens TOKENS [--device cpu] [--sentences 12]

TOKENS is the tokenized corpus the voice was trained on (its held-out split gives the sentences, read
from their phonemes as gpu_train.py reads them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_train import TIMED_SENTENCES, speak  # noqa: E402  (the recipe's own way of speaking a clip)

from mamba_audio.data.speech_tokens import SpeechTokens  # noqa: E402
from mamba_audio.tts import TextToSpeech  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", required=True, help="a TextToSpeech checkpoint (gpu_train.py's OUT/voice)")
    parser.add_argument("--tokens", required=True, help="the tokenized corpus it was trained on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sentences", type=int, default=TIMED_SENTENCES)
    args = parser.parse_args()
    voice = TextToSpeech.from_pretrained(args.voice, device=args.device, max_streams=1)
    model = voice.model
    heldout = SpeechTokens(args.tokens, model.text, model.config.voices, "heldout").tokens.metadata
    heldout = heldout[:args.sentences]
    for _ in speak(voice, heldout[0]):  # warm-up: first calls allocate and compile
        pass
    first_audio, factors = [], []
    for clip in heldout:
        begun = time.perf_counter()
        stream = speak(voice, clip)
        chunks = [next(stream).audio]
        first_audio.append((time.perf_counter() - begun) * 1000)
        chunks += [chunk.audio for chunk in stream]
        seconds = torch.cat(chunks).numel() / voice.sample_rate
        factors.append((time.perf_counter() - begun) / max(seconds, 1e-6))
    device = (torch.cuda.get_device_name(voice.loop.device) if voice.loop.device.type == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__})")
    print(json.dumps({"device": device, "command": " ".join(["python", *sys.argv]), "sentences": len(heldout),
                      "time_to_first_audio_ms": round(statistics.median(first_audio), 1),
                      "realtime_factor": round(statistics.median(factors), 4)}, indent=2))


if __name__ == "__main__":
    main()
