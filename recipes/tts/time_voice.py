"""Time a trained voice on this machine as gpu_train.py times it on the GPU: time to first audio and
real-time factor of one stream (medians over the first held-out sentences, one untimed sentence first).

    python recipes/tts/time_voice.py --voice OUT/voice --tokens TOKENS [--device cpu] [--sentences 12]

TOKENS is the tokenized corpus the voice was trained on (its held-out split gives the sentences, read
from their symbols as gpu_train.py reads them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_train import TIMED_SENTENCES, latency_figures, speak, speak_timed  # noqa: E402  (timed as there)

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
    timed = [speak_timed(voice, clip)[1:] for clip in heldout]
    device = (torch.cuda.get_device_name(voice.loop.device) if voice.loop.device.type == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__})")
    print(json.dumps({"device": device, "command": " ".join(["python", *sys.argv]), "sentences": len(heldout),
                      **latency_figures(*map(list, zip(*timed)))}, indent=2))


if __name__ == "__main__":
    main()
