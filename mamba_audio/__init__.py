"""mamba-audio: audio and speech sequence modeling with selective state-space models (Mamba).

The public API is imported lazily, so ``import mamba_audio.kernels`` loads no model code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "SaShiMiLM": "mamba_audio.models",
    "SaShiMiClassifier": "mamba_audio.models",
    "SaShiMi": "mamba_audio.models",
    "MambaMixer": "mamba_audio.models",
    "LMConfig": "mamba_audio.models",
    "ClassifierConfig": "mamba_audio.models",
    "CodecLM": "mamba_audio.models",
    "CodecLMConfig": "mamba_audio.models",
    "BackboneConfig": "mamba_audio.models",
    "MixerConfig": "mamba_audio.models",
    "backbone_preset": "mamba_audio.models",
    "load_pretrained": "mamba_audio.models",
    "default_checkpoints": "mamba_audio.models",
    "CheckpointError": "mamba_audio.models",
    "MuLawTokenizer": "mamba_audio.tokenizers",
    "LinearTokenizer": "mamba_audio.tokenizers",
    "build_tokenizer": "mamba_audio.tokenizers",
    "load_audio": "mamba_audio.audio",
    "save_audio": "mamba_audio.audio",
    "AudioError": "mamba_audio.audio",
    "AudioCodec": "mamba_audio.codecs",
    "CodecError": "mamba_audio.codecs",
    "MuLawCodec": "mamba_audio.codecs",
    "ConvCodec": "mamba_audio.codecs",
    "ConvCodecConfig": "mamba_audio.codecs",
    "EnCodecCodec": "mamba_audio.codecs",
    "DACCodec": "mamba_audio.codecs",
    "SNACCodec": "mamba_audio.codecs",
    "StreamingGenerator": "mamba_audio.streaming",
    "Stream": "mamba_audio.streaming",
    "AudioChunk": "mamba_audio.streaming",
    "TextToSpeech": "mamba_audio.tts",
    "TTSModel": "mamba_audio.models.tts",
    "TTSConfig": "mamba_audio.models.tts",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mamba_audio' has no attribute {name!r}")
