"""Drawing one token per row from logits (temperature, top-k, top-p) with given uniforms: the PyTorch
reference and a one-launch Triton kernel."""

from .reference import sample_tokens_ref

__all__ = ["sample_tokens_ref"]
