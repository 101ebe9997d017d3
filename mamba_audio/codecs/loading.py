"""``load_codec``: any codec from one string, as the command line names it.

- a directory holding a ConvCodec or SpectralCodec checkpoint (``config.json`` with model type ``conv_codec``
  or ``spectral_codec``);
- ``mulaw8`` (or ``mulawN``, N bits): mu-law samples, not normalised per clip;
- ``encodec:NAME_OR_DIR``, ``dac:NAME_OR_DIR``, ``snac:NAME_OR_DIR``: the pretrained adapters (local files
  only; NAME a Hugging Face repository id found in the local cache).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import AudioCodec, CodecError

CODEC_SPECS = ("a ConvCodec or SpectralCodec checkpoint directory, mulaw8 (mulawN), encodec:PATH, dac:PATH "
               "or snac:PATH")


def load_codec(spec: str, device: str | torch.device = "cpu", sample_rate: int = 16000) -> AudioCodec:
    """The codec ``spec`` names (see the module docstring); ``sample_rate`` is mu-law's (the others have
    their own). Returns it on ``device`` in eval mode."""
    from . import ConvCodec, DACCodec, EnCodecCodec, MuLawCodec, SNACCodec, SpectralCodec

    spec = str(spec)
    if Path(spec).is_dir():
        from mamba_audio.models.pretrained import read_checkpoint_config

        model_type = read_checkpoint_config(spec)["model_type"]
        trained = {codec.model_type: codec for codec in (ConvCodec, SpectralCodec)}
        if model_type not in trained:
            raise CodecError(f"{spec} holds a {model_type!r} model, not a codec ({' or '.join(map(repr, trained))})")
        return trained[model_type].from_pretrained(spec, device=device).eval()
    mulaw = re.fullmatch(r"mulaw(\d+)", spec)
    if mulaw:
        return MuLawCodec(int(mulaw.group(1)), sample_rate=sample_rate, normalize=False)
    kind, _, path = spec.partition(":")
    adapters = {"encodec": EnCodecCodec, "dac": DACCodec, "snac": SNACCodec}
    if kind in adapters and path:
        return adapters[kind].from_pretrained(path, device=device)
    raise CodecError(f"unknown codec {spec!r}: expected {CODEC_SPECS}"
                     + (" (no such directory)" if "/" in spec or spec.startswith(".") else ""))
