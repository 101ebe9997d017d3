"""An untrained tiny TextToSpeech for the server's and the demo's tests (public API only)."""

import torch

import mamba_audio
from mamba_audio.models import backbone_preset

VOICES = ["flite:slt", "espeak-ng:en-us"]


def tiny_voice(max_streams: int = 2, seconds: float = 0.1) -> "mamba_audio.TextToSpeech":
    """16 kHz, two voices; its stop head never fires, so every utterance runs to ``seconds``. Seeded: two
    calls give identical voices."""
    torch.manual_seed(0)
    codec = mamba_audio.ConvCodec(mamba_audio.ConvCodecConfig(strides=[2, 4], channels=4, latent_dim=8, dilations=[1],
                                                              num_codebooks=2, codebook_size=16)).eval()
    config = mamba_audio.TTSConfig(backbone=backbone_preset("tiny", pool=[2, 2], n_layers=1), num_codebooks=2,
                                   codebook_size=16, voices=list(VOICES), text_front_end="chars",
                                   sample_rate=codec.sample_rate, frame_rate=codec.frame_rate, max_seconds=seconds,
                                   stop_threshold=0.9999)
    return mamba_audio.TextToSpeech(mamba_audio.TTSModel(config), codec, max_streams=max_streams)
