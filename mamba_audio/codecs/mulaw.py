"""Mu-law samples as the one-codebook codec: every sample is a frame (frame rate = sample rate)."""

from __future__ import annotations

import torch

from mamba_audio.tokenizers import MuLawTokenizer

from .base import AudioCodec

Tensor = torch.Tensor


class MuLawCodec(AudioCodec):
    """K = 1 codebook of ``2**bits`` mu-law levels, F = L frames, hop 1 sample.

    Wraps :class:`mamba_audio.tokenizers.MuLawTokenizer`, so its tokens are exactly the tokens
    ``SaShiMiLM`` models; ``normalize`` scales each clip to peak 1 before encoding, as there.
    """

    hop_length = 1
    num_codebooks = 1

    def __init__(self, bits: int = 8, sample_rate: int = 16000, normalize: bool = True):
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        self.tokenizer = MuLawTokenizer(bits, normalize=normalize)
        self.sample_rate = sample_rate
        self.codebook_size = self.tokenizer.vocab_size

    def _encode(self, audio: Tensor) -> Tensor:
        return self.tokenizer.encode(audio)[:, None, :]

    def _decode(self, tokens: Tensor) -> Tensor:
        return self.tokenizer.decode(tokens[:, 0, :])
