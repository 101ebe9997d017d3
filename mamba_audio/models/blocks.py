"""Residual blocks: pre-norm mixer (and optional gated MLP), causal or bidirectional."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.kernels import BlockStack, mamba_blocks_step

from .config import BackboneConfig, MixerConfig
from .mixer import MambaMixer, MixerState, block_step_rms_norm

Tensor = torch.Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    return RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: (B, ..., H) -> (B, ..., H), hidden width expand * H."""

    def __init__(self, dim: int, expand: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, 2 * expand * dim)
        self.fc_out = nn.Linear(expand * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.fc_in(x).chunk(2, dim=-1)
        return self.fc_out(value * F.silu(gate))


@dataclass
class BlockState:
    mixer: MixerState


class ResidualBlock(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)) when the config asks for an MLP. Causal."""

    def __init__(self, dim: int, mixer: MixerConfig, backbone: BackboneConfig):
        super().__init__()
        self.norm = make_norm(backbone.norm, dim)
        self.mixer = MambaMixer(dim, mixer)
        self.dropout = nn.Dropout(backbone.dropout)
        self.mlp = GatedMLP(dim, backbone.mlp_expand) if backbone.mlp_expand > 0 else None
        self.mlp_norm = make_norm(backbone.norm, dim) if self.mlp is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, H) -> (B, L, H)."""
        x = x + self.dropout(self.mixer(self.norm(x)))
        if self.mlp is not None:
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> BlockState:
        return BlockState(self.mixer.allocate_inference_cache(batch_size, device, dtype))

    def prefill(self, x: Tensor, state: BlockState) -> Tensor:
        """x (B, L, H) -> (B, L, H) in parallel, continuing from ``state`` and updating it in place."""
        x = x + self.mixer.prefill(self.norm(x), state.mixer)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    @property
    def stackable(self) -> bool:
        """Whether ``step`` is exactly one fused block step (no MLP), so ``step_blocks`` may run it in a stack."""
        return self.mlp is None

    def step(self, x: Tensor, state: BlockState) -> Tensor:
        """x (B, H) -> (B, H) for one position; updates ``state`` in place. Norm, mixer and residual are one
        fused step (one launch on CUDA)."""
        x = self.mixer.step_residual(x, self.norm, state.mixer)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


class BidirectionalBlock(ResidualBlock):
    """x + mixer(norm(x)) + flip(mixer_bwd(flip(norm(x)))): sees the whole sequence, so it has no step."""

    def __init__(self, dim: int, mixer: MixerConfig, backbone: BackboneConfig):
        super().__init__(dim, mixer, backbone)
        self.mixer_bwd = MambaMixer(dim, mixer)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        x = x + self.dropout(self.mixer(h) + self.mixer_bwd(h.flip(1)).flip(1))
        if self.mlp is not None:
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x

    def prefill(self, x: Tensor, state: BlockState) -> Tensor:
        raise RuntimeError("a bidirectional block needs the whole sequence; it cannot be prefilled")

    def step(self, x: Tensor, state: BlockState) -> Tensor:
        raise RuntimeError("a bidirectional block needs the whole sequence; it cannot be stepped")


# where consecutive blocks step in one launch (mamba_blocks_step): "auto" on CUDA, True everywhere, False never.
# Off by default: on the H100 the stacked launch is no faster than one launch per block (5198 against 5240
# samples/s for one sc09-6m stream, 7% slower with 256 streams; benchmarks/NOTES_streaming.md).
STACKED_STEP: bool | str = False


def stacks_blocks(device: torch.device) -> bool:
    """Whether ``step_blocks`` steps runs of blocks on ``device`` in one launch, as ``STACKED_STEP`` says."""
    return STACKED_STEP is True or (STACKED_STEP == "auto" and device.type == "cuda")


def step_blocks(blocks, states: list[BlockState], x: Tensor, stacks: dict, part: str) -> Tensor:
    """x (B, H) through ``blocks`` (ResidualBlocks of one shape) for one position, updating ``states`` in place.

    Where ``STACKED_STEP`` allows it and every block is ``stackable``, all of them are one ``mamba_blocks_step``
    (one launch on CUDA): its ``BlockStack`` is kept in ``stacks[part]``
    and rebuilt when a weight or state tensor moves, so a CUDA graph captures none of that bookkeeping.
    Otherwise the blocks step one at a time."""
    if not stacks_blocks(x.device) or len(blocks) < 2 or not all(block.stackable for block in blocks):
        for block, state in zip(blocks, states):
            x = block.step(x, state)
        return x
    tensors = [block.mixer.block_step_tensors(block.norm, state.mixer) for block, state in zip(blocks, states)]
    key = tuple(t.data_ptr() if t is not None else 0 for block in tensors for t in block.values())
    cached = stacks.get(part)
    if cached is None or cached[0] != key:
        norm = blocks[0].norm
        cached = stacks[part] = (key, BlockStack(tensors, norm.eps, block_step_rms_norm(norm)))
    return mamba_blocks_step(x, cached[1])
