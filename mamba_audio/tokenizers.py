"""Sample-level tokenizers: quantize a waveform in [-1, 1] to integer tokens and back.

Both tokenizers map each sample to one of ``2**bits`` tokens, so a 16 kHz clip of L samples
becomes L tokens; the autoregressive model predicts them one by one.

- :class:`MuLawTokenizer` companding (ITU-T G.711 mu-law with mu = 2**bits - 1) spends more
  levels on quiet samples, where speech spends most of its time. It is what SaShiMi and the
  Mamba paper use for SC09 and YouTubeMix.
- :class:`LinearTokenizer` uses uniformly spaced levels.
"""

from __future__ import annotations

import re

import torch

MAX_BITS = 16


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return bits


class MuLawTokenizer:
    """Mu-law companding then uniform quantization to ``2**bits`` tokens.

    Args:
        bits: tokens per sample are in [0, 2**bits).
        normalize: scale each clip so that its peak absolute value is 1 before encoding, as
            SaShiMi does, so quiet recordings use the whole token range. SaShiMi scales by
            min-max, which also shifts the clip's DC offset; we divide by the peak instead,
            so that 0.0 stays the silence token. Decoding cannot undo the scaling.
    """

    def __init__(self, bits: int = 8, normalize: bool = True):
        self.bits = _check_bits(bits)
        self.normalize = normalize
        self.mu = 2**bits - 1

    @property
    def name(self) -> str:
        """The name :func:`build_tokenizer` accepts, e.g. ``"mulaw8"``."""
        return f"mulaw{self.bits}"

    @property
    def vocab_size(self) -> int:
        return 2**self.bits

    @property
    def silence_token(self) -> int:
        """The token of the sample 0.0."""
        return int(self.encode(torch.zeros(1))[0])

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tensor[... x L] float in [-1, 1] (values outside are clipped) -> Tensor[... x L] long in [0, 2**bits).

        With ``normalize`` the peak is taken per clip, over the last dimension.
        """
        x = wav.to(torch.float64).clamp(-1.0, 1.0)
        if self.normalize:
            peak = x.abs().amax(dim=-1, keepdim=True)
            x = x / torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero clip stays zero
        companded = torch.sign(x) * torch.log1p(self.mu * x.abs()) / torch.log1p(torch.tensor(float(self.mu)))
        return ((companded + 1) / 2 * self.mu + 0.5).floor().long().clamp_(0, self.mu)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tensor[... x L] long in [0, 2**bits) -> Tensor[... x L] float32 in [-1, 1]."""
        companded = tokens.to(torch.float64) / self.mu * 2 - 1
        x = torch.sign(companded) * (torch.pow(1.0 + self.mu, companded.abs()) - 1) / self.mu
        return x.to(torch.float32)

    def __repr__(self) -> str:
        return f"MuLawTokenizer(bits={self.bits}, normalize={self.normalize})"


class LinearTokenizer:
    """Uniform quantization of [-1, 1] to ``2**bits`` evenly spaced levels (both ends included)."""

    def __init__(self, bits: int = 8):
        self.bits = _check_bits(bits)
        self.levels = 2**bits

    @property
    def name(self) -> str:
        """The name :func:`build_tokenizer` accepts, e.g. ``"linear8"``."""
        return f"linear{self.bits}"

    @property
    def vocab_size(self) -> int:
        return self.levels

    @property
    def silence_token(self) -> int:
        """The token of the sample 0.0."""
        return int(self.encode(torch.zeros(1))[0])

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tensor[... x L] float in [-1, 1] (values outside are clipped) -> Tensor[... x L] long in [0, 2**bits)."""
        x = wav.to(torch.float64).clamp(-1.0, 1.0)
        return ((x + 1) / 2 * (self.levels - 1) + 0.5).floor().long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tensor[... x L] long in [0, 2**bits) -> Tensor[... x L] float32 in [-1, 1]."""
        return (tokens.to(torch.float64) / (self.levels - 1) * 2 - 1).to(torch.float32)

    def __repr__(self) -> str:
        return f"LinearTokenizer(bits={self.bits})"


Tokenizer = MuLawTokenizer | LinearTokenizer

_NAME = re.compile(r"(mulaw|linear)(\d+)")


def build_tokenizer(name: str) -> Tokenizer:
    """The tokenizer for a name ``"mulaw<bits>"`` or ``"linear<bits>"``, e.g. ``"mulaw8"``, ``"linear16"``.

    Mu-law tokenizers built by name normalize each clip to peak 1 (the SaShiMi recipe).
    """
    match = _NAME.fullmatch(name.strip().lower()) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown tokenizer {name!r}; expected 'mulaw<bits>' or 'linear<bits>', e.g. 'mulaw8'")
    kind, bits = match.group(1), int(match.group(2))
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"tokenizer {name!r}: bits must be in 1..{MAX_BITS}, got {bits}")
    return MuLawTokenizer(bits) if kind == "mulaw" else LinearTokenizer(bits)
