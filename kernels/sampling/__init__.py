"""Drawing one token per row from logits (temperature, top-k, top-p) with given uniforms, or replaying a
given one, optionally from a normed linear head's output with the next step's input embedded after: the
PyTorch references and a one-launch Triton kernel."""

from .reference import head_sample_or_force_ref, sample_or_force_ref, sample_tokens_ref

__all__ = ["head_sample_or_force_ref", "sample_or_force_ref", "sample_tokens_ref"]
