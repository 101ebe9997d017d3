"""The espeak-ng spoken-words corpus at tiny size: layout, lengths, rate, determinism, idempotence, errors."""

import json
import shutil

import pytest
import soundfile as sf

from mamba_audio.data import AudioFolder, CorpusError, build_spoken_digits
from mamba_audio.data.corpus import COMPLETION_MARKER

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")

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


def test_missing_espeak_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusError, match="apt-get install espeak-ng"):
        build_spoken_digits(tmp_path / "digits", **TINY)


def test_unknown_voice(tmp_path):
    with pytest.raises(CorpusError, match=r"voices not installed: \['xx-nowhere'\]"):
        build_spoken_digits(tmp_path / "digits", **TINY, voices=("en-us", "xx-nowhere"))


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
