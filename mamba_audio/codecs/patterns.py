"""Interleave patterns: how the K codebooks of F frames are laid out as a sequence the backbone steps through.

A pattern maps tokens (B, K, F) to a sequence (B, S, P): S steps, P tokens side by side at each step
(their embeddings are summed at the input; each has its own head at the output). Slots that hold no
token (the ramps of the delay pattern) take the ``fill`` id. ``deinterleave`` is the exact inverse.

- :class:`DelayPattern` (MusicGen, Copet et al., 2023): P = K, codebook k delayed by k steps, so
  S = F + K - 1 and a frame's codebook k is predicted after its coarser codebooks 0..k-1.
  ``delays=[0] * K`` is the parallel pattern (all codebooks of a frame at one step).
- :class:`FlattenPattern`: P = 1, S = F * K, frame by frame, codebook 0 first within a frame.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_tokens(tokens: Tensor, num_codebooks: int) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != num_codebooks:
        raise ValueError(f"tokens must be (batch, {num_codebooks} codebooks, frames), got shape {tuple(tokens.shape)}")


class DelayPattern:
    """Codebook k at step f + delays[k]: tokens (B, K, F) <-> sequence (B, F + max(delays), K)."""

    name = "delay"

    def __init__(self, num_codebooks: int, delays: list[int] | None = None):
        self.num_codebooks = num_codebooks
        self.delays = list(range(num_codebooks)) if delays is None else [int(d) for d in delays]
        if len(self.delays) != num_codebooks or min(self.delays) < 0:
            raise ValueError(f"delays must be {num_codebooks} non-negative integers, got {delays}")
        self.streams = num_codebooks
        self.max_delay = max(self.delays)

    def num_steps(self, num_frames: int) -> int:
        return num_frames + self.max_delay

    def num_frames(self, num_steps: int) -> int:
        return num_steps - self.max_delay

    def frame_at(self, steps: Tensor) -> Tensor:
        """The frame (S, P) of every slot of steps (S,); outside [0, F) where the slot is a ramp (fill)."""
        return steps[:, None] - torch.tensor(self.delays, device=steps.device)[None, :]

    def codebook_at(self, steps: Tensor) -> Tensor:
        """The codebook (S, P) of every slot of steps (S,) (any integers, negative included)."""
        return torch.arange(self.num_codebooks, device=steps.device).expand(len(steps), -1)

    def interleave(self, tokens: Tensor, fill: int) -> Tensor:
        """(B, K, F) -> (B, F + max_delay, K); slots without a token hold ``fill``."""
        _check_tokens(tokens, self.num_codebooks)
        batch, _, frames = tokens.shape
        seq = tokens.new_full((batch, self.num_steps(frames), self.num_codebooks), fill)
        for k, delay in enumerate(self.delays):
            seq[:, delay: delay + frames, k] = tokens[:, k]
        return seq

    def deinterleave(self, seq: Tensor) -> Tensor:
        """(B, S, K) -> (B, K, S - max_delay): the exact inverse of ``interleave``."""
        frames = self.num_frames(seq.shape[1])
        if seq.dim() != 3 or seq.shape[2] != self.num_codebooks or frames < 0:
            raise ValueError(f"sequence must be (batch, steps >= {self.max_delay}, {self.num_codebooks}), "
                             f"got shape {tuple(seq.shape)}")
        return torch.stack([seq[:, d: d + frames, k] for k, d in enumerate(self.delays)], dim=1)


class FlattenPattern:
    """Frame by frame, codebooks in order: tokens (B, K, F) <-> sequence (B, F * K, 1)."""

    name = "flatten"
    streams = 1

    def __init__(self, num_codebooks: int):
        self.num_codebooks = num_codebooks

    def num_steps(self, num_frames: int) -> int:
        return num_frames * self.num_codebooks

    def num_frames(self, num_steps: int) -> int:
        return num_steps // self.num_codebooks

    def frame_at(self, steps: Tensor) -> Tensor:
        return torch.div(steps, self.num_codebooks, rounding_mode="floor")[:, None]

    def codebook_at(self, steps: Tensor) -> Tensor:
        return (steps % self.num_codebooks)[:, None]

    def interleave(self, tokens: Tensor, fill: int | None = None) -> Tensor:
        """(B, K, F) -> (B, F * K, 1). No slot is empty, so ``fill`` is unused."""
        _check_tokens(tokens, self.num_codebooks)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, 1)

    def deinterleave(self, seq: Tensor) -> Tensor:
        """(B, F * K, 1) -> (B, K, F): the exact inverse of ``interleave``."""
        if seq.dim() != 3 or seq.shape[2] != 1 or seq.shape[1] % self.num_codebooks:
            raise ValueError(f"sequence must be (batch, frames * {self.num_codebooks}, 1), got shape {tuple(seq.shape)}")
        return seq[:, :, 0].reshape(seq.shape[0], -1, self.num_codebooks).transpose(1, 2)


PATTERNS = ("delay", "flatten", "parallel")


def build_pattern(name: str, num_codebooks: int) -> DelayPattern | FlattenPattern:
    """"delay" (MusicGen's), "flatten", or "parallel" (a delay pattern with every delay 0)."""
    if name == "delay":
        return DelayPattern(num_codebooks)
    if name == "parallel":
        return DelayPattern(num_codebooks, [0] * num_codebooks)
    if name == "flatten":
        return FlattenPattern(num_codebooks)
    raise ValueError(f"unknown interleave pattern {name!r}; choose from {PATTERNS}")
