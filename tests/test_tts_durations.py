"""The duration-guided TTS model: flite's phones as text symbols, the corpus's phone timings, the guide
placed by each symbol's frames, the duration predictor, training and the streaming loop."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import sys
import tarfile
from pathlib import Path
from unittest.mock import patch

import pytest
import soundfile as sf
import torch

from mamba_audio.data.corpus import CorpusError
from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.sentences import ALIGNMENTS, SentenceCorpus, align_sentence_corpus, build_sentence_corpus
from mamba_audio.data.speech_tokens import SpeechTokens, collate_speech_tokens, speech_model_fields, symbol_frames
from mamba_audio.models.tts import TTSModel
from mamba_audio.text import FLITE_PHONES, FLITE_SYMBOLS, PAD_ID, TextError, TextTokenizer, flite_symbol
from mamba_audio.tts import TextToSpeech
from test_tts import tiny_codec, tiny_tts, tokenize_with_tiny_codec, train_briefly

VOICE = "flite:slt"
DURATIONS = dict(front_end="flite", text_guide=True, guide_durations=True, guide_progress_bins=8, guide_window=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sentence_corpus(tmp_path_factory.mktemp("durations") / "corpus", count=5, voices=(VOICE,),
                                 progress=False)


@pytest.fixture(scope="module")
def tokens(corpus, tmp_path_factory):
    return tokenize_with_tiny_codec(corpus, tmp_path_factory.mktemp("flite_tokens"))


# -- text and corpus ---------------------------------------------------------------------------------
def test_the_flite_front_end_writes_one_symbol_per_phone():
    text = TextTokenizer("flite")
    assert text.symbols == FLITE_SYMBOLS and text.vocab_size == len(FLITE_PHONES) + 1
    assert text.to_symbols("Sarah went to the garden at noon.") == "_sɛɹəwɛnttəðəgɑɹdənætnun_"
    assert text.decode(text.encode("Hi, there!")) == "_hI_ðɛɹ_"  # a pause at the comma
    assert flite_symbol("jh") == "ʤ"
    with pytest.raises(TextError, match="not in the flite front end's table"):
        flite_symbol("qx")
    with pytest.raises(TextError, match="empty"):
        text.encode("...")


def test_the_corpus_times_every_phone_of_its_flite_clips(corpus):
    clips = SentenceCorpus(corpus)
    front_end = TextTokenizer("flite")
    for i in range(len(clips)):
        item = clips[i]
        phones, ends = item["flite_phones"], [float(e) for e in item["phone_ends"].split()]
        assert phones == front_end.to_symbols(item["transcript"])  # what generation reads for the same text
        assert len(ends) == len(phones) and ends == sorted(ends)
        assert ends[-1] == pytest.approx(item["length"] / 16000, abs=1e-4)
        # the timings moved with the trimmed silence: the pauses at either end are quiet, the phones are not
        # (the leading pause may be trimmed away entirely, e.g. before the silent closure of a "p")
        assert phones[0] == phones[-1] == "_" and 0.0 <= ends[0] < 0.15

        def level(start, end):
            segment = item["audio"][int(start * 16000):int(end * 16000)]
            return float(segment.abs().mean()) if segment.numel() else 0.0

        assert max(level(0.0, ends[0]), level(ends[-2], ends[-1])) < 0.1 * level(ends[0], ends[-2])


def test_an_older_corpus_is_aligned_by_speaking_it_again(corpus, tmp_path):
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    written = (copy / ALIGNMENTS).read_text()
    (copy / ALIGNMENTS).unlink()
    assert "flite_phones" not in SentenceCorpus(copy)[0]
    assert align_sentence_corpus(copy, progress=False).read_text() == written
    wav = sorted((copy / "wavs").iterdir())[0]
    audio, rate = sf.read(wav)
    sf.write(wav, audio[:-160], rate)
    with pytest.raises(CorpusError, match=f"clip {wav.stem} re-spoken has"):
        align_sentence_corpus(copy, progress=False)
    with pytest.raises(CorpusError, match="not a finished sentence corpus"):
        align_sentence_corpus(tmp_path)


def test_symbol_frames_round_the_boundaries_and_sum_to_the_clip():
    assert symbol_frames("0.06 0.06 0.131 0.2 0.33", 50.0, 16).tolist() == [3, 0, 4, 3, 6]
    assert symbol_frames("0.5 0.4 9.0", 10.0, 6).tolist() == [5, 0, 1]  # kept non-decreasing and within F
    with pytest.raises(DataLayoutError, match="must be numbers"):
        symbol_frames("0.1 x", 50.0, 3)


def test_speech_tokens_give_each_symbol_its_frames(tokens, tmp_path):
    assert speech_model_fields(tokens, "flite")["text_symbols"] == ""  # the fixed table, not the corpus's
    model = tiny_tts(**DURATIONS)
    data = SpeechTokens(tokens, model.text, [VOICE], split="train", max_frames=3)
    item = data[0]
    assert item["durations"].shape == item["text"].shape and item["durations"].sum() == item["clip_frames"]
    assert model.text.decode(item["text"]) == data.tokens.metadata[0]["flite_phones"]
    batch = collate_speech_tokens([data[0], data[1]], model.pad_text)
    assert batch["durations"].shape == batch["text"].shape
    assert ((batch["durations"] > 0) <= (batch["text"] != PAD_ID)).all()
    assert batch["durations"].sum(1).tolist() == batch["clip_frames"].tolist()
    broken = tmp_path / "broken"
    shutil.copytree(tokens, broken)
    lines = (broken / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["phone_ends"] = first["phone_ends"].rsplit(" ", 1)[0]
    (broken / "train.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(DataLayoutError, match=f"clip {first['id']} has {len(first['flite_phones'])} phones but"):
        SpeechTokens(broken, model.text, [VOICE])


# -- the model -----------------------------------------------------------------------------------------
def test_the_duration_guide_points_at_the_symbol_being_spoken():
    model = tiny_tts(**DURATIONS)
    text = model.pad_text([torch.tensor([5, 6, 7]), torch.tensor([9])])  # left-padded to 4 columns
    durations = torch.tensor([[0, 2, 0, 3], [0, 0, 0, 4]])  # symbol 6 takes no frame
    ends = durations.cumsum(1)
    symbols, progress = model.guide_ids(text, ends[:, -1], torch.arange(7)[None], ends=ends)
    assert symbols[..., 1].tolist() == [[5, 5, 7, 7, 7, 7, 7], [9] * 7]  # clamped to the last past the end
    assert symbols[0, 0].tolist() == [PAD_ID, 5, 6] and symbols[0, 2].tolist() == [6, 7, PAD_ID]
    assert progress.tolist() == [[0, 1, 3, 4, 6, 8, 8], [0, 2, 4, 6, 8, 8, 8]]
    voice, inputs = torch.tensor([0, 1]), torch.zeros(2, 3, 2, dtype=torch.long)
    with torch.no_grad():
        with pytest.raises(ValueError, match="pass durations"):
            model(text, voice, inputs, torch.tensor([5, 4]))
        with pytest.raises(ValueError, match="0 on the text's padding"):
            model(text, voice, inputs, durations=torch.tensor([[1, 2, 0, 3], [0, 0, 0, 4]]))
    with pytest.raises(ValueError, match="needs text_guide"):
        tiny_tts(front_end="flite", guide_durations=True)
    with pytest.raises(ValueError, match="no duration predictor"):
        tiny_tts(text_guide=True).plan_durations(text)


@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_prefill_then_step_equals_forward_with_the_duration_guide(pattern):
    model = tiny_tts(pattern, num_codebooks=3, **DURATIONS).eval()
    text = model.pad_text([model.text.encode("hello there"), model.text.encode("hi")])
    durations = model.pad_text([torch.randint(0, 3, (int((row != PAD_ID).sum()),)) for row in text])
    durations[:, -1] += 1
    ends, voice = durations.cumsum(1), torch.tensor([0, 1])
    seq, _, _, _ = model.targets(torch.randint(0, 16, (2, 3, 9)), torch.tensor([9, 5]))
    inputs = model.shift(seq)

    def guide_at(steps):  # codebook 0 has delay 0: frame = step
        return model.guide_ids(text, ends[:, -1], steps[None].expand(2, -1), ends=ends)

    with torch.no_grad():
        full, full_stop = model(text, voice, inputs, durations=durations)
        state = model.allocate_inference_cache(2)
        model.prefill_text(text, voice, state)
        logits, stops = model.prefill_audio(inputs[:, :5], voice, state, guide_at(torch.arange(5)))
        logits, stops = [logits], [stops]
        for s in range(5, inputs.shape[1]):
            ids = guide_at(torch.tensor([s]))
            step_logits, step_stop = model.step_audio(inputs[:, s], voice, state, (ids[0][:, 0], ids[1][:, 0]))
            logits.append(step_logits[:, None]), stops.append(step_stop[:, None])
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(stops, 1), full_stop, atol=1e-5, rtol=1e-5)


def test_planned_durations_ignore_the_padding_and_follow_the_speed():
    model = tiny_tts(**DURATIONS).eval()
    with torch.no_grad():  # a predictor that says e^2 - 1 = 6.4 frames for every symbol
        model.duration_predictor.out.weight.zero_()
        model.duration_predictor.out.bias.fill_(2.0)
    ids = model.text.encode("the fox.")
    alone, batched = model.pad_text([ids]), model.pad_text([ids, model.text.encode("a much longer sentence.")])
    with torch.no_grad():
        frames = model.plan_durations(alone)
        assert frames[0, -ids.shape[0]:].tolist() == [6] * ids.shape[0] and (frames[alone == PAD_ID] == 0).all()
        assert model.plan_durations(alone, speed=2.0)[0, -1] == 3
        torch.nn.init.normal_(model.duration_predictor.out.weight)  # now each symbol depends on its neighbours
        torch.testing.assert_close(model.plan_durations(batched)[0, -ids.shape[0]:], model.plan_durations(alone)[0, -ids.shape[0]:])
        model.duration_predictor.out.bias.fill_(-20.0)
        assert model.plan_durations(alone).sum() == 1  # never a plan of no frames


def test_training_teaches_tokens_stop_and_durations_and_round_trips(tokens, tmp_path):
    model = tiny_tts(**DURATIONS, frame_rate=speech_model_fields(tokens, "flite")["frame_rate"])
    dataset = SpeechTokens(tokens, model.text, [VOICE], split="train", max_frames=32)
    batch, before, after = train_briefly(model, dataset, 4, tmp_path / "run")
    assert after["nll_bits"] < 0.8 * before["nll_bits"] and after["stop_bce"] < before["stop_bce"]
    assert after["duration_mse"] < 0.5 * before["duration_mse"]
    loaded = TTSModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert loaded.config == model.config and hasattr(loaded, "duration_predictor")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().plan_durations(batch["text"]), model.plan_durations(batch["text"]))


# -- the streaming loop ----------------------------------------------------------------------------------
def test_the_loop_plans_each_symbol_and_streams_equal_synthesize():
    codec = tiny_codec()
    model = tiny_tts(**DURATIONS, frame_rate=codec.frame_rate, max_seconds=0.02, stop_threshold=0.9999)
    tts = TextToSpeech(model, codec, max_streams=2)
    loop = tts.loop
    alone = tts.synthesize("the red fox.", seed=5)
    a = tts.start("the red fox.", seed=5, chunk_samples=24)
    ids = model.text.encode("the red fox.")
    with torch.no_grad():
        plan = model.plan_durations(model.pad_text([ids]))[0, -ids.shape[0]:]
        slow = model.plan_durations(model.pad_text([ids]), speed=0.5)[0, -ids.shape[0]:]
    assert loop.guide_ends[a.slot, -ids.shape[0]:].tolist() == plan.cumsum(0).tolist()
    assert loop.guide_planned[a.slot] == plan.sum() and (loop.guide_ends[a.slot, :-ids.shape[0]] == 0).all()
    b = tts.start("the red fox.", seed=5, speed=0.5)
    assert loop.guide_planned[b.slot] == slow.sum() and b.speed == 1.0  # the plan changes, the playback does not
    slot = b.slot
    b.stop()
    assert (loop.guide_ends[slot] == 0).all() and loop.guide_planned[slot] == 1
    torch.testing.assert_close(torch.cat([chunk.audio for chunk in a]), alone)


# -- the recipe -------------------------------------------------------------------------------------------
def test_gpu_train_script_trains_ships_and_speaks_on_tokens(tokens, corpus, tmp_path, capsys):
    """recipes/tts/gpu_train.py end to end on the CPU with the default voice's config (flite phones, the
    duration guide), shrunk: train on pre-tokenized data, store the voice in float16, speak the held-out
    sentence from its aligned phones; then recipes/tts/time_voice.py times the voice it shipped. The run is
    split over two calls (--stop-after-minutes, then --resume), as over two device commands."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tts"
    out = tmp_path / "out"
    argv = ["gpu_train.py", "--tokens", str(tokens), "--out", str(out), "--work", str(tmp_path / "work"),
            "--device", "cpu", "--set", "train.steps=2", "--set", "train.batch_size=2",
            "--set", "model.backbone.d_model=16", "--set", "model.backbone.n_layers=1",
            "--set", "model.max_seconds=0.02"]
    with patch.object(sys, "argv", argv + ["--stop-after-minutes", "1e-9"]):  # paused after its first step
        runpy.run_path(str(recipe / "gpu_train.py"), run_name="__main__")
    assert "training paused" in capsys.readouterr().out and not out.exists()
    with patch.object(sys, "argv", argv + ["--resume"]):
        runpy.run_path(str(recipe / "gpu_train.py"), run_name="__main__")
    record = json.loads((out / "run.json").read_text())
    assert record["train_steps"] == 2 and record["heldout_sentences_spoken"] == 1 and record["shipped_dtype"] == "float16"
    assert record["model_config"]["text_front_end"] == "flite" and record["model_config"]["backbone"]["expand"] == 1
    assert record["model_config"]["guide_durations"]
    assert set(record["heldout_nll_bits"]) == {"trained_float32", "shipped_float16", "trained_float32_other_text"}
    assert all(math.isfinite(v) for v in record["heldout_nll_bits"].values())
    other_text = runpy.run_path(str(recipe / "gpu_train.py"))["OtherText"]  # each clip with the next one's text
    clips = [{"text": torch.tensor([i]), "tokens": i} for i in range(3)]
    assert [(c["text"].item(), c["tokens"]) for c in other_text(clips, 3)] == [(1, 0), (2, 1), (0, 2)]
    assert {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()} == {
        "run.json", "metrics.jsonl", "generated.tar", "voice/tts/config.json", "voice/tts/model.safetensors",
        "voice/codec/config.json", "voice/codec/model.safetensors"}  # what the GPU machine hands back
    heldout = SentenceCorpus(corpus, split="heldout").entries[0][0]
    with tarfile.open(out / "generated.tar") as archive:
        assert archive.getnames() == [f"{heldout}.wav"]
    assert TextToSpeech.from_pretrained(out / "voice", device="cpu").voices == [VOICE]
    capsys.readouterr()
    with patch.object(sys, "argv", ["time_voice.py", "--voice", str(out / "voice"), "--tokens", str(tokens)]):
        runpy.run_path(str(recipe / "time_voice.py"), run_name="__main__")  # the voice timed as on the GPU
    timing = json.loads(capsys.readouterr().out)
    assert timing["sentences"] == 1 and timing["time_to_first_audio_ms"] > 0 and timing["realtime_factor"] > 0
    sweep = out / "sweep.json"  # recipes/tts/sampling_sweep.py scores temperatures beside the recordings
    with patch.object(sys, "argv", ["sampling_sweep.py", "--voice", str(out / "voice"), "--tokens", str(tokens),
                                    "--corpus", str(corpus), "--first", "0", "--temperatures", "0,1", "--out", str(sweep)]):
        runpy.run_path(str(recipe / "sampling_sweep.py"), run_name="__main__")
    scores = json.loads(sweep.read_text())
    assert scores["sentences"] == 1 and set(scores["wer"]) == {"recordings", "temperature 0.0", "temperature 1.0"}
    assert all(value >= 0 for value in scores["wer"].values())
    with patch.object(sys, "argv", ["sampling_sweep.py", "--voice", str(out / "voice"), "--tokens", str(tokens),
                                    "--corpus", str(corpus), "--first", "0", "--temperatures", "0",
                                    "--cfg-scales", "1,2", "--out", str(sweep)]):  # and guidance scales
        runpy.run_path(str(recipe / "sampling_sweep.py"), run_name="__main__")
    assert set(json.loads(sweep.read_text())["wer"]) == {"recordings", "temperature 0.0, cfg 1.0",
                                                         "temperature 0.0, cfg 2.0"}


def test_the_loop_widens_its_end_frames_with_its_text_rows():
    """A text longer than max_text_chars symbols widens the loop's rows: a stream in flight keeps its end
    frames (left-padded, so shifted with its symbols) and speaks as it would with wide rows."""
    codec = tiny_codec()

    def speak(max_text_chars):
        model = tiny_tts(**DURATIONS, frame_rate=codec.frame_rate, max_seconds=0.01, stop_threshold=0.9999,
                         max_text_chars=max_text_chars)
        tts = TextToSpeech(model, codec, max_streams=2)
        a = tts.start("the fox.", seed=1)
        first = next(a)
        ends = tts.loop.guide_ends[a.slot].clone()
        b = tts.loop.start(model.text.encode("a longer one here."), 0, 1.0, 2, 24)  # past the API's check
        assert torch.equal(tts.loop.guide_ends[a.slot, -ends.shape[0]:], ends)
        assert (tts.loop.guide_ends[a.slot, :-ends.shape[0]] == 0).all()
        audio = [torch.cat([first.audio] + [c.audio for c in a]), torch.cat([c.audio for c in b])]
        return audio, tts.loop.guide_ends.shape[1]

    (narrow, width), (wide, full_width) = speak(8), speak(300)
    assert width < full_width == 300
    torch.testing.assert_close(narrow, wide)
