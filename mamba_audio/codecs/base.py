"""The codec interface: audio (B, L) float <-> tokens (B, K codebooks, F frames) long.

Dimension names: B batch, L samples, K codebooks, F frames. A codec runs at a fixed
``sample_rate`` (Hz) and turns every ``hop_length`` samples into one frame of K tokens,
each in [0, ``codebook_size``), so ``frame_rate = sample_rate / hop_length`` frames per second.
"""

from __future__ import annotations

import abc

import torch

Tensor = torch.Tensor


class CodecError(ValueError):
    """Audio or tokens that do not fit a codec, or codec weights that cannot be found."""


class AudioCodec(abc.ABC):
    """Base class of every codec: checks inputs and outputs; subclasses implement ``_encode`` / ``_decode``.

    ``encode`` pads the end of the audio with zeros up to a whole number of frames (of ``pad_multiple``
    samples, for codecs that need more than one frame's worth), so F = ceil(L / pad_multiple) *
    pad_multiple / hop_length, and ``decode`` returns F * hop_length samples.
    """

    sample_rate: int
    num_codebooks: int
    codebook_size: int
    hop_length: int  # samples per frame

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def pad_multiple(self) -> int:
        """``encode`` pads the audio to a multiple of this many samples."""
        return self.hop_length

    @property
    def device(self) -> torch.device:
        """Where ``decode`` returns audio: a module codec's first parameter or buffer, else the CPU."""
        if isinstance(self, torch.nn.Module):
            for tensor in (*self.parameters(), *self.buffers()):
                return tensor.device
        return torch.device("cpu")

    def num_frames(self, num_samples: int) -> int:
        """F for L = ``num_samples`` samples."""
        padded = -(-num_samples // self.pad_multiple) * self.pad_multiple
        return padded // self.hop_length

    @abc.abstractmethod
    def _encode(self, audio: Tensor) -> Tensor:
        """audio (B, L) float32, L a multiple of ``pad_multiple`` -> tokens (B, K, F) long."""

    @abc.abstractmethod
    def _decode(self, tokens: Tensor) -> Tensor:
        """tokens (B, K, F) long, checked -> audio (B, F * hop_length) float32."""

    def _decode_continuing(self, tokens: Tensor, played: Tensor) -> Tensor:
        """``_decode`` for a codec whose audio is not a function of the tokens alone: continue ``played``
        (B, n) float32, the audio already played for the first n / hop_length frames. Default: ignore it."""
        return self._decode(tokens)

    @torch.no_grad()
    def encode(self, audio: Tensor, sample_rate: int | None = None) -> Tensor:
        """Tensor[B x L] float at ``sample_rate`` (checked when given) -> Tensor[B x K x F] long."""
        self.check_audio(audio, sample_rate)
        audio = audio.float()
        pad = (-audio.shape[1]) % self.pad_multiple
        if pad:
            audio = torch.nn.functional.pad(audio, (0, pad))
        tokens = self._encode(audio)
        expected = (audio.shape[0], self.num_codebooks, audio.shape[1] // self.hop_length)
        if tokens.shape != expected:  # a codec whose frames do not follow from its hop length
            raise RuntimeError(f"{type(self).__name__} produced tokens {tuple(tokens.shape)}, expected {expected}")
        return tokens.long()

    @torch.no_grad()
    def decode(self, tokens: Tensor, played: Tensor | None = None) -> Tensor:
        """Tensor[B x K x F] long -> Tensor[B x (F * hop_length)] float32 at ``sample_rate``.

        ``played``, Tensor[B x n] float (n a multiple of hop_length, at most F * hop_length): when a stream
        decodes its frames a few at a time with some frames of left context, the audio it already played for
        those context frames. A codec whose synthesis is not a function of the tokens alone (SpectralCodec:
        Griffin-Lim chooses the phase) then continues that audio instead of starting afresh; the others
        ignore it. The first n samples of the result are the codec's, not necessarily ``played``."""
        self.check_tokens(tokens)
        if played is None:
            audio = self._decode(tokens.long())
        else:
            self.check_played(played, tokens)
            audio = self._decode_continuing(tokens.long(), played.float())
        return audio.float().reshape(tokens.shape[0], -1)[:, : tokens.shape[2] * self.hop_length]

    def check_audio(self, audio: Tensor, sample_rate: int | None = None) -> None:
        """CodecError unless ``audio`` is a finite float tensor (B, L), L >= 1, at this codec's sample rate."""
        if not isinstance(audio, Tensor) or not audio.is_floating_point():
            raise CodecError(f"audio must be a float tensor, got {type(audio).__name__} "
                             f"{getattr(audio, 'dtype', '')}".rstrip())
        if audio.dim() != 2 or audio.shape[1] == 0:
            raise CodecError(f"audio must be (batch, samples) with at least one sample, got shape {tuple(audio.shape)}"
                             " (mono only; add a batch dimension with audio[None])")
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise CodecError(f"audio at {sample_rate} Hz, but {type(self).__name__} runs at {self.sample_rate} Hz; "
                             "resample it first (mamba_audio.load_audio(path, sample_rate=...) does)")
        if not torch.isfinite(audio).all():
            raise CodecError("audio holds NaN or infinite samples")

    def check_played(self, played: Tensor, tokens: Tensor) -> None:
        """CodecError unless ``played`` can be the audio of the first frames of ``tokens`` (see ``decode``)."""
        limit = tokens.shape[2] * self.hop_length
        if not isinstance(played, Tensor) or not played.is_floating_point():
            raise CodecError(f"played audio must be a float tensor, got {getattr(played, 'dtype', type(played).__name__)}")
        if played.dim() != 2 or played.shape[0] != tokens.shape[0] or played.shape[1] % self.hop_length or (
                played.shape[1] > limit):
            raise CodecError(f"played audio must be (batch {tokens.shape[0]}, a multiple of {self.hop_length} samples "
                             f"up to {limit}), got shape {tuple(played.shape)}")
        if not torch.isfinite(played).all():
            raise CodecError("played audio holds NaN or infinite samples")

    def check_tokens(self, tokens: Tensor) -> None:
        """CodecError unless ``tokens`` is an integer tensor (B, K, F) with K = num_codebooks and ids in range."""
        if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise CodecError(f"tokens must be an integer tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.dim() != 3 or tokens.shape[1] != self.num_codebooks or tokens.shape[2] == 0:
            raise CodecError(f"tokens must be (batch, {self.num_codebooks} codebooks, frames >= 1), "
                             f"got shape {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise CodecError(f"token ids must be in [0, {self.codebook_size}), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sample_rate={self.sample_rate}, num_codebooks={self.num_codebooks}, "
                f"codebook_size={self.codebook_size}, frame_rate={self.frame_rate:g})")
