"""The spoken-words corpus (espeak-ng and flite) at tiny size: layout, lengths, rate, voices, determinism, idempotence, errors."""

import json
import os
import shutil

import pytest
import soundfile as sf

from mamba_audio.data import AudioFolder, CorpusError, build_spoken_digits
from mamba_audio.data.corpus import COMPLETION_MARKER

# Not skipped when the synthesizers are missing: `make test` installs them, and a missing one is a set-up bug.
assert shutil.which("espeak-ng") and shutil.which("flite"), "needs espeak-ng and flite (`make setup` installs them)"

TINY = dict(words=("one", "seven"), per_word=3, sample_rate=16_000, seconds=1.0, seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    return build_spoken_digits(tmp_path_factory.mktemp("corpus") / "digits", **TINY)


def files_and_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_lengths_and_rate(tiny_corpus):
    wavs = sorted(p.relative_to(tiny_corpus).as_posix() for p in tiny_corpus.rglob("*.wav"))
    assert len(wavs) == 6 and {w.split("/")[0] for w in wavs} == {"one", "seven"}
    assert all("_nohash_" in w for w in wavs)
    for wav in wavs:
        info = sf.info(tiny_corpus / wav)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16_000, 1, 16_000, "PCM_16")
        samples, _ = sf.read(tiny_corpus / wav)
        assert 0.05 < abs(samples).max() <= 1.0, "each clip holds a word, not silence"

    validation = (tiny_corpus / "validation_list.txt").read_text().split()
    testing = (tiny_corpus / "testing_list.txt").read_text().split()
    assert len(validation) == len(testing) == 2  # one of each word's three clips for each
    assert {p.split("/")[0] for p in validation} == {p.split("/")[0] for p in testing} == {"one", "seven"}
    assert not set(validation) & set(testing) and set(validation) | set(testing) <= set(wavs)
    assert json.loads((tiny_corpus / COMPLETION_MARKER).read_text())["clips"] == 6

    # AudioFolder reads it as Speech Commands.
    train = AudioFolder(tiny_corpus, 16_000, split="train")
    assert train.classes == ["one", "seven"] and len(train) == 2
    assert len(AudioFolder(tiny_corpus, 16_000, split="test")) == 2


def test_same_seed_gives_byte_identical_files(tiny_corpus, tmp_path):
    again = build_spoken_digits(tmp_path / "digits", **{**TINY, "progress": True})
    assert files_and_bytes(again) == files_and_bytes(tiny_corpus)


def test_other_seed_gives_other_audio(tiny_corpus, tmp_path):
    other = build_spoken_digits(tmp_path / "digits", **{**TINY, "seed": 1})
    first, second = files_and_bytes(tiny_corpus), files_and_bytes(other)
    shared = set(first) & set(second)
    assert all(first[name] != second[name] for name in shared if name.endswith(".wav"))


def test_second_call_does_nothing(tiny_corpus):
    before = {p: p.stat().st_mtime_ns for p in tiny_corpus.rglob("*")}
    assert build_spoken_digits(tiny_corpus, **TINY) == tiny_corpus
    assert {p: p.stat().st_mtime_ns for p in tiny_corpus.rglob("*")} == before


def test_other_arguments_are_an_error_unless_overwrite(tmp_path):
    root = build_spoken_digits(tmp_path / "digits", **{**TINY, "words": ("two",)})
    with pytest.raises(CorpusError, match=r"other arguments \(per_word: 3 there, 4 asked\).*overwrite=True"):
        build_spoken_digits(root, **{**TINY, "words": ("two",), "per_word": 4})
    build_spoken_digits(root, **{**TINY, "words": ("two",), "per_word": 4}, overwrite=True)
    assert len(list(root.rglob("*.wav"))) == 4
    assert not list(tmp_path.glob(".*partial")), "no staging folder is left behind"


def test_refuses_a_folder_holding_something_else(tmp_path):
    (tmp_path / "mine.txt").write_text("not a corpus")
    with pytest.raises(CorpusError, match="not empty and holds no finished corpus"):
        build_spoken_digits(tmp_path, **TINY)


def test_flite_voices_and_espeak_voices_in_one_corpus(tmp_path):
    root = build_spoken_digits(tmp_path / "mixed", **{**TINY, "words": ("five",), "per_word": 4},
                               voices=("flite:slt", "flite:kal16", "en-us"))
    speakers = sorted(p.name.split("_nohash_")[0] for p in root.glob("five/*.wav"))
    assert speakers == ["en-us", "flite-kal16", "flite-slt", "flite-slt"]
    for wav in root.glob("five/flite-*.wav"):
        samples, rate = sf.read(wav)
        assert rate == 16_000 and len(samples) == 16_000 and 0.05 < abs(samples).max() <= 1.0
    record = json.loads((root / COMPLETION_MARKER).read_text())
    assert set(record["synthesizer_versions"]) == {"espeak-ng", "flite"}
    assert "flite-2" in record["synthesizer_versions"]["flite"]


def test_default_voices_come_from_both_synthesizers_unless_one_is_chosen(tiny_corpus, tmp_path):
    used = json.loads((tiny_corpus / COMPLETION_MARKER).read_text())["voices_used"]
    assert {"flite:slt", "en-us"} <= set(used)
    only_flite = build_spoken_digits(tmp_path / "flite", **{**TINY, "words": ("two",)}, synthesizers=("flite",))
    assert all(p.name.startswith("flite-") for p in only_flite.glob("two/*.wav"))
    with pytest.raises(CorpusError, match=r"synthesizers must be some of \['espeak-ng', 'flite'\]"):
        build_spoken_digits(tmp_path / "x", **TINY, synthesizers=("festival",))


@pytest.mark.parametrize("missing", ["espeak-ng", "flite"])
def test_a_missing_synthesizer_names_its_debian_package(tmp_path, monkeypatch, missing):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for present in {"espeak-ng", "flite"} - {missing}:
        os.symlink(shutil.which(present), bin_dir / present)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(CorpusError, match=rf"{missing} was not found on PATH.*apt-get install {missing}"):
        build_spoken_digits(tmp_path / "digits", **TINY)


def test_unknown_voice(tmp_path):
    with pytest.raises(CorpusError, match=r"voices not installed: \['flite:nobody', 'xx-nowhere'\]"):
        build_spoken_digits(tmp_path / "digits", **TINY, voices=("en-us", "xx-nowhere", "flite:nobody"))
    with pytest.raises(CorpusError, match="expected '<synthesizer>:<voice>'"):
        build_spoken_digits(tmp_path / "digits", **TINY, voices=("festival:kal",))


@pytest.mark.parametrize("change, message", [
    ({"words": ("one", "one")}, "without repeats"),
    ({"words": ("../up",)}, "must be letters"),
    ({"per_word": 0}, "per_word must be a positive integer"),
    ({"seconds": 0.0}, "seconds must be between"),
    ({"sample_rate": 10}, "implausible"),
])
def test_bad_arguments(tmp_path, change, message):
    with pytest.raises(CorpusError, match=message):
        build_spoken_digits(tmp_path / "digits", **{**TINY, **change})
