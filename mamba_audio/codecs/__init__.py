"""Audio codecs: audio (B, L) <-> tokens (B, K codebooks, F frames). Mu-law is the one-codebook case;
ConvCodec is the library's own neural codec, trained here; SpectralCodec (log-mel frames, k-means RVQ,
Griffin-Lim) is fitted in minutes on a CPU; EnCodec, DAC and SNAC adapters load pretrained weights that
are already on this machine."""

from .base import AudioCodec, CodecError
from .learned import ConvCodec, ConvCodecConfig
from .loading import load_codec
from .mulaw import MuLawCodec
from .neural import DACCodec, EnCodecCodec, SNACCodec
from .spectral import SpectralCodec, SpectralCodecConfig, SpectralFitConfig
from .weights import find_codec_files

__all__ = ["AudioCodec", "CodecError", "ConvCodec", "ConvCodecConfig", "DACCodec", "EnCodecCodec", "MuLawCodec",
           "SNACCodec", "SpectralCodec", "SpectralCodecConfig", "SpectralFitConfig", "find_codec_files", "load_codec"]
