"""One bounded GPU run: train TTS on a tokenized corpus, ship the voice in float16, speak the held-out sentences.

    python recipes/tts/gpu_train.py --tokens TOKENS --out $OUT [--config recipes/tts/tts_default_voice.yaml]
    python recipes/tts/gpu_train.py --corpus CORPUS --codec CODEC_CHECKPOINT --out $OUT   # tokenizes first

TOKENS is a folder `mamba-audio tokenize` wrote (its codec inside), so a run carries a few MB of tokens
instead of the corpus's audio; with --corpus the script runs `mamba-audio tokenize` itself. Training is
`mamba-audio train --task tts` into WORK (default OUT/work). OUT then gets what the device machine
hands back (at most 8 files, 2 folders deep):

    OUT/voice/tts/, OUT/voice/codec/   the trained voice, weights stored in --dtype (float16: half the size),
                                       loaded back as float32 on this device and on the CPU before it is used
    OUT/generated.tar                  <id>.wav: the first --heldout held-out sentences spoken by OUT/voice
    OUT/metrics.jsonl                  the training curve
    OUT/run.json                       device, command, steps, held-out NLL of the trained and shipped weights
                                       (and of the trained ones given other clips' text: the rise is how
                                       much the model reads its text),
                                       time to first audio and real-time factor of one stream, sizes

A run longer than one call (a device's time limit per command): `--stop-after-minutes M` pauses training
after M minutes with its state in WORK and exits (nothing spoken, nothing else written); the same command
with `--resume` and the same --work goes on where it stopped, on the same cosine schedule (train.max_minutes
is the whole run's training time), and does the rest when training ends.

A "phonemes" or "flite" model speaks the held-out sentences from the corpus's symbols (its phonemes
column, or the phones of its alignments), so neither espeak-ng nor flite is needed here. WER is
computed afterwards, where pocketsphinx is installed:
`python recipes/tts/evaluate.py --corpus CORPUS --generated OUT/generated.tar --run OUT/run.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mamba_audio.audio import save_audio
from mamba_audio.cli import main as mamba_audio
from mamba_audio.configs import to_dict
from mamba_audio.data.speech_tokens import SpeechTokens, clip_voice, collate_speech_tokens
from mamba_audio.training import TTSTask, resolve_device
from mamba_audio.tts import SpeechStream, TextToSpeech

TIMED_SENTENCES = 12  # spoken one at a time for the latency figures; the rest share the step loop
BULK_BLOCK_STEPS = 48  # codec steps per block for the rest (about 1 s at 50 frames/s)
DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run(*argv: str) -> None:
    if mamba_audio(list(argv)) != 0:
        sys.exit(f"mamba-audio {argv[1]} failed")


class OtherText(torch.utils.data.Dataset):
    """The clips of ``data`` (the first ``count``), each with the next one's text (the last with the first's)
    and, for a duration-guided model, that text's durations as they were timed there."""

    def __init__(self, data, count: int):
        self.data, self.count = data, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"clip {index} of {self.count}")
        other = self.data[(index + 1) % self.count]
        return {**self.data[index], **{key: other[key] for key in ("text", "durations") if key in other}}


@torch.no_grad()
def heldout_nll(voice: TextToSpeech, tokens: Path, max_clips: int = 64, other_text: bool = False) -> float:
    """Codec-token NLL (bits per token) of the first ``max_clips`` held-out clips, teacher-forced; with
    ``other_text`` each clip is given another clip's text, so the rise over the true text's NLL is how
    much the model reads its text (about nothing for a model that ignores it)."""
    model = voice.model.eval()
    data = SpeechTokens(tokens, model.text, model.config.voices, "heldout")
    count = min(max_clips, len(data))
    clips = OtherText(data, count) if other_text else torch.utils.data.Subset(data, range(count))
    task, sums = TTSTask(), {}
    batches = DataLoader(clips, batch_size=16,
                         collate_fn=functools.partial(collate_speech_tokens, pad_text=model.pad_text))
    device = next(model.parameters()).device
    for batch in batches:
        batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        for key, value in task.eval_sums(model, batch).items():
            sums[key] = sums.get(key, 0) + value
    return round(task.finalize(sums)["nll_bits"], 4)


def speak(voice: TextToSpeech, clip: dict) -> SpeechStream:
    """A stream of ``clip``'s sentence in its corpus voice (from the corpus's symbols for a "phonemes" or
    "flite" model, so the GPU machine needs neither espeak-ng nor flite)."""
    column = {"phonemes": "phonemes", "flite": "flite_phones"}.get(voice.model.config.text_front_end)
    return voice.start(clip[column] if column else clip["transcript"], voice=clip_voice(clip), seed=0,
                       symbols=column is not None)


def speak_timed(voice: TextToSpeech, clip: dict) -> tuple[torch.Tensor, float, float]:
    """``clip``'s sentence spoken alone -> (audio, time to first audio in ms, real-time factor)."""
    begun = time.perf_counter()
    stream = speak(voice, clip)
    chunks = [next(stream).audio]
    first_audio_ms = (time.perf_counter() - begun) * 1000
    chunks += [chunk.audio for chunk in stream]
    audio = torch.cat(chunks)
    return audio, first_audio_ms, (time.perf_counter() - begun) / max(audio.numel() / voice.sample_rate, 1e-6)


def latency_figures(first_audio_ms: list[float], factors: list[float]) -> dict:
    """The medians of ``speak_timed``'s figures, as run.json and time_voice.py report them."""
    return {"time_to_first_audio_ms": round(statistics.median(first_audio_ms), 1),
            "realtime_factor": round(statistics.median(factors), 4)}


def speak_heldout(voice: TextToSpeech, bulk: TextToSpeech, heldout: list[dict], folder: Path) -> dict:
    """Write folder/<id>.wav for every clip of ``heldout``: the first TIMED_SENTENCES one stream at a time
    through ``voice`` (the latency figures), the rest many at a time through ``bulk`` (the same weights,
    longer blocks: fewer codec calls)."""
    first_audio, factors = [], []
    for clip in heldout[:TIMED_SENTENCES]:
        audio, first_ms, factor = speak_timed(voice, clip)
        first_audio.append(first_ms)
        factors.append(factor)
        save_audio(folder / f"{clip['id']}.wav", audio, voice.sample_rate)
    rest = heldout[TIMED_SENTENCES:]
    for start in range(0, len(rest), bulk.loop.max_streams):  # together: iterating one advances them all
        group = rest[start:start + bulk.loop.max_streams]
        streams = [speak(bulk, clip) for clip in group]
        for clip, stream in zip(group, streams):
            save_audio(folder / f"{clip['id']}.wav", torch.cat([c.audio for c in stream]), bulk.sample_rate)
    return latency_figures(first_audio, factors)


def main() -> None:
    parser = argparse.ArgumentParser()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", help="a folder `mamba-audio tokenize` wrote (splits train and heldout)")
    source.add_argument("--corpus", help="a sentence corpus, tokenized here with --codec")
    parser.add_argument("--codec", help="with --corpus: a trained codec checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", help="training output (checkpoint, trainer state); default OUT/work")
    parser.add_argument("--config", default=str(Path(__file__).with_name("tts_default_voice.yaml")))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--max-seconds", type=float, default=12.0, help="crop longer training clips to this length")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="how OUT/voice stores weights")
    parser.add_argument("--heldout", type=int, default=120, help="speak the first N held-out sentences")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stop-after-minutes", type=float, help="pause training after this long (see above)")
    parser.add_argument("--resume", action="store_true", help="go on with the paused run in --work")
    args = parser.parse_args()
    if args.corpus and not args.codec:
        parser.error("--corpus needs --codec")
    out, device = Path(args.out), resolve_device(args.device)
    work = Path(args.work) if args.work else out / "work"
    started = time.time()
    tokens = Path(args.tokens) if args.tokens else work / "tokens"
    if args.corpus and not (args.resume and (tokens / "manifest.json").is_file()):
        run("--quiet", "tokenize", "--codec", args.codec, "--data", args.corpus, "--out", str(tokens),
            "--device", str(device))
        print(f"tokenized in {time.time() - started:.0f} s", flush=True)
    overrides = [flag for pair in args.set for flag in ("--set", pair)]
    if args.resume:
        overrides.append("--resume")
    if args.stop_after_minutes is not None:
        overrides += ["--stop-after-minutes", str(args.stop_after_minutes)]
    shutil.rmtree(work / "voice", ignore_errors=True)  # written when training ends, not at a pause
    run("--quiet", "train", "--task", "tts", "--data", str(tokens), "--out", str(work), "--config", args.config,
        "--segment-seconds", str(args.max_seconds), "--device", str(device), *overrides)
    trained_seconds = time.time() - started
    if not (work / "voice").is_dir():
        print(f"training paused: the same command with --resume (and --work {work}) goes on")
        return

    # the voice as it ships: stored in --dtype, loaded back as float32, here and on the CPU
    trained = TextToSpeech.from_pretrained(work / "voice", device=device, max_streams=1)
    if (out / "voice").exists():
        shutil.rmtree(out / "voice")
    trained.save_pretrained(out / "voice", dtype=DTYPES[args.dtype])
    voice = TextToSpeech.from_pretrained(out / "voice", device=device, max_streams=1)
    on_cpu = TextToSpeech.from_pretrained(out / "voice", device="cpu", max_streams=1)
    loaded_dtypes = {str(p.dtype) for v in (voice, on_cpu) for p in v.model.parameters() if p.is_floating_point()}
    if loaded_dtypes != {"torch.float32"}:
        sys.exit(f"the shipped voice loaded as {loaded_dtypes}, not float32")

    heldout = SpeechTokens(tokens, voice.model.text, voice.model.config.voices, "heldout").tokens.metadata
    heldout = heldout[:args.heldout]
    generated = work / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    period = voice.model.config.backbone.total_pool
    bulk = TextToSpeech.from_pretrained(out / "voice", device=device, max_streams=32,
                                        block_steps=period * max(1, BULK_BLOCK_STEPS // period))
    timings = speak_heldout(voice, bulk, heldout, generated)
    with tarfile.open(out / "generated.tar", "w") as archive:
        for wav in sorted(generated.glob("*.wav")):
            archive.add(wav, arcname=wav.name)
    shutil.copy(work / "metrics.jsonl", out / "metrics.jsonl")

    checkpoint = json.loads((work / "checkpoint" / "config.json").read_text())
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "command": " ".join(["python", *sys.argv]), "train_steps": checkpoint["step"],
              "train_and_startup_seconds": round(trained_seconds),  # this call's (the last one, with --resume)
              "train_seconds_all_calls": round(json.loads((work / "trainer_state" / "state.json").read_text())
                                               ["train_seconds"]), "heldout_sentences_spoken": len(heldout),
              "heldout_nll_bits": {"trained_float32": heldout_nll(trained, tokens),
                                   f"shipped_{args.dtype}": heldout_nll(voice, tokens),
                                   "trained_float32_other_text": heldout_nll(trained, tokens, other_text=True)},
              **timings, "shipped_dtype": args.dtype,
              "shipped_megabytes": round(sum(f.stat().st_size for f in (out / "voice").rglob("*")) / 2**20, 2),
              "parameters_millions": round(sum(p.numel() for p in voice.model.parameters()) / 1e6, 3),
              "codec": voice.model.config.codec, "seconds": round(time.time() - started),
              "model_config": to_dict(voice.model.config)}
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "model_config"}, indent=2))


if __name__ == "__main__":
    main()
