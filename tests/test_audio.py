"""load_audio / save_audio / list_audio_files: round trips, resampling, and a clear error for each bad file."""

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_audio.audio import AudioError, list_audio_files, load_audio, save_audio

RATE = 16_000


def sine(seconds: float, rate: int = RATE, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_load_mono_wav_matches_written_samples(tmp_path):
    path = tmp_path / "tone.wav"
    samples = sine(0.25)
    sf.write(path, samples, RATE, subtype="FLOAT")
    wav = load_audio(path, RATE)
    assert wav.dtype == torch.float32 and wav.shape == (len(samples),)
    torch.testing.assert_close(wav, torch.from_numpy(samples))


def test_load_resamples_when_rates_differ(tmp_path):
    path = tmp_path / "tone_8k.wav"
    sf.write(path, sine(0.5, rate=8_000), 8_000)
    wav = load_audio(path, RATE)
    assert wav.shape == (RATE // 2,)
    # The 440 Hz tone survives resampling: compare with a tone synthesized at 16 kHz (edges excluded).
    torch.testing.assert_close(wav[200:-200], torch.from_numpy(sine(0.5))[200:-200], atol=2e-3, rtol=0)


def test_load_flac_and_ogg(tmp_path):
    for suffix in (".flac", ".ogg"):
        path = tmp_path / f"tone{suffix}"
        sf.write(path, sine(0.2), RATE)
        wav = load_audio(path, RATE)
        assert abs(wav.shape[0] - int(0.2 * RATE)) < 1000 and wav.abs().max() <= 1.0


def test_stereo_is_an_error_unless_mixed(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = sine(0.1), sine(0.1, freq=880.0)
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"stereo\.wav.*2 channels.*mix_to_mono=True"):
        load_audio(path, RATE)
    wav = load_audio(path, RATE, mix_to_mono=True)
    torch.testing.assert_close(wav, torch.from_numpy((left + right) / 2))


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nowhere\.wav: no such file"):
        load_audio(tmp_path / "nowhere.wav", RATE)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path, RATE)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"corrupt\.wav: cannot read as audio.*corrupt"):
        load_audio(path, RATE)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(AudioError, match=r"empty\.wav: empty audio \(0 frames\)"):
        load_audio(path, RATE)


def test_nan_and_inf_samples_are_counted(tmp_path):
    path = tmp_path / "nan.wav"
    samples = sine(0.1)
    samples[[3, 10, 20]] = np.nan
    samples[30] = np.inf
    sf.write(path, samples, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=rf"nan\.wav: 4 of {len(samples)} samples are NaN or Inf"):
        load_audio(path, RATE)


def test_too_long_is_refused_with_length_and_limit(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(3 * RATE, dtype=np.float32), RATE)
    with pytest.raises(AudioError, match=r"long\.wav: 3\.00 s long.*max_seconds=2\.5"):
        load_audio(path, RATE, max_seconds=2.5)
    assert load_audio(path, RATE, max_seconds=3.0).shape == (3 * RATE,)


def test_implausible_sample_rate(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), 100)  # a 100 Hz header: a broken file
    with pytest.raises(AudioError, match=r"slow\.wav: implausible sample rate 100 Hz"):
        load_audio(path, RATE)
    with pytest.raises(AudioError, match="implausible sample rate 0 Hz"):
        load_audio(path, 0)


def test_float_peaks_beyond_one_are_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([0.0, 1.5, -2.0, 0.5], dtype=np.float32), RATE, subtype="FLOAT")
    torch.testing.assert_close(load_audio(path, RATE), torch.tensor([0.0, 1.0, -1.0, 0.5]))


def test_save_then_load_round_trip_within_16_bit_precision(tmp_path):
    wav = torch.from_numpy(sine(0.1))
    path = save_audio(tmp_path / "a" / "b" / "out.wav", wav, RATE)  # parent folders are created
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
    torch.testing.assert_close(load_audio(path, RATE), wav, atol=1 / 2**15, rtol=0)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temporary file left behind


def test_save_clips_out_of_range_instead_of_wrapping(tmp_path):
    path = save_audio(tmp_path / "clip.wav", torch.tensor([2.0, -3.0, 0.0]), RATE)
    assert load_audio(path, RATE)[0] > 0.99 and load_audio(path, RATE)[1] == -1.0


def test_save_multichannel(tmp_path):
    wav = torch.from_numpy(np.stack([sine(0.05), -sine(0.05)]))  # (C, L)
    path = save_audio(tmp_path / "stereo.wav", wav, RATE)
    assert sf.info(path).channels == 2


def test_save_refuses_nan_and_keeps_existing_file(tmp_path):
    path = save_audio(tmp_path / "keep.wav", torch.zeros(10), RATE)
    before = path.read_bytes()
    with pytest.raises(AudioError, match="1 of 10 samples are NaN or Inf; refusing to write"):
        save_audio(path, torch.tensor([0.0] * 9 + [float("nan")]), RATE)
    assert path.read_bytes() == before


def test_save_refuses_wrong_shape(tmp_path):
    with pytest.raises(AudioError, match=r"shape \(L,\) or \(C, L\)"):
        save_audio(tmp_path / "x.wav", torch.zeros(1, 2, 3), RATE)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = save_audio(tmp_path / "keep.wav", torch.zeros(10), RATE)
    before = path.read_bytes()

    def failing_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_audio(path, torch.ones(10) * 0.5, RATE)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.wav"]


def test_list_audio_files(tmp_path):
    for name in ("b/one.wav", "a/two.FLAC", "three.ogg", "notes.txt", "a/deeper/four.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path)]
    assert found == ["a/deeper/four.wav", "a/two.FLAC", "b/one.wav", "three.ogg"]
