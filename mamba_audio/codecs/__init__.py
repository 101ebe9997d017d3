"""Audio codecs: audio (B, L) <-> tokens (B, K codebooks, F frames). Mu-law is the one-codebook case;
EnCodec, DAC and SNAC adapters load pretrained weights that are already on this machine."""

from .base import AudioCodec, CodecError
from .mulaw import MuLawCodec
from .neural import DACCodec, EnCodecCodec, SNACCodec
from .weights import find_codec_files

__all__ = ["AudioCodec", "CodecError", "DACCodec", "EnCodecCodec", "MuLawCodec", "SNACCodec", "find_codec_files"]
