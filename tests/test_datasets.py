"""The dataset loaders on tiny fixtures in the real layouts: SC09, Speech Commands, LJSpeech, LibriSpeech, long recordings."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.datasets

from mamba_audio.audio import AudioError, load_audio
from mamba_audio.data import (
    SC09, SPEECH_COMMANDS_WORDS, AudioFolder, DataLayoutError, LibriSpeech, LJSpeech, LongAudioCrops,
    SpeechCommands, collate_audio,
)
from mamba_audio.tokenizers import LinearTokenizer, MuLawTokenizer

from conftest import LONG_RATE, RATE
from conftest import write_audio as write


# -- Speech Commands and SC09 ---------------------------------------------------------------------

def test_sc09_is_the_ten_digits_padded_to_one_second(speech_commands):
    data = SC09(speech_commands)
    assert data.classes == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert len(data) == 20  # the other 25 words and the background noise are ignored
    for item in (data[0], data[len(data) - 1]):
        assert item["audio"].shape == (16_000,) and item["sample_rate"] == 16_000
        assert item["path"].split("/")[-2] == data.classes[item["label"]]
    assert sorted(data[i]["label"] for i in range(len(data))) == sorted(list(range(10)) * 2)
    item = data[0]
    assert 4000 <= item["length"] < 5000 and (item["audio"][item["length"]:] == 0).all()


def test_sc09_splits_follow_the_lists(speech_commands):
    def names(split):
        return sorted(f.relative_to(speech_commands).as_posix() for f in SC09(speech_commands, split=split).files)

    assert names("validation") == ["zero/aaaa1111_nohash_0.wav"]  # bed/ is not a digit
    assert names("test") == ["nine/bbbb2222_nohash_0.wav"]
    assert len(names("train")) == 18


def test_speech_commands_has_35_classes_and_skips_background_noise(speech_commands):
    data = SpeechCommands(speech_commands, split="train")
    assert len(data.classes) == 35 and data.classes == sorted(data.classes)
    assert len(data) == 70 - 4
    assert not any("_background_noise_" in str(f) for f in data.files)
    item = data[data.files.index(speech_commands / "marvin" / "aaaa1111_nohash_0.wav")]
    assert data.classes[item["label"]] == "marvin"


def test_speech_commands_in_torchaudios_download_folder(speech_commands):
    parent = speech_commands.parent / "downloads"
    (parent / "SpeechCommands").mkdir(parents=True)
    speech_commands.rename(parent / "SpeechCommands" / "speech_commands_v0.02")
    assert len(SC09(parent)) == 20


def test_download_is_passed_to_torchaudio(speech_commands, monkeypatch):
    parent = speech_commands.parent / "empty"
    calls = []

    class FakeDownload:  # stands in for the network: "extracts" the fixture where torchaudio would
        def __init__(self, root, download=False):
            calls.append(download)
            (root / "SpeechCommands").mkdir(parents=True)
            speech_commands.rename(root / "SpeechCommands" / "speech_commands_v0.02")

    monkeypatch.setattr(torchaudio.datasets, "SPEECHCOMMANDS", FakeDownload)
    assert len(SC09(parent, download=True)) == 20 and calls == [True]


def test_sc09_wrong_rate_is_resampled_and_stereo_mixed_when_asked(speech_commands):
    write(speech_commands / "five" / "aaaa1111_nohash_0.wav", 4000, rate=8000)  # 0.5 s at 8 kHz
    stereo = write(speech_commands / "six" / "aaaa1111_nohash_0.wav", 1000, channels=2)
    data = SC09(speech_commands, segment_samples=None)
    five = data[data.files.index(speech_commands / "five" / "aaaa1111_nohash_0.wav")]
    assert five["length"] == 8000 and five["audio"].shape == (8000,)
    six = data.files.index(speech_commands / "six" / "aaaa1111_nohash_0.wav")
    with pytest.raises(AudioError, match="2 channels.*mix_to_mono=True"):
        data[six]
    mixed = SC09(speech_commands, segment_samples=None, mix_to_mono=True)[six]["audio"]
    torch.testing.assert_close(mixed, torch.from_numpy(stereo.mean(axis=1)).clamp(-1, 1))


@pytest.mark.parametrize("make", ["missing", "empty", "some_digits_missing"])
def test_speech_commands_bad_roots_name_the_layout_and_the_url(speech_commands, make):
    root = speech_commands.parent / "nothing"
    if make == "empty":
        root.mkdir()
    if make == "some_digits_missing":
        root = speech_commands
        for name in ("three", "seven"):
            for f in (root / name).iterdir():
                f.unlink()
    with pytest.raises(DataLayoutError) as caught:
        SC09(root)
    message = str(caught.value)
    assert str(root) in message and "<speaker>_nohash_<n>.wav" in message and "validation_list.txt" in message
    assert "speech_commands_v0.02.tar.gz" in message and "download=True" in message
    if make == "some_digits_missing":
        assert "2 of the 10 classes: ['three', 'seven']" in message


def test_sc09_classes_cannot_be_changed(speech_commands):
    with pytest.raises(TypeError, match="ten digit classes"):
        SC09(speech_commands, classes=("yes", "no"))


# -- the shared options ---------------------------------------------------------------------------

def test_tokens_mulaw_and_linear(speech_commands):
    for tokenizer in (MuLawTokenizer(8), LinearTokenizer(10)):
        item = SC09(speech_commands, tokenizer=tokenizer)[3]
        assert item["tokens"].shape == (16_000,) and torch.equal(item["tokens"], tokenizer.encode(item["audio"]))
        assert int(item["tokens"].max()) < tokenizer.vocab_size


@pytest.mark.parametrize("mode, target_db", [("peak", -6.0), ("rms", -30.0), ("peak", None), ("rms", None)])
def test_loudness_normalisation(speech_commands, mode, target_db):
    item = SC09(speech_commands, segment_samples=None, loudness=mode, loudness_db=target_db)[0]
    level = item["audio"].abs().max() if mode == "peak" else item["audio"].pow(2).mean().sqrt()
    expected = {"peak": -1.0, "rms": -20.0}[mode] if target_db is None else target_db
    assert 20 * torch.log10(level).item() == pytest.approx(expected, abs=1e-3)


def test_loudness_of_a_padded_clip_is_measured_on_the_real_audio(speech_commands):
    item = SC09(speech_commands, loudness="rms", loudness_db=-20.0)[0]  # padded to 16000
    real = item["audio"][: item["length"]]
    assert 20 * torch.log10(real.pow(2).mean().sqrt()).item() == pytest.approx(-20.0, abs=1e-3)


def test_bad_loudness_options(speech_commands):
    with pytest.raises(ValueError, match="loudness must be one of"):
        SC09(speech_commands, loudness="lufs")
    with pytest.raises(ValueError, match="needs loudness='peak' or 'rms'"):
        SC09(speech_commands, loudness_db=-20.0)


def test_augment_runs_before_the_crop_and_after_loudness(speech_commands):
    seen = []

    def augment(wav):
        seen.append(wav.abs().max().item())
        return torch.cat([torch.zeros(100), wav * 0.5])  # a delay and a gain

    plain = SC09(speech_commands, segment_samples=2000, loudness="peak", loudness_db=-6.0)[0]
    augmented = SC09(speech_commands, segment_samples=2000, loudness="peak", loudness_db=-6.0, augment=augment)[0]
    assert seen == [pytest.approx(10 ** (-6 / 20), rel=1e-5)]
    assert augmented["audio"].shape == (2000,) and (augmented["audio"][:100] == 0).all()
    torch.testing.assert_close(augmented["audio"][100:], plain["audio"][:1900] * 0.5)


@pytest.mark.parametrize("bad", [lambda wav: wav[None, :], lambda wav: wav.numpy(), lambda wav: wav * float("nan")])
def test_augment_returning_something_else_is_an_error_naming_the_file(speech_commands, bad):
    data = SC09(speech_commands, augment=bad)
    with pytest.raises(ValueError, match=r"zero/aaaa1111_nohash_0\.wav: augment"):
        data[0]


def test_the_options_reach_audio_folder_too(speech_commands):
    item = AudioFolder(speech_commands, RATE, loudness="peak", loudness_db=-3.0, augment=lambda w: w.flip(0))[0]
    assert 20 * torch.log10(item["audio"].abs().max()).item() == pytest.approx(-3.0, abs=1e-3)


# -- LJSpeech -------------------------------------------------------------------------------------

@pytest.fixture
def ljspeech(tmp_path):
    base = tmp_path / "LJSpeech-1.1"
    rows = [("LJ001-0001", "Printing, in the only sense", "printing, in the only sense"),
            ("LJ001-0002", "in 1850 \"we\" said", "in eighteen fifty \"we\" said"),
            ("LJ002-0001", "the end", "the end")]
    for i, (clip_id, _, _) in enumerate(rows):
        write(base / "wavs" / f"{clip_id}.wav", 2205 * (i + 1), rate=22_050, seed=i)
    (base / "metadata.csv").write_text("".join(f"{a}|{b}|{c}\n" for a, b, c in rows), encoding="utf-8")
    return tmp_path


def test_ljspeech_items_carry_transcripts(ljspeech):
    data = LJSpeech(ljspeech)
    assert len(data) == 3 and data.sample_rate == 22_050
    item = data[1]
    assert item["transcript"] == 'in 1850 "we" said' and item["normalized_transcript"] == 'in eighteen fifty "we" said'
    assert item["speaker_id"] == 0 and item["sample_rate"] == 22_050 and item["audio"].shape == (4410,)
    assert item["path"].endswith("LJSpeech-1.1/wavs/LJ001-0002.wav")


def test_ljspeech_resampled_from_its_own_folder(ljspeech):
    item = LJSpeech(ljspeech / "LJSpeech-1.1", sample_rate=16_000)[0]
    assert item["audio"].shape == (1600,) and item["sample_rate"] == 16_000


def test_ljspeech_batches_with_collate(ljspeech):
    data = LJSpeech(ljspeech, tokenizer=MuLawTokenizer(8))
    batch = collate_audio([data[0], data[2]])
    assert batch["audio"].shape == batch["tokens"].shape == (2, 6615)
    assert batch["transcript"] == ["Printing, in the only sense", "the end"]
    assert batch["speaker_id"].tolist() == [0, 0] and batch["lengths"].tolist() == [2205, 6615]


@pytest.mark.parametrize("make, message", [
    ("missing", "no metadata.csv and wavs/ found"),
    ("bad_row", r"metadata\.csv, line 2: expected 3 fields"),
    ("missing_wav", r"1 clips of metadata\.csv have no wav file \(first: LJ002-0001\.wav\)"),
])
def test_ljspeech_bad_roots(ljspeech, make, message):
    root = ljspeech
    if make == "missing":
        root = ljspeech / "elsewhere"
    if make == "bad_row":
        metadata = ljspeech / "LJSpeech-1.1" / "metadata.csv"
        metadata.write_text(metadata.read_text().replace("LJ001-0002|", "LJ001-0002 "))
    if make == "missing_wav":
        (ljspeech / "LJSpeech-1.1" / "wavs" / "LJ002-0001.wav").unlink()
    with pytest.raises(DataLayoutError, match=message) as caught:
        LJSpeech(root)
    assert "LJSpeech-1.1/metadata.csv" in str(caught.value) and "LJSpeech-1.1.tar.bz2" in str(caught.value)


# -- LibriSpeech ----------------------------------------------------------------------------------

@pytest.fixture
def librispeech(tmp_path):
    """LibriSpeech/dev-clean: speaker 19 chapter 198 (two utterances), speaker 84 chapter 121123 (one)."""
    subset = tmp_path / "LibriSpeech" / "dev-clean"
    chapters = {("19", "198"): ["NORTHANGER ABBEY", "CHAPTER ONE"], ("84", "121123"): ["GO DO YOU HEAR"]}
    for (speaker, chapter), lines in chapters.items():
        folder = subset / speaker / chapter
        for i in range(len(lines)):
            write(folder / f"{speaker}-{chapter}-{i:04d}.flac", 1600 * (i + 1), seed=i)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text(
            "".join(f"{speaker}-{chapter}-{i:04d} {line}\n" for i, line in enumerate(lines)))
    return tmp_path


def test_librispeech_items_carry_transcript_and_speaker(librispeech):
    data = LibriSpeech(librispeech, "dev-clean")
    assert len(data) == 3
    items = [data[i] for i in range(3)]
    assert [item["transcript"] for item in items] == ["NORTHANGER ABBEY", "CHAPTER ONE", "GO DO YOU HEAR"]
    assert [(item["speaker_id"], item["chapter_id"], item["utterance_id"]) for item in items] == \
        [(19, 198, 0), (19, 198, 1), (84, 121123, 0)]
    assert items[1]["audio"].shape == (3200,) and items[1]["path"].endswith("dev-clean/19/198/19-198-0001.flac")
    batch = collate_audio(items)
    assert batch["speaker_id"].tolist() == [19, 19, 84] and batch["transcript"][2] == "GO DO YOU HEAR"


def test_librispeech_from_its_own_folder_with_a_wrong_rate_file(librispeech):
    write(librispeech / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123-0000.flac", 800, rate=8000)
    data = LibriSpeech(librispeech / "LibriSpeech", "dev-clean", segment_samples=2000)
    item = data[2]
    assert item["length"] == 1600 and item["audio"].shape == (2000,)


def test_librispeech_bad_roots(librispeech):
    with pytest.raises(DataLayoutError, match=r"no LibriSpeech/test-other folder.*openslr\.org/12"):
        LibriSpeech(librispeech, "test-other")
    with pytest.raises(ValueError, match="subset must be one of"):
        LibriSpeech(librispeech, "dev")
    (librispeech / "LibriSpeech" / "dev-clean" / "19" / "198" / "19-198.trans.txt").unlink()
    data = LibriSpeech(librispeech, "dev-clean")
    with pytest.raises(DataLayoutError, match=r"19-198\.trans\.txt.*<speaker>-<chapter>\.trans\.txt"):
        data[0]
    for flac in librispeech.rglob("*.flac"):
        flac.unlink()
    with pytest.raises(DataLayoutError, match=r"dev-clean: no \.flac files"):
        LibriSpeech(librispeech, "dev-clean")


# -- long recordings ------------------------------------------------------------------------------

def long_crops(root, **kwargs):
    return LongAudioCrops(root, 1000, sample_rate=LONG_RATE, mix_to_mono=True, **kwargs)


def test_split_by_file_in_sorted_order(recordings):
    splits = {s: [f.name for f in long_crops(recordings, split=s, split_fractions=(0.5, 0.25, 0.25)).files]
              for s in ("train", "validation", "test")}
    assert splits == {"train": ["piece_0.wav", "piece_1.wav", "piece_2.wav", "piece_3.wav"],
                      "validation": ["piece_4.wav", "piece_5.wav"], "test": ["piece_6.wav", "piece_7.wav"]}
    default = {s: len(long_crops(recordings, split=s).files) for s in ("train", "validation", "test")}
    assert default == {"train": 6, "validation": 1, "test": 1}  # 88/6/6 of 8 files, at least one each
    assert len(long_crops(recordings).files) == 8


def test_random_crops_are_slices_fixed_by_seed_and_epoch(recordings):
    data = long_crops(recordings, split="train", split_fractions=(0.5, 0.25, 0.25), seed=3)
    assert data.random_crops and len(data) == (4000 + 5000 + 6000 + 7000) // 1000
    assert data.file_samples == [4000, 5000, 6000, 7000]  # the 16 kHz file counted at 8 kHz
    epoch0 = [data[i] for i in range(len(data))]
    for item in epoch0:
        full = load_audio(item["path"], LONG_RATE)
        assert item["audio"].shape == (1000,) and item["length"] == 1000
        torch.testing.assert_close(item["audio"], full[item["start"]:item["start"] + 1000])
    again = long_crops(recordings, split="train", split_fractions=(0.5, 0.25, 0.25), seed=3)
    assert [again.crop_position(i) for i in reversed(range(len(again)))] == \
        [(data.files.index(Path(it["path"])), it["start"]) for it in reversed(epoch0)]
    data.set_epoch(1)
    epoch1 = [data.crop_position(i) for i in range(len(data))]
    data.set_epoch(0)
    epoch0_positions = [data.crop_position(i) for i in range(len(data))]
    assert epoch1 != epoch0_positions
    other_seed = long_crops(recordings, split="train", split_fractions=(0.5, 0.25, 0.25), seed=4)
    assert [other_seed.crop_position(i) for i in range(len(data))] != epoch0_positions
    many = long_crops(recordings, split="train", split_fractions=(0.5, 0.25, 0.25), crops_per_epoch=200)
    positions = [many.crop_position(i) for i in range(200)]
    assert {f for f, _ in positions} == {0, 1, 2, 3} and len({s for _, s in positions}) > 100


def test_evaluation_crops_tile_each_file(recordings):
    data = long_crops(recordings, split="test", split_fractions=(0.5, 0.25, 0.25))
    assert not data.random_crops
    assert [data.crop_position(i) for i in range(len(data))] == [(0, 0), (0, 1000)] + [(1, s) for s in range(0, 9000, 1000)]
    short = data[0]  # piece_6: 2500 samples give two whole crops; the tail is dropped
    assert short["start"] == 0 and short["length"] == 1000
    tiny = LongAudioCrops(recordings, 3000, sample_rate=LONG_RATE, mix_to_mono=True, split="test",
                          split_fractions=(0.5, 0.25, 0.25))
    assert tiny.crop_position(0) == (0, 0) and tiny[0]["length"] == 2500 and tiny[0]["audio"].shape == (3000,)
    with pytest.raises(IndexError):
        data.crop_position(len(data))


def test_long_crops_take_the_shared_options(recordings):
    data = long_crops(recordings, split="validation", split_fractions=(0.5, 0.25, 0.25),
                      tokenizer=MuLawTokenizer(8), loudness="rms", loudness_db=-25.0)
    item = data[len(data) - 1]  # from piece_5, the stereo file
    assert item["path"].endswith("piece_5.wav") and item["tokens"].shape == (1000,)
    assert 20 * torch.log10(item["audio"].pow(2).mean().sqrt()).item() == pytest.approx(-25.0, abs=1e-3)
    with pytest.raises(AudioError, match="2 channels"):
        LongAudioCrops(recordings, 1000, sample_rate=LONG_RATE, split="validation",
                       split_fractions=(0.5, 0.25, 0.25))[len(data) - 1]
    with pytest.raises(TypeError, match="random_crop is not an option"):
        long_crops(recordings, random_crop=True)
    restored = pickle.loads(pickle.dumps(data))
    assert restored._cached is None and torch.equal(restored[0]["audio"], data[0]["audio"])


def test_long_crops_bad_roots(recordings, tmp_path):
    with pytest.raises(DataLayoutError, match=r"no such folder; expected a folder of long recordings.*huggingface"):
        long_crops(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="no audio files found; expected a folder of long recordings"):
        long_crops(tmp_path / "empty")
    for f in sorted(recordings.glob("*.wav"))[2:]:
        f.unlink()
    with pytest.raises(DataLayoutError, match=r"split='validation' gets none of the 2 files"):
        long_crops(recordings, split="validation")
    (recordings / "piece_1.wav").write_bytes(b"RIFF not really")
    with pytest.raises(DataLayoutError, match=r"piece_1\.wav: cannot read as audio"):
        long_crops(recordings)
    with pytest.raises(ValueError, match="split_fractions must be 3 non-negative numbers"):
        long_crops(recordings, split="train", split_fractions=(0.5, 0.5, 0.5))
