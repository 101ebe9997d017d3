"""What every dataset does to a waveform once it is read: loudness, augmentation, length, tokens.

:class:`ClipDataset` is the base of the datasets in this package. A subclass reads a waveform
(always through :func:`mamba_audio.audio.load_audio`, so resampling and channel mixing behave
the same everywhere) and hands it to :meth:`ClipDataset.make_item`, which applies, in order:

1. loudness normalisation (``loudness="peak"`` or ``"rms"`` to ``loudness_db`` dBFS), measured
   on the audio as read;
2. the augmentation hook ``augment(Tensor[L]) -> Tensor[L']``, on the normalised audio, so a
   random gain or added noise is not undone by step 1;
3. cropping or zero-padding to ``segment_samples``;
4. tokenizing with ``tokenizer``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mamba_audio.tokenizers import Tokenizer

LOUDNESS_MODES = ("peak", "rms")
DEFAULT_LOUDNESS_DB = {"peak": -1.0, "rms": -20.0}  # dBFS; -20 dBFS RMS is a common speech level

Augment = Callable[[torch.Tensor], torch.Tensor]


def normalize_loudness(audio: torch.Tensor, mode: str, target_db: float) -> torch.Tensor:
    """Scale a waveform so that its peak or RMS level is ``target_db`` dBFS.

    Args:
        audio: Tensor[L] float in [-1, 1].
        mode: "peak" (the largest absolute sample) or "rms" (the root mean square).
        target_db: the level in dB relative to full scale (0 dBFS is an amplitude of 1), <= 0.

    Returns:
        Tensor[L] float32, clipped to [-1, 1] (an RMS target can push loud peaks beyond full
        scale). A silent clip is returned unchanged.
    """
    if mode not in LOUDNESS_MODES:
        raise ValueError(f"loudness must be one of {LOUDNESS_MODES} or None, got {mode!r}")
    level = audio.abs().max() if mode == "peak" else audio.pow(2).mean().sqrt()
    if level <= 0:
        return audio
    return (audio * (10 ** (target_db / 20) / level)).clamp(-1.0, 1.0)


def fit_to_length(audio: torch.Tensor, num_samples: int, start: int = 0) -> tuple[torch.Tensor, int]:
    """Crop Tensor[L] to ``audio[start:start + num_samples]`` or zero-pad it at the end.

    Returns:
        Tensor[num_samples] and the number of samples of real audio in it.
    """
    length = audio.shape[0]
    if length > num_samples:
        return audio[start:start + num_samples], num_samples
    return torch.nn.functional.pad(audio, (0, num_samples - length)), length


class ClipDataset(Dataset):
    """Base of the datasets: the options shared by all of them and :meth:`make_item`.

    Args:
        sample_rate: Hz; files at other rates are resampled.
        segment_samples: crop longer clips and zero-pad shorter ones to this many samples.
        tokenizer: also return ``tokens``, the tokenized (cropped, padded) audio.
        mix_to_mono: average the channels of multichannel files (otherwise they are errors).
        random_crop: crop at a random start drawn from ``generator`` (training); otherwise from
            the start of the clip, so evaluation is deterministic.
        generator: torch.Generator for the random crops.
        max_seconds: refuse files longer than this (see :func:`mamba_audio.audio.load_audio`).
        loudness: None, "peak" or "rms": normalise each clip's level to ``loudness_db``.
        loudness_db: target level in dBFS; default -1 for "peak", -20 for "rms".
        augment: a callable Tensor[L] float32 -> Tensor[L'] float32 applied to every clip after
            loudness normalisation and before cropping (e.g. random gain, noise, time shift).
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        segment_samples: int | None = None,
        tokenizer: Tokenizer | None = None,
        mix_to_mono: bool = False,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
        max_seconds: float | None = None,
        loudness: str | None = None,
        loudness_db: float | None = None,
        augment: Augment | None = None,
    ):
        if segment_samples is not None and segment_samples < 1:
            raise ValueError(f"segment_samples must be positive, got {segment_samples}")
        if loudness is not None and loudness not in LOUDNESS_MODES:
            raise ValueError(f"loudness must be one of {LOUDNESS_MODES} or None, got {loudness!r}")
        if loudness_db is not None and (loudness is None or loudness_db > 0):
            raise ValueError(f"loudness_db={loudness_db} needs loudness='peak' or 'rms' and a level <= 0 dBFS")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be a callable on a waveform, got {type(augment).__name__}")
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.tokenizer = tokenizer
        self.mix_to_mono = mix_to_mono
        self.random_crop = random_crop
        self.generator = generator
        self.max_seconds = max_seconds
        self.loudness = loudness
        self.loudness_db = DEFAULT_LOUDNESS_DB.get(loudness) if loudness_db is None else loudness_db
        self.augment = augment

    def make_item(self, audio: torch.Tensor, path: str | os.PathLike, **fields) -> dict:
        """The item for a waveform as read: Tensor[L] float32 at ``sample_rate``.

        Returns:
            ``audio`` Tensor[L'] float32, ``length`` int (samples of real audio before padding),
            ``path`` str, ``sample_rate`` int, ``tokens`` Tensor[L'] long with a tokenizer, and
            ``fields``.
        """
        if self.loudness is not None:
            audio = normalize_loudness(audio, self.loudness, self.loudness_db)
        if self.augment is not None:
            audio = self._augmented(audio, path)
        length = audio.shape[0]
        if self.segment_samples is not None:
            start = 0
            if self.random_crop and length > self.segment_samples:
                start = int(torch.randint(0, length - self.segment_samples + 1, (1,), generator=self.generator))
            audio, length = fit_to_length(audio, self.segment_samples, start)
        item = {"audio": audio, "length": length, "path": str(path), "sample_rate": self.sample_rate}
        if self.tokenizer is not None:
            item["tokens"] = self.tokenizer.encode(audio)
        item.update(fields)
        return item

    def _augmented(self, audio: torch.Tensor, path) -> torch.Tensor:
        out = self.augment(audio)
        if not isinstance(out, torch.Tensor) or out.dim() != 1 or out.shape[0] == 0 or not out.is_floating_point():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{Path(path)}: augment {self.augment!r} must return a non-empty 1-D float "
                             f"tensor (a mono waveform), got {shape}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{Path(path)}: augment {self.augment!r} returned NaN or Inf samples")
        return out.to(torch.float32)
