"""Models: configs, the Mamba mixer, residual blocks, the SaShiMi backbone, LM and classifier."""

from .blocks import BidirectionalBlock, GatedMLP, ResidualBlock, RMSNorm
from .classifier import SaShiMiClassifier
from .codec_lm import CodecLM, CodecLMConfig
from .config import (
    BACKBONE_PRESETS,
    BackboneConfig,
    ClassifierConfig,
    LMConfig,
    MixerConfig,
    backbone_preset,
)
from .lm import SaShiMiLM
from .mixer import MambaMixer, MixerState
from .defaults import DEFAULT_CHECKPOINTS, default_checkpoints
from .pretrained import CheckpointError, load_pretrained
from .sampling import sample_logits
from .sashimi import DownPool, SaShiMi, UpPool

__all__ = [
    "BACKBONE_PRESETS",
    "DEFAULT_CHECKPOINTS",
    "BackboneConfig",
    "BidirectionalBlock",
    "CheckpointError",
    "ClassifierConfig",
    "CodecLM",
    "CodecLMConfig",
    "DownPool",
    "GatedMLP",
    "LMConfig",
    "MambaMixer",
    "MixerConfig",
    "MixerState",
    "RMSNorm",
    "ResidualBlock",
    "SaShiMi",
    "SaShiMiClassifier",
    "SaShiMiLM",
    "UpPool",
    "backbone_preset",
    "default_checkpoints",
    "load_pretrained",
    "sample_logits",
]
