"""One bounded GPU run: tokenize a sentence corpus with a trained codec, train TTS, speak the held-out sentences.

    python recipes/tts/gpu_train.py --corpus CORPUS --codec CODEC_CHECKPOINT --out $OUT [--config recipes/tts/tts.yaml]

Writes OUT/voice/ (a TextToSpeech checkpoint: tts/ and codec/), OUT/generated/<id>.wav for every held-out
sentence (in the voice that spoke it in the corpus), OUT/metrics.jsonl and OUT/run.json (device, command,
timings: time to first audio and real-time factor on this device). WER is computed afterwards, where
pocketsphinx is installed: `python recipes/tts/evaluate.py --corpus CORPUS --generated OUT/generated`.
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
from mamba_audio.configs import from_dict, load_yaml, to_dict
from mamba_audio.data.sentences import SentenceCorpus
from mamba_audio.data.speech_tokens import SpeechTokens, collate_speech_tokens, tokenize_corpus
from mamba_audio.models.pretrained import load_pretrained
from mamba_audio.models.tts import TTSConfig, TTSModel, TTSTask
from mamba_audio.text import TextTokenizer
from mamba_audio.training import TrainConfig, Trainer, resolve_device
from mamba_audio.tts import TextToSpeech


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--codec", required=True, help="a trained codec checkpoint (mamba-audio train-codec)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(Path(__file__).with_name("tts.yaml")))
    parser.add_argument("--max-seconds", type=float, default=12.0, help="longest training clip kept whole")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out, device = Path(args.out), resolve_device(args.device)
    import mamba_audio.codecs  # noqa: F401  (registers conv_codec)

    codec = load_pretrained(args.codec, device=device).eval()
    corpus = SentenceCorpus(args.corpus, sample_rate=codec.sample_rate)
    started = time.time()
    tokens_path = tokenize_corpus(corpus, codec, out / "tokens.safetensors", progress=False)
    print(f"tokenized {len(corpus)} clips in {time.time() - started:.0f} s", flush=True)

    sections = load_yaml(args.config)
    model_dict = {**sections.get("model", {}), "num_codebooks": codec.num_codebooks,
                  "codebook_size": codec.codebook_size, "frame_rate": codec.frame_rate,
                  "sample_rate": codec.sample_rate, "codec": "conv_codec", "voices": corpus.voices,
                  # phonemes: the inventory of the corpus's phoneme column; chars: the default table
                  "text_symbols": (TextTokenizer.build_symbols(corpus.phonemes_of.values())
                                   if sections.get("model", {}).get("text_front_end", TTSConfig.text_front_end) == "phonemes"
                                   else "")}
    config = from_dict(TTSConfig, model_dict, "model")
    train_config = from_dict(TrainConfig, {**sections.get("train", {}), "device": str(device)}, "train")
    torch.manual_seed(train_config.seed)
    model = TTSModel(config)
    max_frames = int(args.max_seconds * codec.frame_rate)
    train_set = SpeechTokens(args.corpus, tokens_path, model.text, config.voices, "train", max_frames=max_frames)
    trainer = Trainer(model, TTSTask(), train_config, out / "run", progress=False,
                      collate_fn=lambda items: collate_speech_tokens(items, model.pad_text))
    print(f"TTS {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(train_set)} clips", flush=True)
    trainer.fit(train_set)

    tts = TextToSpeech(TTSModel.from_pretrained(out / "run" / "checkpoint", device=device), codec, max_streams=4)
    tts.save_pretrained(out / "voice")
    heldout = SentenceCorpus(args.corpus, split="heldout", sample_rate=codec.sample_rate)
    first_audio, factors = [], []
    for clip_id, text, _ in heldout.entries:
        begun = time.perf_counter()
        stream = tts.start(text, voice=heldout.voice_of[clip_id], seed=0)
        chunks = [next(stream).audio]
        first_audio.append((time.perf_counter() - begun) * 1000)
        chunks += [chunk.audio for chunk in stream]
        audio = torch.cat(chunks)
        factors.append((time.perf_counter() - begun) / max(audio.numel() / tts.sample_rate, 1e-6))
        save_audio(out / "generated" / f"{clip_id}.wav", audio, tts.sample_rate)
    run = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "command": " ".join(sys.argv), "train_steps": trainer.step, "heldout_sentences": len(heldout),
           "time_to_first_audio_ms": statistics.median(first_audio),
           "realtime_factor": statistics.median(factors), "seconds": round(time.time() - started),
           "model_config": to_dict(config)}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps({k: v for k, v in run.items() if k != "model_config"}, indent=2))


if __name__ == "__main__":
    main()
