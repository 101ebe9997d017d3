"""Drawing one token per row from logits (temperature, top-k, top-p) with given uniforms, or replaying a
given one: the PyTorch references and a one-launch Triton kernel."""

from .reference import sample_or_force_ref, sample_tokens_ref

__all__ = ["sample_or_force_ref", "sample_tokens_ref"]
