"""The Gradio demo: its handlers on tiny models, bad inputs, and the page driven through gradio_client."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import gradio_client  # noqa: E402

from mamba_audio.models import ClassifierConfig, LMConfig, SaShiMiClassifier, SaShiMiLM, backbone_preset  # noqa: E402

SAMPLE_RATE = 8000
CLASSES = ["low", "high"]


@pytest.fixture(scope="module")
def app():
    path = Path(__file__).resolve().parents[1] / "demo" / "app.py"
    spec = importlib.util.spec_from_file_location("demo_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    lm = SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", n_layers=1), sample_rate=SAMPLE_RATE,
                            num_classes=2, class_names=CLASSES))
    clf = SaShiMiClassifier(ClassifierConfig(backbone=backbone_preset("tiny", n_layers=1, bidirectional=True),
                                             sample_rate=SAMPLE_RATE, num_classes=2, class_names=CLASSES))
    return [str(lm.save_pretrained(root / "lm")), str(clf.save_pretrained(root / "clf"))]


@pytest.fixture
def tone(tmp_path):
    path = tmp_path / "tone.wav"
    t = np.arange(SAMPLE_RATE // 4) / SAMPLE_RATE
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), SAMPLE_RATE)
    return str(path)


def test_models_are_sorted_by_kind(app, checkpoints):
    models = app.load_models(checkpoints)
    assert list(models["generator"]) == [checkpoints[0]]
    assert list(models["classifier"]) == [checkpoints[1]]


def test_generate_gives_audio_of_the_asked_length_and_a_picture(app, checkpoints, tone):
    lm = app.load_models(checkpoints)["generator"][checkpoints[0]]
    *streamed, (_, (rate, audio), picture) = app.generate(lm, 0.05, "high", None, 1.0, 0.9, 3)
    assert rate == SAMPLE_RATE and audio.dtype == np.int16 and audio.shape == (400,)
    assert len(streamed) >= 2  # 20 ms chunks as they are made, then the whole clip
    np.testing.assert_array_equal(np.concatenate([chunk for (_, chunk), _, _ in streamed]), audio)
    assert picture.shape == (2 * app.PICTURE_HEIGHT, app.PICTURE_WIDTH, 3) and picture.dtype == np.uint8
    again = list(app.generate(lm, 0.05, "high", None, 1.0, 0.9, 3))[-1][1][1]
    np.testing.assert_array_equal(audio, again)  # seeded
    continued = list(app.generate(lm, 0.05, "low", tone, 1.0, 1.0, 0))[-1][1][1]
    assert continued.shape == (SAMPLE_RATE // 4 + 400,)  # the prompt, then the continuation


def test_classify_gives_probabilities_per_class(app, checkpoints, tone):
    clf = app.load_models(checkpoints)["classifier"][checkpoints[1]]
    labels, picture = app.classify(clf, tone)
    assert set(labels) == set(CLASSES) and abs(sum(labels.values()) - 1) < 1e-5
    assert picture.shape[-1] == 3


def test_bad_inputs_get_clear_messages(app, checkpoints, tmp_path):
    models = app.load_models(checkpoints)
    lm, clf = models["generator"][checkpoints[0]], models["classifier"][checkpoints[1]]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF but not really a wav file")
    with pytest.raises(gr.Error, match="upload or record"):
        app.classify(clf, None)
    with pytest.raises(gr.Error, match="corrupt.wav"):
        app.classify(clf, str(corrupt))
    with pytest.raises(gr.Error, match="class-conditional"):
        next(app.generate(lm, 0.1, "unknown", None, 1.0, 1.0, 0))
    with pytest.raises(gr.Error, match="seconds"):
        next(app.generate(lm, 60.0, "low", None, 1.0, 1.0, 0))
    with pytest.raises(gr.Error, match="corrupt.wav"):
        next(app.generate(lm, 0.1, "low", str(corrupt), 1.0, 1.0, 0))


def test_main_without_checkpoints_speaks_with_the_packaged_voice_or_says_what_to_do(app, tmp_path, monkeypatch,
                                                                                   capsys):
    """No checkpoints of `make run`: the demo still starts, with the default voice the package ships (its
    Speak tab); without that voice too it says what to do."""
    monkeypatch.chdir(tmp_path)
    launched = []

    class Page:
        def __init__(self, models):
            self.models = models

        def launch(self, **options):
            launched.append((self.models, options))

    monkeypatch.setattr(app, "build_demo", Page)
    assert app.main(["--port", "7999"]) == 0
    (models, options), = launched
    assert list(models["speech"]) == ["default voice"] and not models["generator"] and not models["classifier"]
    assert options["server_port"] == 7999
    monkeypatch.setattr("mamba_audio.tts.DEFAULT_CHECKPOINT", tmp_path / "no_voice")
    assert app.main([]) == 2
    err = capsys.readouterr().err
    assert "make run" in err and "Speak tab without a voice" in err


def test_page_answers_gradio_client(app, checkpoints, tone):
    demo = app.build_demo(app.load_models(checkpoints))
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        _, audio_path, _ = client.predict(checkpoints[0], 0.1, "low", None, 1.0, 1.0, 0, api_name="/generate")
        samples, rate = sf.read(audio_path)
        assert rate == SAMPLE_RATE and len(samples) == 800
        labels, _ = client.predict(checkpoints[1], gradio_client.handle_file(tone), api_name="/classify")
        assert {c["label"] for c in labels["confidences"]} == set(CLASSES)
    finally:
        demo.close()


def test_speak_streams_chunks_then_the_whole_utterance(app):
    from tiny_voice import VOICES, tiny_voice

    voice = tiny_voice(seconds=0.1)
    outputs = list(app.speak(voice, "the red fox.", VOICES[0], 1.0, 2))
    streamed = [out[0] for out in outputs[:-1]]
    assert len(streamed) >= 2 and all(rate == voice.sample_rate for rate, _ in streamed)
    _, (rate, whole), picture = outputs[-1]
    np.testing.assert_array_equal(np.concatenate([chunk for _, chunk in streamed]), whole)
    assert whole.dtype == np.int16 and whole.shape == (1600,) and picture.shape[-1] == 3
    with pytest.raises(gr.Error, match="unknown voice"):
        next(app.speak(voice, "hi", "nobody", 1.0, 0))
    with pytest.raises(gr.Error, match="empty"):
        next(app.speak(voice, "", None, 1.0, 0))
