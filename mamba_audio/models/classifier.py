"""Audio classifier: token embedding -> bidirectional SaShiMi backbone -> masked mean pool -> linear head."""

from __future__ import annotations

import torch
import torch.nn as nn

from mamba_audio.tokenizers import build_tokenizer

from .blocks import make_norm
from .config import ClassifierConfig
from .pretrained import PretrainedMixin
from .sashimi import SaShiMi

Tensor = torch.Tensor


class SaShiMiClassifier(PretrainedMixin, nn.Module):
    model_type = "sashimi_classifier"
    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.tokenizer = build_tokenizer(config.tokenizer)
        dim = config.backbone.d_model
        self.embedding = nn.Embedding(self.tokenizer.vocab_size, dim)
        self.backbone = SaShiMi(config.backbone)
        self.norm = make_norm(config.backbone.norm, dim)
        self.head = nn.Linear(dim, config.num_classes)

    def features(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """tokens (B, L), valid lengths (B,) or None -> pooled features (B, H) before the head
        (what FID compares)."""
        h = self.norm(self.backbone(self.embedding(tokens)))
        if lengths is None:
            return h.mean(1)
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]).to(h.dtype)
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """tokens (B, L), valid lengths (B,) or None -> class logits (B, num_classes)."""
        return self.head(self.features(tokens, lengths))

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names or [str(i) for i in range(self.config.num_classes)]
