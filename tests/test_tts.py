"""Text-to-speech: text front end, sentence corpus, TTS model (prefill-then-step, training, checkpoints), API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamba_audio.tts import TextToSpeech
from mamba_audio.codecs import SpectralCodec, SpectralCodecConfig, SpectralFitConfig
from mamba_audio.codecs.learned import ConvCodec, ConvCodecConfig
from mamba_audio.data.sentences import SentenceCorpus, build_sentence_corpus, make_sentences
from mamba_audio.data.datasets import LJSpeech
from mamba_audio.cli import main
from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.speech_tokens import SpeechTokens, collate_speech_tokens, speech_model_fields
from mamba_audio.models import backbone_preset
from mamba_audio.models.pretrained import CheckpointError
from mamba_audio.models.tts import TTSConfig, TTSModel
from mamba_audio.text import PAD_ID, TextError, TextTokenizer, normalize_text
from mamba_audio.training import TrainConfig, Trainer, TTSTask

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


def tokenize_with_tiny_codec(corpus: Path, root: Path) -> Path:
    """``corpus`` tokenized by `mamba-audio tokenize` with a tiny ConvCodec into root/tokens (splits train
    and heldout; the codec's checkpoint in root/codec)."""
    tiny_codec().save_pretrained(root / "codec")
    assert main(["--quiet", "tokenize", "--codec", str(root / "codec"), "--data", str(corpus),
                 "--out", str(root / "tokens"), "--device", "cpu"]) == 0
    return root / "tokens"


@pytest.fixture(scope="module")
def tokens(corpus, tmp_path_factory):
    return tokenize_with_tiny_codec(corpus, tmp_path_factory.mktemp("tokens"))


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
GUIDE = dict(text_guide=True, guide_frames_per_symbol=2.0, guide_progress_bins=8)


@pytest.mark.parametrize("guide", [None, GUIDE, dict(GUIDE, guide_window=2)], ids=["unguided", "guided", "window"])
@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_prefill_then_step_equals_forward(pattern, guide):
    model = tiny_tts(pattern, num_codebooks=3, **(guide or {})).eval()
    text = model.pad_text([model.text.encode("hello there"), model.text.encode("hi")])
    voice = torch.tensor([0, 1])
    tokens = torch.randint(0, 16, (2, 3, 9))
    lengths = torch.tensor([9, 5])
    seq, _, _, _ = model.targets(tokens, lengths)
    inputs = model.shift(seq)

    def guide_at(steps):  # the guide ids of steps (L,) for both rows (codebook 0 has delay 0: frame = step)
        if not guide:
            return None
        return model.guide_ids(text, lengths, steps[None].expand(2, -1))

    with torch.no_grad():
        full, full_stop = model(text, voice, inputs, lengths)
        state = model.allocate_inference_cache(2)
        model.prefill_text(text, voice, state)
        logits, stops = [], []
        prefix, stop = model.prefill_audio(inputs[:, :5], voice, state, guide_at(torch.arange(5)))  # mid-period
        logits.append(prefix), stops.append(stop)
        for s in range(5, inputs.shape[1]):
            ids = guide_at(torch.tensor([s]))
            step_logits, step_stop = model.step_audio(inputs[:, s], voice, state,
                                                      None if ids is None else (ids[0][:, 0], ids[1][:, 0]))
            logits.append(step_logits[:, None]), stops.append(step_stop[:, None])
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(stops, 1), full_stop, atol=1e-5, rtol=1e-5)


def test_guide_ids_read_the_text_in_order_and_mark_the_end():
    model = tiny_tts(**GUIDE)
    text = model.pad_text([torch.tensor([5, 6, 7]), torch.tensor([9])])  # left-padded to 4 columns
    symbols, progress = model.guide_ids(text, torch.tensor([6, 2]), torch.arange(8)[None])
    assert symbols.shape == (2, 8, 1)  # one symbol per step: no window
    assert symbols[..., 0].tolist() == [[5, 5, 6, 6, 7, 7, 7, 7], [9, 9, 9, 9, 9, 9, 9, 9]]  # clamped to the last
    assert progress.tolist() == [[0, 1, 2, 4, 5, 6, 8, 8], [0, 4, 8, 8, 8, 8, 8, 8]]  # 8 = bins: past the end
    assert model.planned_frames(3) == 6 and model.planned_frames(3, speed=2.0) == 3 and model.planned_frames(1, 4) == 1
    with torch.no_grad():  # a guided model needs its guide; an unguided one takes none
        state = model.allocate_inference_cache(1)
        with pytest.raises(ValueError, match="reads a text guide"):
            model.step_audio(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]), state)
        with pytest.raises(ValueError, match="forward needs planned_frames"):
            model(text, torch.tensor([0, 1]), torch.zeros(2, 3, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="no text guide"):
            tiny_tts().step_audio(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]), state,
                                  (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
        with pytest.raises(ValueError, match="guide ids must be of shapes"):  # symbols without their window axis
            model.step_audio(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]), state,
                             (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
    with pytest.raises(ValueError, match="no guide_frames_per_symbol"):
        tiny_tts(text_guide=True).planned_frames(3)
    with pytest.raises(ValueError, match="guide_frames_per_symbol must be positive"):
        tiny_tts(text_guide=True, guide_frames_per_symbol=0.0)


def test_guide_window_reads_the_neighbours_and_marks_the_outside():
    model = tiny_tts(**GUIDE, guide_window=1)
    text = model.pad_text([torch.tensor([5, 6, 7]), torch.tensor([9])])
    symbols, progress = model.guide_ids(text, torch.tensor([6, 2]), torch.arange(4)[None])
    pad = PAD_ID
    assert symbols.tolist() == [  # (previous, pointer, next) at every step
        [[pad, 5, 6], [pad, 5, 6], [5, 6, 7], [5, 6, 7]],
        [[pad, 9, pad]] * 4,
    ]
    assert progress.shape == (2, 4)
    # each offset has its own rows: the same symbols seen in another order embed differently, and the
    # outside entries are learned (not zero) once there is a window
    assert model.guide_embedding.num_embeddings == 3 * model.text.vocab_size
    with torch.no_grad():
        extra = model._guide((symbols, progress), (2, 4))
        swapped = model._guide((symbols.flip(-1), progress), (2, 4))
    assert not torch.allclose(extra[0], swapped[0])
    assert model.guide_embedding.weight[PAD_ID].abs().sum() > 0
    with pytest.raises(ValueError, match="guide_window must be an integer >= 0"):
        tiny_tts(**GUIDE, guide_window=-1)


def test_targets_mark_the_end_and_the_flatten_pattern_is_refused():
    model = tiny_tts(num_codebooks=2)
    seq, valid, stop, stop_mask = model.targets(torch.randint(0, 16, (1, 2, 4)), torch.tensor([3]))
    assert valid.sum() == 2 * 3 and stop[0].tolist().index(1.0) == 3 and stop_mask[0].sum() == 4
    assert (seq[~valid] == model.empty_token).all()
    with pytest.raises(ValueError, match="flatten"):
        tiny_tts("flatten")


def test_speech_tokens_read_the_tokenized_corpus_and_name_what_is_missing(tokens, tmp_path):
    fields = speech_model_fields(tokens, "phonemes")
    assert fields["voices"] == sorted(VOICES) and (fields["num_codebooks"], fields["codebook_size"]) == (2, 16)
    model = tiny_tts(front_end="phonemes", symbols=fields["text_symbols"])
    train = SpeechTokens(tokens, model.text, fields["voices"], split="train", max_frames=3)
    item = train[0]
    assert len(train) == 5 and item["tokens"].shape == (2, 3) and item["frames"] == 3 and item["id"]
    assert model.text.decode(item["text"]) == train.tokens.metadata[0]["phonemes"]
    chars = SpeechTokens(tokens, TextTokenizer("chars"), VOICES, split="heldout")
    assert chars.text.decode(chars[0]["text"]) == normalize_text(chars.tokens.metadata[0]["normalized_transcript"])
    batch = collate_speech_tokens([train[0], train[1]], model.pad_text)
    assert batch["tokens"].shape == (2, 2, 3) and batch["frames"].tolist() == [3, 3]
    assert batch["text"].shape[1] % model.config.backbone.total_pool == 0 and batch["voice"].shape == (2,)

    with pytest.raises(ValueError, match=r"corpus voices \['flite:slt'\] are not among the model's voices"):
        SpeechTokens(tokens, TextTokenizer("chars"), ["espeak-ng:en-us"])
    with pytest.raises(TextError, match="not in this model's phonemes inventory"):
        SpeechTokens(tokens, TextTokenizer("phonemes", symbols="ab"), VOICES)
    with pytest.raises(DataLayoutError, match="no manifest.json"):
        SpeechTokens(tmp_path, TextTokenizer("chars"), VOICES)
    broken = tmp_path / "broken"
    shutil.copytree(tokens, broken)
    lines = (broken / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    del first["phonemes"]
    (broken / "train.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(DataLayoutError, match=f"clip {first['id']} has no phonemes"):
        SpeechTokens(broken, model.text, VOICES)


def train_briefly(model: TTSModel, dataset: SpeechTokens, batch_size: int, out: Path) -> tuple[dict, dict, dict]:
    """25 steps of ``model`` on ``dataset`` at lr 1e-2 into ``out`` -> (the whole dataset as one batch, its
    TTSTask metrics before training, after)."""
    batch = collate_speech_tokens([dataset[i] for i in range(len(dataset))], model.pad_text)
    task = TTSTask()
    with torch.no_grad():
        before = task.finalize(task.eval_sums(model.eval(), batch))
    config = TrainConfig(steps=25, batch_size=batch_size, lr=1e-2, warmup_steps=1, log_every=5, tensorboard=False,
                         device="cpu")
    trainer = Trainer(model, task, config, out, progress=False,
                      collate_fn=lambda items: collate_speech_tokens(items, model.pad_text))
    trainer.fit(dataset)
    with torch.no_grad():
        after = task.finalize(task.eval_sums(model.eval(), batch))
    return batch, before, after


@pytest.mark.parametrize("guide", [False, True], ids=["unguided", "guided"])
def test_tts_training_loss_falls_and_checkpoint_round_trip(tokens, tmp_path, guide):
    fields = speech_model_fields(tokens, "phonemes")
    model = tiny_tts(front_end="phonemes", symbols=fields["text_symbols"], frame_rate=fields["frame_rate"],
                     **(dict(text_guide=True, guide_window=2) if guide else {}))
    dataset = SpeechTokens(tokens, model.text, VOICES, split="train", max_frames=32)
    if guide:  # as `mamba-audio train` does; the crop to 32 frames leaves each clip's whole length for the guide
        model.config.guide_frames_per_symbol = dataset.frames_per_symbol()
        assert [dataset[i]["clip_frames"] for i in range(len(dataset))] == [
            m["num_frames"] for m in dataset.tokens.metadata]
    batch, before, after = train_briefly(model, dataset, 5, tmp_path / "run")
    assert after["nll_bits"] < 0.8 * before["nll_bits"] and after["stop_bce"] < before["stop_bce"]

    loaded = TTSModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert loaded.config == model.config and loaded.text.symbols == model.text.symbols
    assert hasattr(loaded, "guide_embedding") == guide and loaded.config.text_guide == guide
    with torch.no_grad():
        reloaded = TTSTask().finalize(TTSTask().eval_sums(loaded.eval(), batch))
        assert abs(reloaded["nll_bits"] - after["nll_bits"]) < 1e-4


def test_a_clip_cut_for_training_is_not_taught_to_stop_at_the_cut():
    """planned_frames > lengths (a clip cropped to max_frames): the stop target at the cut is masked out."""
    model = tiny_tts().eval()
    torch.manual_seed(1)
    tokens, lengths = torch.randint(0, 16, (2, 2, 6)), torch.tensor([6, 4])
    text, voice = model.pad_text([model.text.encode("hi"), model.text.encode("the fox")]), torch.tensor([0, 1])
    with torch.no_grad():
        whole = model.losses(text, voice, tokens, lengths, lengths)
        cut = model.losses(text, voice, tokens, lengths, torch.tensor([6, 9]))  # row 1: 4 of its 9 frames
        seq, _, target, mask = model.targets(tokens, lengths)
        _, stop_logits = model(text, voice, model.shift(seq))
    keep = mask.clone()
    keep[1] &= target[1] == 0
    assert keep.sum() == mask.sum() - 1
    torch.testing.assert_close(cut["stop_bce"], F.binary_cross_entropy_with_logits(stop_logits[keep], target[keep]))
    assert not torch.equal(cut["stop_bce"], whole["stop_bce"])
    torch.testing.assert_close(cut["nll_bits"], whole["nll_bits"])  # unguided: only the stop target changes


def test_input_token_noise_replaces_codes_in_training_only():
    """input_token_noise draws new codes for about that share of the teacher-forced inputs (never for the empty
    token, never for the targets), in training only: in eval mode the losses are those of a noiseless model."""
    noisy, clean = tiny_tts(input_token_noise=0.5), tiny_tts()
    torch.manual_seed(1)
    tokens, lengths = torch.randint(0, 16, (2, 2, 40)), torch.tensor([40, 30])
    seq = noisy.targets(tokens, lengths)[0]
    inputs = noisy.shift(seq)
    torch.manual_seed(2)
    drawn = noisy.noisy_inputs(inputs)
    empty = inputs == noisy.empty_token
    assert torch.equal(drawn[empty], inputs[empty]) and (drawn[~empty] < 16).all()
    changed = (drawn != inputs)[~empty].float().mean()  # a draw keeps its code 1 time in 16
    assert 0.35 < changed < 0.6
    assert clean.noisy_inputs(inputs) is inputs
    text, voice = noisy.pad_text([noisy.text.encode("hi"), noisy.text.encode("the fox")]), torch.tensor([0, 1])
    with torch.no_grad():
        noisy.eval(), clean.eval()
        assert noisy.losses(text, voice, tokens, lengths) == clean.losses(text, voice, tokens, lengths)
        noisy.train()
        trained = noisy.losses(text, voice, tokens, lengths)
        assert trained["nll_bits"] != clean.losses(text, voice, tokens, lengths)["nll_bits"]
    with pytest.raises(ValueError, match="input_token_noise"):
        tiny_tts(input_token_noise=1.0)


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


@pytest.fixture(scope="module")
def guided_tts():
    codec = tiny_codec()
    model = tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.02, stop_threshold=0.9999, guide_window=1, **GUIDE)
    return TextToSpeech(model, codec, max_streams=3)


def test_guided_streams_join_mid_flight_equal_synthesize_and_speed_scales_the_plan(guided_tts):
    """The loop keeps each slot's guide (symbols, n, planned frames) and steps it: a stream that joins
    mid-flight, in the slot of one that was stopped, speaks as it does alone; speed changes the plan,
    not the playback rate."""
    tts, loop, model = guided_tts, guided_tts.loop, guided_tts.model
    texts = ["the red fox.", "a much longer sentence than that one.", "another one joins."]
    alone = [tts.synthesize(texts[0], seed=5), tts.synthesize(texts[2], seed=7)]
    a = tts.start(texts[0], seed=5, chunk_samples=24)
    b = tts.start(texts[1], seed=6)
    slot, n = b.slot, len(texts[1])
    assert loop.guide_symbols[slot] == n and loop.guide_planned[slot] == model.planned_frames(n) == 2 * n
    assert model.text.decode(loop.guide_text[slot]) == texts[1]
    first = next(a)
    b.stop()
    assert loop.guide_symbols[slot] == 0 and loop.guide_planned[slot] == 1 and (loop.guide_text[slot] == 0).all()
    c = tts.start(texts[2], seed=7)  # joins mid-flight, in b's slot
    assert c.slot == slot
    torch.testing.assert_close(torch.cat([first.audio] + [chunk.audio for chunk in a]), alone[0])
    torch.testing.assert_close(torch.cat([chunk.audio for chunk in c]), alone[1])
    assert not loop.active_streams and (loop.guide_symbols == 0).all()  # finished streams' slots are cleared
    slow, fast = tts.synthesize("hi", seed=1, speed=0.5), tts.synthesize("hi", seed=1, speed=2.0)
    assert slow.shape == fast.shape and not torch.equal(slow, fast)  # same frames (max_seconds), other plans
    d = tts.start("hi", speed=0.5)
    assert loop.guide_planned[d.slot] == model.planned_frames(2, 0.5) == 8 and d.speed == 1.0  # played as made
    d.stop()


def test_the_guided_loop_widens_its_text_rows_for_a_longer_text():
    """A text of more symbols than max_text_chars (phonemes may outnumber the characters) widens the loop's
    text rows (left-padded, so the streams in flight keep their symbols); the audio is as with wide rows."""
    codec = tiny_codec()

    def speak(max_text_chars):
        model = tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.01, stop_threshold=0.9999,
                         max_text_chars=max_text_chars, **GUIDE)
        tts = TextToSpeech(model, codec, max_streams=2)
        a = tts.start("the fox.", seed=1)
        first = next(a)
        b = tts.loop.start(model.text.encode("a longer one here."), 0, 1.0, 2, 24)  # past the API's check
        audio = [torch.cat([first.audio] + [c.audio for c in a]), torch.cat([c.audio for c in b])]
        return audio, tts.loop.guide_text.shape[1]

    (narrow, width), (wide, full_width) = speak(8), speak(300)
    assert (width, full_width) == (20, 300)
    torch.testing.assert_close(narrow, wide)


def test_guided_voice_round_trips_and_an_old_config_loads_unguided(guided_tts, tts, tmp_path):
    guided = TextToSpeech.from_pretrained(guided_tts.save_pretrained(tmp_path / "guided"), device="cpu")
    assert guided.model.config == guided_tts.model.config and guided.model.config.text_guide
    torch.testing.assert_close(guided.synthesize("the red fox.", seed=2), guided_tts.synthesize("the red fox.", seed=2))
    # a checkpoint from before the guide: its config.json has none of the guide's keys
    old = tts.save_pretrained(tmp_path / "old")
    meta = json.loads((old / "tts" / "config.json").read_text())
    for key in ("text_guide", "guide_frames_per_symbol", "guide_progress_bins"):
        del meta["config"][key]
    (old / "tts" / "config.json").write_text(json.dumps(meta))
    loaded = TextToSpeech.from_pretrained(old, device="cpu")
    assert not loaded.model.config.text_guide and not any("guide" in k for k in loaded.model.state_dict())
    torch.testing.assert_close(loaded.synthesize("the red fox.", seed=2, speed=1.5),
                               tts.synthesize("the red fox.", seed=2, speed=1.5))


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


def test_half_precision_voice_loads_as_float32_and_a_foreign_codec_is_named(tts, tmp_path):
    """How the default voice ships: weights stored in float16, loaded back as float32 (close to the original)."""
    full, half = tts.save_pretrained(tmp_path / "full"), tts.save_pretrained(tmp_path / "half", dtype=torch.float16)
    sizes = [sum(f.stat().st_size for f in root.rglob("*.safetensors")) for root in (full, half)]
    assert sizes[1] < 0.6 * sizes[0]
    loaded = TextToSpeech.from_pretrained(half, device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} | {p.dtype for p in loaded.codec.parameters()} == {torch.float32}
    model = tts.model.eval()
    text, voice = model.pad_text([model.text.encode("the red fox.")]), torch.tensor([1])
    inputs = model.shift(model.targets(torch.randint(0, 16, (1, 2, 6)), torch.tensor([6]))[0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(text, voice, inputs), model(text, voice, inputs),
                                   atol=2e-2, rtol=1e-2)
    tiny_codec(num_codebooks=3).save_pretrained(half / "codec")  # a codec the model was not trained on
    with pytest.raises(CheckpointError, match="does not fit the TTS model"):
        TextToSpeech.from_pretrained(half, device="cpu")
    huge = tiny_codec()
    next(huge.parameters()).data.view(-1)[0] = 1e6
    with pytest.raises(ValueError, match="do not fit torch.float16"):
        huge.save_pretrained(tmp_path / "huge", dtype=torch.float16)


def tiny_spectral_codec() -> SpectralCodec:
    """A SpectralCodec (hop 160, 2 x 16 codes, 4 Griffin-Lim iterations) fitted to three tones."""
    torch.manual_seed(0)
    codec = SpectralCodec(SpectralCodecConfig(sample_rate=16000, hop_length=160, n_fft=512, n_mels=20,
                                              num_codebooks=2, codebook_size=16, griffin_lim_iterations=4))
    t = torch.arange(16000) / 16000
    codec.fit([torch.sin(2 * torch.pi * f * t) * (0.2 + 0.1 * torch.sin(7 * t)) for f in (120, 180, 260)],
              SpectralFitConfig(iterations=3, max_frames=500))
    return codec


def test_a_voice_on_the_spectral_codec_speaks_and_round_trips(tmp_path):
    """The default voice's codec has buffers but no parameters: the loop must still find its device."""
    codec = tiny_spectral_codec()
    assert not list(codec.parameters()) and codec.device == torch.device("cpu")
    voice = TextToSpeech(tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.05, stop_threshold=0.9999), codec)
    audio = voice.synthesize("the red fox.", seed=4)
    assert audio.numel() == 5 * codec.hop_length and torch.isfinite(audio).all()
    loaded = TextToSpeech.from_pretrained(voice.save_pretrained(tmp_path / "voice", dtype=torch.float16), device="cpu")
    assert isinstance(loaded.codec, SpectralCodec)
    assert loaded.synthesize("the red fox.", seed=4).shape == audio.shape


def test_the_loop_decodes_its_streams_together_and_each_sounds_as_alone(monkeypatch):
    """Streams whose windows have one shape share a codec call (one Griffin-Lim for all of them), and each
    stream's audio is what it would be alone, beside a stream at another point of its utterance."""
    codec = tiny_spectral_codec()
    voice = TextToSpeech(tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.3, stop_threshold=0.9999), codec,
                         max_streams=3)
    texts = ["the red fox.", "a much longer sentence.", "hi"]
    alone = [voice.synthesize(text, seed=i) for i, text in enumerate(texts)]
    batches = []
    decode = type(codec).decode
    monkeypatch.setattr(type(codec), "decode", lambda self, tokens, played=None: (
        batches.append(tokens.shape[0]), decode(self, tokens, played))[1])
    a, b = voice.start(texts[0], seed=0), voice.start(texts[1], seed=1)
    together = {0: [next(a).audio], 1: []}
    c = voice.start(texts[2], seed=2)  # joins later: its windows differ from the others' at first
    together[1] += [chunk.audio for chunk in b]
    together[0] += [chunk.audio for chunk in a]
    together[2] = [chunk.audio for chunk in c]
    for i in range(3):  # within float rounding: on some CPUs a batched FFT or matmul rounds a row differently
        # from the row alone, and Griffin-Lim's iterations carry that to about 2e-4 (signal peaks near 0.3)
        torch.testing.assert_close(torch.cat(together[i]), alone[i], rtol=0, atol=1e-3)
    assert max(batches) >= 2 and len(batches) < sum(batches)  # some calls decoded several streams


def test_a_voice_speaks_with_its_own_sampling_unless_told_otherwise():
    codec = tiny_codec()
    model = tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.02, temperature=0.3, top_p=0.9)
    assert (TextToSpeech(model, codec).loop.temperature, TextToSpeech(model, codec).loop.top_p) == (0.3, 0.9)
    loop = TextToSpeech(model, codec, temperature=1.0, top_p=0.5).loop
    assert (loop.temperature, loop.top_p) == (1.0, 0.5)
    greedy = TextToSpeech(tiny_tts(frame_rate=codec.frame_rate, max_seconds=0.02, temperature=0.0), codec)
    assert torch.equal(greedy.synthesize("the fox.", seed=1), greedy.synthesize("the fox.", seed=2))
    for bad, message in ((dict(temperature=-1.0), "temperature must be >= 0"), (dict(top_p=0.0), "top_p must be in")):
        with pytest.raises(ValueError, match=message):
            tiny_tts(**bad)


def test_speaking_from_the_front_end_symbols(tts):
    """symbols=True speaks the front end's symbol string itself (a corpus's phonemes, without espeak-ng)."""
    torch.testing.assert_close(tts.synthesize("the red fox.", symbols=True, seed=3),
                               tts.synthesize("The  RED fox.", seed=3))
    for bad, message in (("the r\u0292d fox", "not in this model's chars inventory"), ("a" * 301, "at most 300"),
                         ("", "no symbols")):
        with pytest.raises(TextError, match=message):
            tts.start(bad, symbols=True)


def test_cli_fills_the_guide_pace_from_the_training_data(tokens, tmp_path):
    """With model.text_guide and no guide_frames_per_symbol, `mamba-audio train` sets it from the train
    split (whole clips' frames per symbol) and saves it; the voice then speaks at that pace."""
    out = tmp_path / "guided"
    assert main(["--quiet", "train", "--task", "tts", "--data", str(tokens), "--out", str(out), "--steps", "1",
                 "--batch-size", "2", "--segment-seconds", "0.004", "--device", "cpu", "--preset", "tiny",
                 "--set", "model.backbone.n_layers=1", "--set", "model.text_guide=true",
                 "--set", "model.max_seconds=0.02"]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())["config"]
    train = SpeechTokens(tokens, TextTokenizer("phonemes", symbols=saved["text_symbols"]), VOICES, "train")
    expected = sum(m["num_frames"] for m in train.tokens.metadata) / sum(len(train[i]["text"]) for i in range(len(train)))
    assert saved["text_guide"] and saved["guide_frames_per_symbol"] == pytest.approx(expected, abs=1e-4)
    voice = TextToSpeech.from_pretrained(out / "voice", device="cpu")
    assert voice.model.config.guide_frames_per_symbol == saved["guide_frames_per_symbol"]
    phonemes = train.tokens.metadata[0]["phonemes"]
    assert voice.synthesize(phonemes, symbols=True, seed=0).numel() > 0


def test_cli_trains_tts_from_the_recipe_config_on_tokenized_data(tokens, tmp_path, capsys):
    """`mamba-audio train --task tts` with recipes/tts/tts.yaml (shrunk by overrides): the codec layout,
    voices and symbols come from the tokenized data; OUT/voice is a TextToSpeech checkpoint."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tts" / "tts.yaml"
    out = tmp_path / "tts"
    argv = ["--quiet", "train", "--task", "tts", "--data", str(tokens), "--config", str(recipe),
            "--steps", "2", "--batch-size", "2", "--segment-seconds", "0.02", "--device", "cpu",
            "--set", "model.backbone.n_layers=1", "--set", "model.backbone.d_model=16", "--set", "train.max_minutes=1"]
    assert main([*argv, "--out", str(out)]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    fields = speech_model_fields(tokens, "phonemes")
    assert saved["step"] == 2 and saved["config"]["pattern"] == "delay"  # --steps beat the file's steps
    assert {key: saved["config"][key] for key in fields} == fields
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" and r["nll_bits"] > 0 for r in records)  # on the held-out split
    voice = TextToSpeech.from_pretrained(out / "voice", device="cpu")
    assert voice.voices == sorted(VOICES) and voice.sample_rate == 16000

    capsys.readouterr()
    for extra, message in ((["--set", "model.num_codebooks=8"], "model.num_codebooks comes from the tokenized data"),
                           (["--set", "model.nonsense=1"], "unknown"),
                           (["--sample-rate", "8000"], "takes no --sample-rate")):
        assert main([*argv, "--out", str(tmp_path / "x"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main([*argv[:5], str(tmp_path), *argv[6:], "--out", str(tmp_path / "x")]) == 2
    assert "not a tokenized dataset" in capsys.readouterr().err
