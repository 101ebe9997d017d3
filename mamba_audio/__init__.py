"""mamba-audio: audio and speech sequence modeling with selective state-space models."""

__version__ = "0.1.0"
