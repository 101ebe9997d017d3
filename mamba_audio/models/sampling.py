"""Drawing tokens from logits: temperature, top-k, top-p (nucleus), seeded per stream.

Every stream of a batch draws its own random numbers from a counter-based
generator: the uniform for a stream's t-th sample is a hash of (its seed, t).
So a stream's samples depend on its seed alone, never on which other streams
share the batch or on the order in which they were drawn, and drawing needs no
generator object: only integer tensor arithmetic on the device, which a CUDA
graph can capture (no host synchronisation per sample).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mamba_audio.kernels import head_sample_or_force, sample_tokens  # kernels/sampling

from .mixer import block_step_rms_norm

Tensor = torch.Tensor

_MASK32 = 0xFFFFFFFF
NO_TOP_K = 2**62  # a top-k larger than any vocabulary: keep every token


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 0 <= x < 2**32, without int64 overflow (Python ints or int64 tensors)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def hash32(x):
    """A 32-bit integer mixer (xor-shift-multiply) of 0 <= x < 2**32; Python ints or int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_keys(seed: int) -> tuple[int, int]:
    """Two 32-bit keys from an integer seed (any size; taken modulo 2**64)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed &= 2**64 - 1
    lo = hash32(hash32(seed & _MASK32) ^ 0x9E3779B9)
    hi = hash32(hash32((seed >> 32) & _MASK32) ^ lo)
    return lo, hi


def counter_uniforms(key_lo: Tensor, key_hi: Tensor, counters: Tensor) -> Tensor:
    """Uniforms in (0, 1), float32 (B,), for streams with keys (B,) at sample counters (B,) (int64 tensors)."""
    h = hash32(hash32((counters & _MASK32) ^ key_lo) ^ key_hi)
    return ((h >> 8).float() + 0.5) * (1.0 / 2**24)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for a sampling setting out of range."""
    if not temperature >= 0:  # also catches NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> tokens (B,) with one setting for all rows, uniforms from ``generator``. temperature 0 is greedy."""
    check_sampling(temperature, top_k, top_p)
    batch = logits.shape[0]
    uniforms = torch.rand(batch, generator=generator, device=logits.device)
    return sample_tokens(logits, uniforms, *sampling_tensors(batch, temperature, top_k, top_p, logits.device))


def sampling_tensors(batch: int, temperature: float, top_k: int | None, top_p: float | None, device=None):
    """One setting as the per-row tensors ``sample_tokens`` takes: temperature, top_k, top_p, each (B,)."""
    return (torch.full((batch,), float(temperature), device=device),
            torch.full((batch,), NO_TOP_K if top_k is None else int(top_k), dtype=torch.long, device=device),
            torch.full((batch,), 1.0 if top_p is None else float(top_p), device=device))


class StreamSampler:
    """Sampling settings and random-number counters of a batch of streams, as device tensors updated in place.

    Row i draws its t-th sample with the uniform ``counter_uniforms(seed keys of row i, t)``; ``sample``
    advances the counters of the rows it is told to, on the device, so it can run inside a CUDA graph.
    """

    def __init__(self, batch: int, device=None):
        long = dict(dtype=torch.long, device=device)
        self.key_lo = torch.zeros(batch, **long)
        self.key_hi = torch.zeros(batch, **long)
        self.counters = torch.zeros(batch, **long)
        self.temperature, self.top_k, self.top_p = sampling_tensors(batch, 1.0, None, None, device)

    def set_row(self, row: int, seed: int, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> None:
        """Give row ``row`` a new stream: its seed, its settings, its counter back at 0."""
        check_sampling(temperature, top_k, top_p)
        lo, hi = seed_keys(seed)
        self.key_lo[row], self.key_hi[row], self.counters[row] = lo, hi, 0
        self.temperature[row] = float(temperature)
        self.top_k[row] = NO_TOP_K if top_k is None else int(top_k)
        self.top_p[row] = 1.0 if top_p is None else float(top_p)

    def uniforms(self) -> Tensor:
        """The uniforms (B,) of the rows' next draws."""
        return counter_uniforms(self.key_lo, self.key_hi, self.counters)

    def uniforms_ahead(self, steps: int, skipped: Tensor) -> Tensor:
        """The uniforms (B, steps) of the next ``steps`` calls of ``sample``, when each row's first ``skipped``
        (B,) calls do not advance its counter: one batch of hashing instead of one per sample."""
        ahead = (torch.arange(steps, device=self.counters.device)[None, :] - skipped[:, None]).clamp_min(0)
        return counter_uniforms(self.key_lo[:, None], self.key_hi[:, None], self.counters[:, None] + ahead)

    def sample(self, logits: Tensor, advance: Tensor | None = None, uniforms: Tensor | None = None) -> Tensor:
        """logits (B, V) -> tokens (B,); then the counters of the rows where ``advance`` (B,) bool (default all)
        move on. ``uniforms`` (B,), from ``uniforms_ahead``, saves drawing them here."""
        if uniforms is None:
            uniforms = self.uniforms()
        tokens = sample_tokens(logits, uniforms, self.temperature, self.top_k, self.top_p)
        self.counters.add_(1 if advance is None else advance.long())
        return tokens

    def head_sample_or_replay(self, hidden: Tensor, norm: nn.Module, head: nn.Linear, embedding: Tensor,
                              extra: Tensor | None, uniforms: Tensor, forced: Tensor, forced_index: Tensor,
                              forced_count: Tensor, out: Tensor, next_input: Tensor,
                              record: Tensor | None = None) -> Tensor:
        """A token per row from the logits ``head(norm(hidden))`` (hidden (B, H); norm an affine LayerNorm or
        RMSNorm): ``sample`` for the rows that have replayed all their given tokens (``forced_index >=
        forced_count``), the next given token ``forced[i, forced_index[i]]`` for the others, whose ``forced_index``
        moves on instead of the counter; the tokens to ``out`` (B,) and ``record``; then the next step's inputs
        ``embedding[token] (+ extra)`` (B, H) to ``next_input``. One launch on CUDA (``head_sample_or_force``);
        returns the logits (B, V) float32."""
        return head_sample_or_force(hidden, norm.weight, getattr(norm, "bias", None), norm.eps,
                                    block_step_rms_norm(norm), head.weight, head.bias, embedding, extra, uniforms,
                                    self.temperature, self.top_k, self.top_p, self.counters, forced, forced_index,
                                    forced_count, out, next_input, record)
