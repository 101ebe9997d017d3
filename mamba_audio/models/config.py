"""Model configs (dataclasses) and the named presets.

Dimension names: B batch, L length (samples or frames), H model width, E mixer
inner width (expand * H), N state size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

MIXER_KINDS = ("mamba", "s4d")
NORMS = ("layernorm", "rmsnorm")


@dataclass
class MixerConfig:
    """One Mamba mixer layer.

    kind "mamba" is the selective SSM (S6: delta, B, C computed from the input);
    "s4d" is the time-invariant variant on the same scan (delta, B, C are
    parameters), which the Mamba paper found better in the outer stages on raw music.
    """

    kind: str = "mamba"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(H / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    complex: bool = False  # complex A (S4D-Lin init), as the paper's YouTubeMix models
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self):
        if self.kind not in MIXER_KINDS:
            raise ValueError(f"mixer kind must be one of {MIXER_KINDS}, got {self.kind!r}")
        if self.d_state < 1 or self.d_conv < 1 or self.expand < 1:
            raise ValueError("d_state, d_conv and expand must be positive")


@dataclass
class BackboneConfig:
    """The SaShiMi U-Net: stages of residual blocks at successively pooled rates.

    With pool [4, 4] and expand 2 the stages run at rates 1, 1/4 and 1/16 with
    widths H, 2H and 4H. Each non-innermost stage has n_layers blocks before
    pooling and n_layers after; the innermost (center) stage has n_layers.
    """

    d_model: int = 64
    n_layers: int = 8
    pool: list[int] = field(default_factory=lambda: [4, 4])
    expand: int = 2
    mlp_expand: int = 0  # 0: mixer-only blocks (the Mamba paper's SC09 models); > 0 adds a gated MLP
    stage_mixers: list[str] | None = None  # mixer kind per stage, outer to center; None = mixer.kind everywhere
    mixer: MixerConfig = field(default_factory=MixerConfig)
    norm: str = "layernorm"
    bidirectional: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if any(p < 1 for p in self.pool):
            raise ValueError(f"pooling factors must be positive, got {self.pool}")
        if self.stage_mixers is not None:
            if len(self.stage_mixers) != len(self.pool) + 1:
                raise ValueError(
                    f"stage_mixers needs one kind per stage ({len(self.pool) + 1} for pool {self.pool}), "
                    f"got {self.stage_mixers}"
                )
            bad = [k for k in self.stage_mixers if k not in MIXER_KINDS]
            if bad:
                raise ValueError(f"stage_mixers: unknown kind(s) {bad}; choose from {MIXER_KINDS}")

    def mixer_for_stage(self, level: int) -> MixerConfig:
        if self.stage_mixers is None:
            return self.mixer
        return MixerConfig(**{**self.mixer.__dict__, "kind": self.stage_mixers[level]})

    @property
    def total_pool(self) -> int:
        out = 1
        for p in self.pool:
            out *= p
        return out


@dataclass
class LMConfig:
    """Autoregressive model over audio tokens (mu-law or linear samples)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tokenizer: str = "mulaw8"
    sample_rate: int = 16000
    num_classes: int = 0  # > 0: class-conditional, a learned class embedding added at every step
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.backbone.bidirectional:
            raise ValueError("an autoregressive model needs a causal backbone (bidirectional: false)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")


@dataclass
class ClassifierConfig:
    """Audio classifier: token embedding, bidirectional SaShiMi backbone, mean pooling, linear head."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(bidirectional=True))
    tokenizer: str = "mulaw8"
    sample_rate: int = 16000
    num_classes: int = 10
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")


# The Mamba paper's SC09 models: the SaShiMi U-Net (pooling [4, 4], expansion 2)
# with every S4+MLP pair replaced by one Mamba block. Widths 64 and 128 give the
# paper's 6.1M and 24.3M parameters with the 256-way mu-law embedding and head.
BACKBONE_PRESETS: dict[str, BackboneConfig] = {
    "sc09-6m": BackboneConfig(d_model=64, n_layers=8),
    "sc09-24m": BackboneConfig(d_model=128, n_layers=8),
    # Small enough to train on a laptop CPU in minutes; used by the quickstart and tests.
    "tiny": BackboneConfig(d_model=32, n_layers=2, mixer=MixerConfig(d_state=8)),
}


def backbone_preset(name: str, **overrides) -> BackboneConfig:
    """A copy of a named backbone preset, with top-level fields replaced."""
    if name not in BACKBONE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(BACKBONE_PRESETS)}")
    config = copy.deepcopy(BACKBONE_PRESETS[name])
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"BackboneConfig has no field {key!r}")
        setattr(config, key, value)
    config.__post_init__()
    return config
