"""Reading and writing audio files: mono float waveforms in [-1, 1] at a requested sample rate.

Every problem with a file (missing, unreadable, empty, NaN samples, too many channels, too long)
raises :class:`AudioError` with a message that names the file and says what is wrong, so a
training run over thousands of files stops at the first bad one with an actionable message.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

# Rates outside this range are almost surely a broken header rather than real audio.
MIN_PLAUSIBLE_SAMPLE_RATE = 1_000
MAX_PLAUSIBLE_SAMPLE_RATE = 768_000


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


def _check_sample_rate(sample_rate: int, what: str) -> None:
    if not MIN_PLAUSIBLE_SAMPLE_RATE <= sample_rate <= MAX_PLAUSIBLE_SAMPLE_RATE:
        raise AudioError(
            f"{what}: implausible sample rate {sample_rate} Hz "
            f"(expected {MIN_PLAUSIBLE_SAMPLE_RATE}..{MAX_PLAUSIBLE_SAMPLE_RATE} Hz)"
        )


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    mix_to_mono: bool = False,
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Read an audio file as a mono waveform at ``sample_rate``.

    Args:
        path: a file soundfile can read (wav, flac, ogg, ...).
        sample_rate: the rate in Hz of the returned waveform; the file is resampled if its own
            rate differs.
        mix_to_mono: average the channels of a multichannel file. Without it a multichannel
            file is an error, so that stereo data is never silently folded.
        max_seconds: refuse files longer than this many seconds (checked from the header,
            before decoding, so a mistaken multi-hour file costs nothing).

    Returns:
        Tensor[L] float32 in [-1, 1], L samples at ``sample_rate`` Hz. Float files with peaks
        beyond +-1 (and resampling overshoot) are clipped to [-1, 1].

    Raises:
        AudioError: missing or unreadable file, 0 frames, NaN/Inf samples, multichannel audio
            without ``mix_to_mono``, implausible sample rate, or longer than ``max_seconds``.
    """
    path = Path(path)
    _check_sample_rate(int(sample_rate), f"load_audio(sample_rate={sample_rate})")
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot read as audio, the file is corrupt or not in a supported format ({err})") from err

    _check_sample_rate(info.samplerate, str(path))
    if info.frames == 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    if max_seconds is not None and info.duration > max_seconds:
        raise AudioError(f"{path}: {info.duration:.2f} s long, longer than the limit max_seconds={max_seconds} s")
    if info.channels > 1 and not mix_to_mono:
        raise AudioError(
            f"{path}: has {info.channels} channels but mono audio was expected; "
            f"pass mix_to_mono=True (command line: --mix-to-mono) to average the channels"
        )

    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (L, C)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot decode audio, the file is corrupt ({err})") from err
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    non_finite = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
    if non_finite:
        raise AudioError(f"{path}: {non_finite} of {samples.size} samples are NaN or Inf")

    wav = torch.from_numpy(samples).mean(dim=1)  # (L,)
    if file_rate != sample_rate:
        wav = AF.resample(wav, orig_freq=file_rate, new_freq=int(sample_rate))
    return wav.clamp_(-1.0, 1.0).contiguous()


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a waveform as a 16-bit PCM wav file, atomically.

    The file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so a reader never sees a half-written file. Parent folders are created.

    Args:
        path: where to write; the format is always wav.
        wav: Tensor[L] (mono) or Tensor[C x L] (C channels), float; values beyond [-1, 1] are
            clipped.
        sample_rate: in Hz.

    Returns:
        The path written.

    Raises:
        AudioError: NaN/Inf samples, a tensor that is not 1-D or 2-D, or an implausible rate.
    """
    path = Path(path)
    _check_sample_rate(int(sample_rate), f"save_audio({path})")
    samples = torch.as_tensor(wav).detach().to("cpu", torch.float32)
    if samples.dim() not in (1, 2):
        raise AudioError(f"save_audio({path}): expected a tensor of shape (L,) or (C, L), got {tuple(samples.shape)}")
    non_finite = int((~torch.isfinite(samples)).sum())
    if non_finite:
        raise AudioError(f"save_audio({path}): {non_finite} of {samples.numel()} samples are NaN or Inf; refusing to write")
    # libsndfile wraps rather than clips out-of-range floats when converting to PCM.
    samples = samples.clamp(-1.0, 1.0).numpy()
    frames = samples if samples.ndim == 1 else samples.T  # soundfile wants (L, C)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sf.write(handle, frames, int(sample_rate), subtype="PCM_16", format="WAV")
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; an audio file is not
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def list_audio_files(root: str | os.PathLike) -> list[Path]:
    """All .wav/.flac/.ogg files under ``root`` (recursively, any letter case), sorted by path."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
