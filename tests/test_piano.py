"""The piano corpus (music21 scores rendered by fluidsynth) at tiny size: layout, determinism, LongAudioCrops, errors."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from mamba_audio.cli import main
from mamba_audio.data import CorpusError, LongAudioCrops, build_piano_corpus
from mamba_audio.data.corpus import COMPLETION_MARKER
from mamba_audio.data.piano import KEYBOARD_WORKS, SOUNDFONT, choose_pieces, piece_pool

# Not skipped when they are missing: `make test` installs them, and a missing one is a set-up bug.
assert shutil.which("fluidsynth") and SOUNDFONT.is_file(), "needs fluidsynth and fluid-soundfont-gm (`make setup`)"

RATE = 8000
TINY = dict(works=("bach/bwv66.6", "bach/bwv269"), sample_rate=RATE, max_seconds=2.0, progress=False)


@pytest.fixture(scope="module")
def tiny_piano(tmp_path_factory):
    return build_piano_corpus(tmp_path_factory.mktemp("piano") / "corpus", **TINY)


def test_layout_rate_length_and_marker(tiny_piano):
    wavs = sorted(p.name for p in tiny_piano.glob("*.wav"))
    assert wavs == ["000_bach-bwv66.6.wav", "001_bach-bwv269.wav"]
    for name in wavs:
        info = sf.info(tiny_piano / name)
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
        assert info.frames == 2 * RATE, "cut at max_seconds"
        samples, _ = sf.read(tiny_piano / name)
        assert np.abs(samples).max() == pytest.approx(10 ** (-3 / 20), abs=1e-3)  # scaled to -3 dBFS
        assert np.abs(samples[: RATE // 2]).mean() > 1e-3, "music from the start, not silence"
        assert np.abs(samples[-10:]).max() < 0.01, "faded out where it was cut"
    record = json.loads((tiny_piano / COMPLETION_MARKER).read_text())
    assert [p["work"] for p in record["pieces"]] == list(TINY["works"]) and record["total_seconds"] == 4.0


def test_long_audio_crops_read_it(tiny_piano):
    crops = LongAudioCrops(tiny_piano, RATE // 2, sample_rate=RATE, split="train", split_fractions=(0.5, 0.5, 0.0))
    assert len(crops) == 4 and crops[0]["audio"].shape == (RATE // 2,)
    assert len(LongAudioCrops(tiny_piano, RATE // 2, sample_rate=RATE, split="validation",
                              split_fractions=(0.5, 0.5, 0.0))) == 4


def test_same_arguments_give_identical_files_and_build_nothing_twice(tiny_piano, tmp_path):
    again = build_piano_corpus(tmp_path / "again", **TINY)
    for wav in tiny_piano.glob("*.wav"):
        assert (again / wav.name).read_bytes() == wav.read_bytes()
    before = {p: p.stat().st_mtime_ns for p in tiny_piano.iterdir()}
    assert build_piano_corpus(tiny_piano, **TINY) == tiny_piano
    assert {p: p.stat().st_mtime_ns for p in tiny_piano.iterdir()} == before
    with pytest.raises(CorpusError, match=r"other arguments \(max_seconds: 2.0 there, 3.0 asked\)"):
        build_piano_corpus(tiny_piano, **{**TINY, "max_seconds": 3.0})


def test_the_draw_is_fixed_by_the_seed():
    pool = piece_pool()
    assert set(KEYBOARD_WORKS) < set(pool) and len(pool) > 150 and "bach/bwv66.6" in pool
    assert choose_pieces(5, seed=0) == choose_pieces(5, seed=0) != choose_pieces(5, seed=1)
    assert len(set(choose_pieces(len(pool), seed=0))) == len(pool)
    with pytest.raises(CorpusError, match=r"pieces must be between 1 and \d+"):
        choose_pieces(0, seed=0)


def test_missing_fluidsynth_or_soundfont_names_the_debian_package(tmp_path, monkeypatch):
    with pytest.raises(CorpusError, match=r"soundfont .*nothing.sf2 not found; pass the path"):
        build_piano_corpus(tmp_path / "a", **TINY, soundfont=tmp_path / "nothing.sf2")
    monkeypatch.setattr("mamba_audio.data.piano.SOUNDFONT", tmp_path / "FluidR3_GM.sf2")
    with pytest.raises(CorpusError, match=r"apt-get install fluid-soundfont-gm"):
        build_piano_corpus(tmp_path / "b", **TINY, soundfont=tmp_path / "FluidR3_GM.sf2")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusError, match=r"fluidsynth was not found on PATH.*apt-get install fluidsynth"):
        build_piano_corpus(tmp_path / "c", **TINY)
    assert not list(tmp_path.glob(".*partial")), "no staging folder is left behind"


@pytest.mark.parametrize("change, message", [
    ({"works": ("bach/no-such-work",)}, "music21 cannot read corpus score 'bach/no-such-work'"),
    ({"works": ("bach/bwv66.6", "bach/bwv66.6")}, "without repeats"),
    ({"sample_rate": 4000}, "between 8000 and 96000"),
    ({"max_seconds": 0.1}, "longer than the 0.5 s fade-out"),
])
def test_bad_arguments(tmp_path, change, message):
    with pytest.raises(CorpusError, match=message):
        build_piano_corpus(tmp_path / "x", **{**TINY, **change})
    assert not list(tmp_path.glob(".*partial"))


def test_corpus_command(tmp_path, capsys):
    argv = ["--quiet", "corpus", "piano", "--out", str(tmp_path / "p"), "--works", "bach/bwv269",
            "--sample-rate", str(RATE), "--max-seconds", "1"]
    assert main(argv) == 0
    assert [p.name for p in (tmp_path / "p").glob("*.wav")] == ["000_bach-bwv269.wav"]
    assert main([*argv[:-1], "2"]) == 2
    assert "built with other arguments" in capsys.readouterr().err
