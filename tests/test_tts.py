"""Text-to-speech: text front end, sentence corpus, TTS model (prefill-then-step, training, checkpoints), API."""

from __future__ import annotations

import pytest
import torch

from mamba_audio.tts import TextToSpeech
from mamba_audio.codecs.learned import ConvCodec, ConvCodecConfig
from mamba_audio.data.sentences import SentenceCorpus, build_sentence_corpus, make_sentences
from mamba_audio.data.datasets import LJSpeech
from mamba_audio.data.speech_tokens import SpeechTokens, collate_speech_tokens, tokenize_corpus
from mamba_audio.models import backbone_preset
from mamba_audio.models.pretrained import CheckpointError
from mamba_audio.models.tts import TTSConfig, TTSModel, TTSTask
from mamba_audio.text import TextError, TextTokenizer, normalize_text
from mamba_audio.training import TrainConfig, Trainer

VOICES = ["flite:slt", "espeak-ng:en-us"]


def tiny_codec(num_codebooks=2) -> ConvCodec:
    torch.manual_seed(0)
    return ConvCodec(ConvCodecConfig(strides=[2, 4], channels=4, latent_dim=8, dilations=[1],
                                     num_codebooks=num_codebooks, codebook_size=16)).eval()


def tiny_tts(pattern="delay", front_end="chars", symbols="", num_codebooks=2, **overrides) -> TTSModel:
    torch.manual_seed(0)
    config = TTSConfig(backbone=backbone_preset("tiny", pool=[2, 2], n_layers=1), num_codebooks=num_codebooks,
                       codebook_size=16, pattern=pattern, text_front_end=front_end, text_symbols=symbols,
                       voices=list(VOICES), sample_rate=16000, **{"frame_rate": 2000.0, **overrides})
    return TTSModel(config)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sentence_corpus(tmp_path_factory.mktemp("tts") / "corpus", count=6, voices=tuple(VOICES),
                                 progress=False)


# -- text ------------------------------------------------------------------------------------------
def test_normalize_text_and_errors():
    assert normalize_text("  The  Red\u2019s FOX! ") == "the red's fox!"
    for bad, message in (("", "empty"), ("...", "empty"), ("abc 42", "spell out numbers"), ("caf\u00e9 \u4e2d", "unsupported"),
                         ("a" * 20, "at most 10")):
        with pytest.raises(TextError, match=message):
            normalize_text(bad, max_chars=10)
    with pytest.raises(TextError, match="must be a string"):
        normalize_text(None)


def test_text_tokenizer_chars_and_phonemes():
    chars = TextTokenizer("chars")
    ids = chars.encode("Hi, there.")
    assert ids.min() >= 1 and chars.decode(ids) == "hi, there."
    phonemes = TextTokenizer("phonemes", symbols=TextTokenizer.build_symbols(["h\u0259l\u02c8o\u028a w"]))
    with pytest.raises(TextError, match="not in this model"):
        phonemes.encode_symbols("xyz")
    with pytest.raises(ValueError, match="front end"):
        TextTokenizer("graphemes")


# -- corpus ----------------------------------------------------------------------------------------
def test_sentences_are_deterministic_and_distinct():
    first = make_sentences(50, seed=3)
    assert first == make_sentences(50, seed=3) and len(set(first)) == 50 and first != make_sentences(50, seed=4)


def test_sentence_corpus_layout_voices_and_split(corpus):
    names = {p.name for p in corpus.iterdir()}
    assert {"metadata.csv", "wavs", "voices.csv", "phonemes.csv", "heldout.txt"} <= names
    assert len(LJSpeech(corpus, sample_rate=16000)) == 6  # the plain LJSpeech reader reads it
    train, heldout = SentenceCorpus(corpus, split="train"), SentenceCorpus(corpus, split="heldout")
    assert len(train) == 5 and len(heldout) == 1
    item = heldout[0]
    assert item["voice"] in VOICES and item["phonemes"] and item["audio"].abs().max() > 0.1
    assert {train[i]["voice"] for i in range(len(train))} == set(VOICES)
    assert build_sentence_corpus(corpus, count=6, voices=tuple(VOICES), progress=False) == corpus  # idempotent
    with pytest.raises(ValueError, match="other arguments"):
        build_sentence_corpus(corpus, count=7, voices=tuple(VOICES), progress=False)
    with pytest.raises(ValueError, match="voices not installed"):
        build_sentence_corpus(corpus.parent / "other", count=3, voices=("flite:nobody",), progress=False)


# -- model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_prefill_then_step_equals_forward(pattern):
    model = tiny_tts(pattern, num_codebooks=3).eval()
    text = model.pad_text([model.text.encode("hello there"), model.text.encode("hi")])
    voice = torch.tensor([0, 1])
    tokens = torch.randint(0, 16, (2, 3, 9))
    seq, _, _, _ = model.targets(tokens, torch.tensor([9, 5]))
    inputs = model.shift(seq)
    with torch.no_grad():
        full, full_stop = model(text, voice, inputs)
        state = model.allocate_inference_cache(2)
        model.prefill_text(text, voice, state)
        logits, stops = [], []
        prefix, stop = model.prefill_audio(inputs[:, :5], voice, state)  # mid-period: the rest is stepped
        logits.append(prefix), stops.append(stop)
        for s in range(5, inputs.shape[1]):
            step_logits, step_stop = model.step_audio(inputs[:, s], voice, state)
            logits.append(step_logits[:, None]), stops.append(step_stop[:, None])
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(stops, 1), full_stop, atol=1e-5, rtol=1e-5)


def test_targets_mark_the_end_and_the_flatten_pattern_is_refused():
    model = tiny_tts(num_codebooks=2)
    seq, valid, stop, stop_mask = model.targets(torch.randint(0, 16, (1, 2, 4)), torch.tensor([3]))
    assert valid.sum() == 2 * 3 and stop[0].tolist().index(1.0) == 3 and stop_mask[0].sum() == 4
    assert (seq[~valid] == model.empty_token).all()
    with pytest.raises(ValueError, match="flatten"):
        tiny_tts("flatten")


def test_tts_training_loss_falls_and_checkpoint_round_trip(corpus, tmp_path):
    codec = tiny_codec()
    tokens_path = tokenize_corpus(SentenceCorpus(corpus), codec, tmp_path / "tokens.safetensors", progress=False)
    texts = SentenceCorpus(corpus).phonemes_of.values()
    model = tiny_tts(front_end="phonemes", symbols=TextTokenizer.build_symbols(texts), frame_rate=codec.frame_rate)
    dataset = SpeechTokens(corpus, tokens_path, model.text, VOICES, split="train", max_frames=32)
    batch = collate_speech_tokens([dataset[i] for i in range(len(dataset))], model.pad_text)
    task = TTSTask()
    with torch.no_grad():
        before = task.finalize(task.eval_sums(model.eval(), batch))
    trainer = Trainer(model, task, TrainConfig(steps=25, batch_size=5, lr=1e-2, warmup_steps=1, log_every=5,
                                               tensorboard=False, device="cpu"), tmp_path / "run", progress=False,
                      collate_fn=lambda items: collate_speech_tokens(items, model.pad_text))
    trainer.fit(dataset)
    with torch.no_grad():
        after = task.finalize(task.eval_sums(model.eval(), batch))
    assert after["nll_bits"] < 0.8 * before["nll_bits"] and after["stop_bce"] < before["stop_bce"]

    loaded = TTSModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert loaded.config == model.config and loaded.text.symbols == model.text.symbols
    with torch.no_grad():
        assert abs(task.finalize(task.eval_sums(loaded.eval(), batch))["nll_bits"] - after["nll_bits"]) < 1e-4


# -- the public API ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tts():
    codec = tiny_codec()
    # an untrained stop head fires at random: a threshold it never reaches runs every utterance to max_seconds
    return TextToSpeech(tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.02, stop_threshold=0.9999), codec,
                        max_streams=3)


def test_streams_share_the_loop_and_equal_synthesize(tts):
    assert tts.sample_rate == 16000 and tts.voices == VOICES and tts.max_text_chars == 300
    alone = tts.synthesize("the red fox.", voice=VOICES[1], seed=5)
    assert alone.dtype == torch.float32 and alone.dim() == 1 and alone.numel() > 0
    a = tts.start("the red fox.", voice=VOICES[1], seed=5, chunk_samples=24)
    b = tts.start("a much longer sentence than that one.", seed=6)
    first = next(a)
    assert first.audio.shape == (24,) and first.start == 0
    c = tts.start("another one joins.", seed=7)  # joins mid-flight
    rest = [first.audio] + [chunk.audio for chunk in a]
    torch.testing.assert_close(torch.cat(rest), alone)
    b.stop()
    assert not b.active and sum(1 for _ in c) > 0
    assert tts.synthesize("hi", seed=1, speed=0.5).numel() == 4 * tts.synthesize("hi", seed=1, speed=2.0).numel()


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "empty"), (dict(text="x" * 301), "at most 300"), (dict(text="r2d2"), "unsupported"),
    (dict(text="hi", voice="nobody"), "unknown voice"), (dict(text="hi", speed=0.1), "speed"),
    (dict(text="hi", speed=float("nan")), "speed"), (dict(text="hi", chunk_samples=0), "chunk_samples"),
])
def test_bad_requests_name_the_problem(tts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tts.start(**kwargs)


def test_api_checkpoint_round_trip_and_missing_weights(tts, tmp_path):
    tts.save_pretrained(tmp_path / "voice")
    loaded = TextToSpeech.from_pretrained(tmp_path / "voice", device="cpu")
    torch.testing.assert_close(loaded.synthesize("the red fox.", seed=2), tts.synthesize("the red fox.", seed=2))
    with pytest.raises(CheckpointError, match="not a TTS checkpoint"):
        TextToSpeech.from_pretrained(tmp_path)


def test_the_recipe_config_maps_onto_the_config_dataclasses():
    """recipes/tts/tts.yaml as recipes/tts/gpu_train.py reads it: every key known, the model builds."""
    from pathlib import Path

    from mamba_audio.configs import ConfigError, from_dict, load_yaml

    sections = load_yaml(Path(__file__).resolve().parents[1] / "recipes" / "tts" / "tts.yaml")
    assert set(sections) == {"model", "train"}
    model = from_dict(TTSConfig, {**sections["model"], "num_codebooks": 2, "codebook_size": 16,
                                  "voices": ["a", "b"], "text_symbols": "abc "}, "model")
    train = from_dict(TrainConfig, sections["train"], "train")
    assert train.max_minutes is not None and model.pattern == "delay"
    assert sum(p.numel() for p in TTSModel(model).parameters()) > 0
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(TTSConfig, {**sections["model"], "nonsense": 1}, "model")
