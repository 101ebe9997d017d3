"""Gradio demo: speak text with a TTS voice, generate audio with a SaShiMi-Mamba generator, classify audio.

    python demo/app.py --model runs/spoken_digits/lm/checkpoint --model runs/spoken_digits/classifier/checkpoint

Each ``--model`` is a checkpoint directory written by ``mamba-audio train``; generators appear in
the Generate tab and classifiers in the Classify tab, each with a model picker. Without ``--model``
the demo looks for the checkpoints that ``make run`` and ``recipes/spoken_digits/run.sh`` write.
The Speak tab streams speech from ``--voice DIR`` or, by default, the voice packaged with the library.
The demo calls only the public API of ``mamba_audio`` and runs on the CPU when no GPU is present.
"""

from __future__ import annotations

import argparse
import functools
import sys

import gradio as gr
import numpy as np
import torch

import mamba_audio

MAX_GENERATE_SECONDS = 10.0
MAX_UPLOAD_SECONDS = 60.0
PICTURE_HEIGHT = 96  # pixels of each of the two strips (waveform above, spectrogram below)
PICTURE_WIDTH = 640


def load_models(paths: list[str], device: str = "cpu", voice: str | None = None,
                default_voice: bool = False) -> dict[str, dict]:
    """Models by kind: {"generator": {name: model}, "classifier": {...}, "speech": {name: TextToSpeech}}.
    The voice is ``voice`` (a TTS checkpoint directory) or, with ``default_voice``, the packaged one when
    it has trained weights."""
    models: dict[str, dict] = {"generator": {}, "classifier": {}, "speech": {}}
    for path in paths:
        model = mamba_audio.load_pretrained(path, device=device).eval()
        kind = "classifier" if isinstance(model, mamba_audio.SaShiMiClassifier) else "generator"
        models[kind][str(path)] = model
    if voice is not None:
        models["speech"][str(voice)] = mamba_audio.TextToSpeech.from_pretrained(voice, device=device)
    elif default_voice:
        try:
            models["speech"]["default voice"] = mamba_audio.TextToSpeech.from_pretrained(None, device=device)
        except mamba_audio.CheckpointError as err:
            print(f"demo: Speak tab without a voice: {err}", file=sys.stderr)
    return models


# -- pictures --------------------------------------------------------------------------------------
def _waveform_strip(audio: np.ndarray) -> np.ndarray:
    """(PICTURE_HEIGHT, PICTURE_WIDTH) in [0, 1]: the min-max envelope of ``audio`` per pixel column."""
    strip = np.zeros((PICTURE_HEIGHT, PICTURE_WIDTH))
    if audio.size == 0:
        return strip
    columns = np.array_split(audio, min(PICTURE_WIDTH, audio.size))
    half = PICTURE_HEIGHT / 2
    for x, column in enumerate(columns):
        top = int(np.clip(half - column.max() * (half - 1), 0, PICTURE_HEIGHT - 1))
        bottom = int(np.clip(half - column.min() * (half - 1), 0, PICTURE_HEIGHT - 1))
        strip[top:bottom + 1, x * PICTURE_WIDTH // len(columns):(x + 1) * PICTURE_WIDTH // len(columns)] = 1.0
    return strip


def _spectrogram_strip(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(PICTURE_HEIGHT, PICTURE_WIDTH) in [0, 1]: log-magnitude STFT, low frequencies at the bottom, 80 dB range."""
    n_fft = 256 if sample_rate <= 16000 else 512
    signal = torch.as_tensor(audio, dtype=torch.float32)
    if signal.numel() < n_fft:
        signal = torch.nn.functional.pad(signal, (0, n_fft - signal.numel()))
    spec = torch.stft(signal, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    db = 20 * torch.log10(spec.abs().clamp_min(1e-5))
    db = ((db - db.max() + 80) / 80).clamp(0, 1)
    picture = torch.nn.functional.interpolate(db.flip(0)[None, None], size=(PICTURE_HEIGHT, PICTURE_WIDTH),
                                              mode="bilinear", align_corners=False)
    return picture[0, 0].numpy()


def audio_picture(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """An RGB uint8 picture of ``audio`` (L,) in [-1, 1]: waveform above, spectrogram below."""
    wave = _waveform_strip(audio)
    spec = _spectrogram_strip(audio, sample_rate)
    # waveform in blue on white; spectrogram from dark blue (quiet) through orange to yellow (loud)
    wave_rgb = np.stack([1 - 0.8 * wave, 1 - 0.5 * wave, np.ones_like(wave)], axis=-1)
    spec_rgb = np.stack([np.clip(1.6 * spec - 0.2, 0, 1), np.clip(1.4 * spec - 0.5, 0, 1),
                         np.clip(0.35 + 0.3 * spec - 0.6 * spec**2, 0, 1)], axis=-1)
    return (np.concatenate([wave_rgb, spec_rgb], axis=0) * 255).astype(np.uint8)


# -- handlers --------------------------------------------------------------------------------------
def _int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def speak(tts, text: str, voice: str | None, speed: float, seed: int):
    """Yields (streamed chunk, whole utterance, picture): each chunk as the voice makes it, then the whole
    utterance and its picture."""
    try:
        stream = tts.start(text, voice=voice or None, speed=float(speed), seed=int(seed))
    except ValueError as err:
        raise gr.Error(str(err)) from err
    pieces = []
    try:
        for chunk in stream:
            pieces.append(chunk.audio.numpy())
            yield (tts.sample_rate, _int16(pieces[-1])), gr.skip(), gr.skip()
    finally:
        stream.stop()  # frees the voice's slot if the page went away mid-utterance
    whole = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    yield gr.skip(), (tts.sample_rate, _int16(whole)), audio_picture(whole, tts.sample_rate)


@functools.lru_cache(maxsize=None)
def _streamer(model: mamba_audio.SaShiMiLM) -> mamba_audio.StreamingGenerator:
    """One streaming loop per generator; Gradio runs one Generate at a time, so one slot is enough."""
    return mamba_audio.StreamingGenerator(model, max_streams=1)


def generate(model: mamba_audio.SaShiMiLM, seconds: float, class_name: str | None, prompt_path: str | None,
             temperature: float, top_p: float, seed: int):
    """Yields (streamed chunk, whole clip, picture): each chunk as the model makes it, then the whole clip
    (after the prompt when one is given) and its picture."""
    config = model.config
    if not 0 < seconds <= MAX_GENERATE_SECONDS:
        raise gr.Error(f"length must be between 0 and {MAX_GENERATE_SECONDS:g} seconds, got {seconds:g}")
    if config.num_classes and class_name not in config.class_names:
        raise gr.Error(f"this model is class-conditional: choose a class from {config.class_names}")
    prompt = None
    if prompt_path:
        try:
            prompt = mamba_audio.load_audio(prompt_path, config.sample_rate, mix_to_mono=True,
                                            max_seconds=MAX_UPLOAD_SECONDS)
        except mamba_audio.AudioError as err:
            raise gr.Error(str(err)) from err
    stream = _streamer(model).start(prompt=prompt, label=class_name if config.num_classes else None,
                                    max_samples=int(seconds * config.sample_rate), temperature=temperature,
                                    top_p=top_p if top_p < 1 else None, seed=int(seed))
    pieces = [] if prompt is None else [model.tokenizer.decode(model.tokenizer.encode(prompt)).numpy()]
    try:
        for chunk in stream:
            pieces.append(chunk.audio.clamp(-1, 1).numpy())
            yield (config.sample_rate, _int16(pieces[-1])), gr.skip(), gr.skip()
    finally:
        stream.stop()  # frees the slot if the page went away mid-clip
    audio = np.concatenate(pieces)
    yield gr.skip(), (config.sample_rate, _int16(audio)), audio_picture(audio, config.sample_rate)


def classify(model: mamba_audio.SaShiMiClassifier, audio_path: str | None):
    """({class name: probability}, picture) for one uploaded or recorded file."""
    if not audio_path:
        raise gr.Error("upload or record some audio first")
    try:
        wav = mamba_audio.load_audio(audio_path, model.config.sample_rate, mix_to_mono=True,
                                     max_seconds=MAX_UPLOAD_SECONDS)
    except mamba_audio.AudioError as err:
        raise gr.Error(str(err)) from err
    device = next(model.parameters()).device
    with torch.no_grad():
        probs = model(model.tokenizer.encode(wav)[None].to(device)).softmax(-1)[0].cpu()
    labels = {name: float(p) for name, p in zip(model.class_names, probs)}
    return labels, audio_picture(wav.numpy(), model.config.sample_rate)


# -- the page --------------------------------------------------------------------------------------
def build_demo(models: dict[str, dict]) -> gr.Blocks:
    generators, classifiers, voices = models["generator"], models["classifier"], models.get("speech", {})
    with gr.Blocks(title="mamba-audio") as demo:
        gr.Markdown("# mamba-audio\nSaShiMi-Mamba: selective state-space models on raw 8-bit mu-law audio.")
        with gr.Tab("Speak"):
            if not voices:
                gr.Markdown("No voice loaded: pass a text-to-speech checkpoint with `--voice`.")
            else:
                first_voice = next(iter(voices.values()))
                picker_s = gr.Dropdown(list(voices), value=next(iter(voices)), label="model")
                text = gr.Textbox(value="the quick brown fox jumps over the lazy dog.", label="text",
                                  max_length=first_voice.max_text_chars)
                with gr.Row():
                    speaker = gr.Dropdown(first_voice.voices, value=first_voice.voices[0], label="voice")
                    speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="speed")
                    seed_s = gr.Number(value=0, precision=0, label="seed")
                button_s = gr.Button("Speak", variant="primary")
                stream_out = gr.Audio(label="speech (streamed as it is made)", streaming=True, autoplay=True,
                                      interactive=False, elem_id="speech-stream")
                whole_out = gr.Audio(label="the whole utterance", interactive=False, elem_id="speech-whole")
                picture_s = gr.Image(label="waveform and spectrogram", interactive=False)

                def on_pick_voice(name):
                    names = voices[name].voices
                    return gr.update(choices=names, value=names[0])

                picker_s.change(on_pick_voice, picker_s, speaker)
                button_s.click(lambda name, *rest: (yield from speak(voices[name], *rest)),
                               [picker_s, text, speaker, speed, seed_s], [stream_out, whole_out, picture_s],
                               api_name="speak")
        with gr.Tab("Generate"):
            if not generators:
                gr.Markdown("No generator loaded: pass a generator checkpoint with `--model`.")
            else:
                first = next(iter(generators.values()))
                picker = gr.Dropdown(list(generators), value=next(iter(generators)), label="model")
                class_name = gr.Dropdown(first.config.class_names or [], label="class",
                                         value=(first.config.class_names or [None])[0],
                                         visible=bool(first.config.num_classes))
                with gr.Row():
                    seconds = gr.Slider(0.1, MAX_GENERATE_SECONDS, value=0.5, step=0.1, label="seconds")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p (1 = off)")
                    seed = gr.Number(value=0, precision=0, label="seed")
                prompt = gr.Audio(sources=["upload", "microphone"], type="filepath", label="prompt to continue")
                button = gr.Button("Generate", variant="primary")
                stream_g = gr.Audio(label="generated (streamed as it is made)", streaming=True, autoplay=True,
                                    interactive=False, elem_id="generated-stream")
                audio_out = gr.Audio(label="the whole clip", interactive=False, elem_id="generated")
                picture = gr.Image(label="waveform and spectrogram", interactive=False)

                def on_pick(name):
                    config = generators[name].config
                    names = config.class_names or []
                    return gr.update(choices=names, value=names[0] if names else None, visible=bool(names))

                picker.change(on_pick, picker, class_name)
                button.click(lambda name, *rest: (yield from generate(generators[name], *rest)),
                             [picker, seconds, class_name, prompt, temperature, top_p, seed],
                             [stream_g, audio_out, picture], api_name="generate")
        with gr.Tab("Classify"):
            if not classifiers:
                gr.Markdown("No classifier loaded: pass a classifier checkpoint with `--model`.")
            else:
                picker_c = gr.Dropdown(list(classifiers), value=next(iter(classifiers)), label="model")
                audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio")
                button_c = gr.Button("Classify", variant="primary")
                label_out = gr.Label(num_top_classes=5, label="class probabilities")
                picture_c = gr.Image(label="waveform and spectrogram", interactive=False)
                button_c.click(lambda name, path: classify(classifiers[name], path), [picker_c, audio_in],
                               [label_out, picture_c], api_name="classify")
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint directory (repeatable)")
    parser.add_argument("--voice", help="text-to-speech checkpoint directory (default: the packaged voice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    paths = args.model or mamba_audio.default_checkpoints()
    try:
        models = load_models(paths, args.device, voice=args.voice, default_voice=True)
    except mamba_audio.CheckpointError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    if not any(models.values()):
        print("demo: no checkpoints given and none of the default ones (what `make run` and the spoken_digits "
              "recipe write) exist, and no voice; run `make run` first or pass --model DIR", file=sys.stderr)
        return 2
    build_demo(models).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
