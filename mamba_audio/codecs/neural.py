"""Adapters for pretrained neural codecs: EnCodec and DAC (through ``transformers``) and SNAC (``snac``).

Each wraps a model of the real architecture: ``from_pretrained`` loads its weights from a local
directory or the local Hugging Face cache (see ``weights.find_codec_files``); the constructor takes
a model built any other way (a randomly initialised one in the tests). The packages are optional
(``pip install 'mamba-audio[codecs]'``) and imported only when an adapter is built.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from .base import AudioCodec, CodecError
from .weights import find_codec_files, require_package

Tensor = torch.Tensor
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class EnCodecCodec(AudioCodec):
    """EnCodec (Défossez et al., 2022), a ``transformers.EncodecModel``: K codebooks set by ``bandwidth``.

    The 24 kHz model runs at 75 frames/s with 1024-way codebooks; bandwidth 1.5/3/6/12/24 kbps gives
    K = 2/4/8/16/32. Models that encode in overlapping chunks with a loudness scale per chunk (the
    48 kHz model) are refused: tokens (B, K, F) cannot carry the scales.
    """

    def __init__(self, model: nn.Module, bandwidth: float | None = None):
        config = model.config
        if config.chunk_length_s is not None or config.normalize:
            raise CodecError("this EnCodec model encodes in chunks with a loudness scale each (the 48 kHz model); "
                             "tokens (B, K, F) cannot carry the scales: use a model without chunking (24 kHz)")
        bandwidth = config.target_bandwidths[0] if bandwidth is None else float(bandwidth)
        if bandwidth not in config.target_bandwidths:
            raise CodecError(f"EnCodec bandwidth must be one of {config.target_bandwidths} kbps, got {bandwidth}")
        self.model = _frozen(model)
        self.bandwidth = bandwidth
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = int(math.prod(config.upsampling_ratios))
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(bandwidth)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "facebook/encodec_24khz", bandwidth: float | None = 6.0,
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        """Load a transformers-format EnCodec (``config.json`` + ``model.safetensors``), never downloading."""
        transformers = require_package("transformers", "transformers", "EnCodec")
        directory = find_codec_files(name_or_path, "config.json", HF_WEIGHTS, cache_dir)
        model = transformers.EncodecModel.from_pretrained(directory, local_files_only=True)
        return cls(model.to(device), bandwidth)

    def _encode(self, audio: Tensor) -> Tensor:
        out = self.model.encode(audio[:, None].to(_device(self.model)), bandwidth=self.bandwidth, return_dict=True)
        return out.audio_codes[0]  # (chunks = 1, B, K, F) -> (B, K, F)

    def _decode(self, tokens: Tensor) -> Tensor:
        codes = tokens[None].to(_device(self.model))
        return self.model.decode(codes, [None], return_dict=True).audio_values[:, 0]


class DACCodec(AudioCodec):
    """The Descript Audio Codec (Kumar et al., 2023), a ``transformers.DacModel``.

    The 44.1 kHz model has 9 codebooks of 1024 at 86.1 frames/s; ``num_codebooks`` keeps the first K
    (residual quantisation: fewer codebooks, coarser audio).
    """

    def __init__(self, model: nn.Module, num_codebooks: int | None = None):
        config = model.config
        total = int(config.n_codebooks)
        num_codebooks = total if num_codebooks is None else num_codebooks
        if not 1 <= num_codebooks <= total:
            raise CodecError(f"DAC num_codebooks must be in 1..{total}, got {num_codebooks}")
        self.model = _frozen(model)
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = int(math.prod(config.downsampling_ratios))
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = num_codebooks

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "descript/dac_44khz", num_codebooks: int | None = None,
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        """Load a transformers-format DAC (``config.json`` + ``model.safetensors``), never downloading."""
        transformers = require_package("transformers", "transformers", "DAC")
        directory = find_codec_files(name_or_path, "config.json", HF_WEIGHTS, cache_dir)
        model = transformers.DacModel.from_pretrained(directory, local_files_only=True)
        return cls(model.to(device), num_codebooks)

    def _encode(self, audio: Tensor) -> Tensor:
        out = self.model.encode(audio[:, None].to(_device(self.model)), return_dict=True)
        return out.audio_codes[:, : self.num_codebooks]

    def _decode(self, tokens: Tensor) -> Tensor:
        return self.model.decode(audio_codes=tokens.to(_device(self.model)), return_dict=True).audio_values


class SNACCodec(AudioCodec):
    """SNAC (Siuzdak et al., 2024), a ``snac.SNAC``: codebooks at several rates, laid out as (B, K, F).

    SNAC quantises level i at 1/stride_i of its latent rate. A frame here is one step of the coarsest
    level (``hop_length`` = SNAC's hop x the largest stride), and holds, level by level, the
    max_stride / stride_i consecutive tokens of every level i in that span: for the 24 kHz model
    (strides 4, 2, 1) K = 1 + 2 + 4 = 7 rows of 4096-way tokens at 12 frames/s. The layout is exact
    and invertible.
    """

    def __init__(self, model: nn.Module):
        self.model = _frozen(model)
        strides = [int(s) for s in model.vq_strides]
        self.top_stride = max(strides)
        if any(self.top_stride % s for s in strides):
            raise CodecError(f"SNAC vq_strides {strides} must each divide the largest")
        self.rows_per_level = [self.top_stride // s for s in strides]
        self.sample_rate = int(model.sampling_rate)
        self.hop_length = int(model.hop_length) * self.top_stride
        self.codebook_size = int(model.codebook_size)
        self.num_codebooks = sum(self.rows_per_level)

    @property
    def pad_multiple(self) -> int:
        lcm = math.lcm(int(self.model.vq_strides[0]), int(self.model.attn_window_size or 1))
        return math.lcm(int(self.model.hop_length) * lcm, self.hop_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "hubertsiuzdak/snac_24khz",
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        """Load a SNAC checkpoint (``config.json`` + ``pytorch_model.bin``), never downloading."""
        snac = require_package("snac", "snac", "SNAC")
        directory = find_codec_files(name_or_path, "config.json", ("pytorch_model.bin",), cache_dir)
        model = snac.SNAC.from_config(str(directory / "config.json"))
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return cls(model.to(device))

    def levels_to_tokens(self, levels: list[Tensor]) -> Tensor:
        """SNAC's codes, level i (B, F * rows_i), -> tokens (B, K, F)."""
        frames = levels[0].shape[1] // self.rows_per_level[0]
        return torch.cat([c.reshape(c.shape[0], frames, r).transpose(1, 2)
                          for c, r in zip(levels, self.rows_per_level)], dim=1)

    def tokens_to_levels(self, tokens: Tensor) -> list[Tensor]:
        """Tokens (B, K, F) -> SNAC's codes, level i (B, F * rows_i); the inverse of ``levels_to_tokens``."""
        rows = tokens.split(self.rows_per_level, dim=1)
        return [r.transpose(1, 2).reshape(tokens.shape[0], -1) for r in rows]

    def _encode(self, audio: Tensor) -> Tensor:
        return self.levels_to_tokens(self.model.encode(audio[:, None].to(_device(self.model))))

    def _decode(self, tokens: Tensor) -> Tensor:
        return self.model.decode([c.to(_device(self.model)) for c in self.tokens_to_levels(tokens)])[:, 0]
