"""The SaShiMi U-Net (Goel et al., 2022) built from Mamba blocks, as in the Mamba paper's SC09 models.

A stage runs blocks at one rate. Every stage but the innermost then pools
(reshape p consecutive steps into one, project H*p -> H*expand), hands the
result to the next stage, up-pools its output back (project, reshape) and adds
it to the stage's own activations before a second set of blocks:

    x -> blocks -> + -> blocks -> out
           |       ^
           v       |
        DownPool  UpPool(shifted by one pooled step when causal)
           |       ^
           +-> inner stage

In the causal model the up-pooled output for pooled step k comes from the
inner stage's output at k - 1, so position t never sees samples after t.
Stepping runs every stage at its own rate: the outer stage every sample, the
next every p-th sample, with the pooling buffers part of the streaming state.
On CUDA a pooled stage's inner step runs on a second stream beside its up blocks
(``OVERLAP_INNER_STEP``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields, is_dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.kernels import add_keep

from .blocks import BidirectionalBlock, BlockState, ResidualBlock, step_blocks
from .config import BackboneConfig

Tensor = torch.Tensor

# On CUDA, the inner stage's step that a pooled stage takes every p-th step runs on a second CUDA stream while
# the stage's up blocks run on the current one. Neither reads what the other writes: the inner step reads the
# pooling buffer (complete before the fork) and writes the up-pooled rows of the next group (read from the next
# step on); the up blocks read the row already made and their own states. The streams join before ``step``
# returns, so a step leaves nothing running. One stream of the SC09 model: 12,062 -> 13,214 samples/s on an H100
# (the latest run, session 20's; benchmarks/NOTES_streaming.md).
OVERLAP_INNER_STEP = True
_SIDE_STREAMS: dict = {}


class _Overlap:
    """Work issued within ``side()`` goes to a second stream; ``join()`` makes the current stream wait for it."""

    def __init__(self, device: torch.device, level: int):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if (index, level) not in _SIDE_STREAMS:  # one per nesting level: an inner stage forks again
            _SIDE_STREAMS[index, level] = torch.cuda.Stream(index)
        self.stream = _SIDE_STREAMS[index, level]
        self.main = torch.cuda.current_stream(index)

    @contextlib.contextmanager
    def side(self):
        self.stream.wait_stream(self.main)
        with torch.cuda.stream(self.stream):
            yield

    def join(self) -> None:
        self.main.wait_stream(self.stream)


def _overlap(device: torch.device, level: int) -> _Overlap | None:
    """How a stage at ``level`` forks its inner step on ``device``; None where it runs in line."""
    return _Overlap(device, level) if OVERLAP_INNER_STEP and device.type == "cuda" else None


class DownPool(nn.Module):
    """(B, L, H) -> (B, ceil(L / p), H_out): p steps side by side, then a linear map. Pads the end with zeros."""

    def __init__(self, d_in: int, d_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(d_in * pool, d_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        x = F.pad(x, (0, 0, 0, (-length) % self.pool))
        return self.linear(x.reshape(batch, -1, self.pool * dim))


class UpPool(nn.Module):
    """(B, L', H_in) -> (B, L' p, H_out): a linear map to p steps. Causal: shifted right by one pooled step."""

    def __init__(self, d_in: int, d_out: int, pool: int, causal: bool):
        super().__init__()
        self.pool = pool
        self.causal = causal
        self.linear = nn.Linear(d_in, d_out * pool)

    def forward(self, x: Tensor) -> Tensor:
        if self.causal:  # output group k is made from inner step k - 1; group 0 from zeros
            x = F.pad(x[:, :-1], (0, 0, 1, 0))
        batch, steps, _ = x.shape
        return self.linear(x).reshape(batch, steps * self.pool, -1)

    def expand_step(self, x: Tensor) -> Tensor:
        """Inner output (B, H_in) -> the next p outer steps (B, p, H_out)."""
        return self.linear(x).reshape(x.shape[0], self.pool, -1)


@dataclass
class StageState:
    """Streaming state of one stage (and, through ``inner``, of every stage inside it)."""

    down: list[BlockState]
    up: list[BlockState]
    inner: "StageState | None" = None
    pool_in: Tensor | None = None  # (B, p, H): this group's outer activations, waiting to be pooled
    pool_out: Tensor | None = None  # (B, p, H): up-pooled inner output for this group's positions
    position: int = 0  # steps taken at this stage's rate
    stacks: dict = field(default_factory=dict, repr=False, compare=False)  # step_blocks' BlockStacks


def state_tensors(state) -> list[Tensor]:
    """Every tensor of a streaming state (a tree of dataclasses and lists), in a fixed order.

    Each has the batch as its first dimension, so a stream's part of the state is ``t[i]`` for all of them.
    """
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in state_tensors(item)]
    if is_dataclass(state):
        return [t for f in fields(state) for t in state_tensors(getattr(state, f.name))]
    return []


def state_positions(state: StageState) -> list[int]:
    """The position of every stage, outermost first."""
    return [state.position] + ([] if state.inner is None else state_positions(state.inner))


class Stage(nn.Module):
    """Blocks at one rate around an optional pooled inner stage. ``level`` 0 is the outermost."""

    def __init__(self, config: BackboneConfig, level: int, dim: int):
        super().__init__()
        self.level = level
        block = BidirectionalBlock if config.bidirectional else ResidualBlock
        mixer = config.mixer_for_stage(level)
        self.down_blocks = nn.ModuleList(block(dim, mixer, config) for _ in range(config.n_layers))
        self.is_center = level == len(config.pool)
        if self.is_center:
            return
        pool, inner_dim = config.pool[level], dim * config.expand
        self.pool = pool
        self.down_pool = DownPool(dim, inner_dim, pool)
        self.inner = Stage(config, level + 1, inner_dim)
        self.up_pool = UpPool(inner_dim, dim, pool, causal=not config.bidirectional)
        self.up_blocks = nn.ModuleList(block(dim, mixer, config) for _ in range(config.n_layers))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, H) -> (B, L, H); any L."""
        for block in self.down_blocks:
            x = block(x)
        if self.is_center:
            return x
        inner = self.up_pool(self.inner(self.down_pool(x)))
        x = x + inner[:, : x.shape[1]]
        for block in self.up_blocks:
            x = block(x)
        return x

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> StageState:
        state = StageState(
            down=[b.allocate_inference_cache(batch_size, device, dtype) for b in self.down_blocks],
            up=[],
        )
        if not self.is_center:
            weight = self.down_pool.linear.weight
            state.up = [b.allocate_inference_cache(batch_size, device, dtype) for b in self.up_blocks]
            state.inner = self.inner.allocate_inference_cache(batch_size, device, dtype)
            state.pool_in = weight.new_zeros(batch_size, self.pool, self.down_pool.linear.in_features // self.pool)
            # before the inner stage has produced anything, the up-pool sees zeros (as in forward)
            state.pool_out = self.up_pool.expand_step(weight.new_zeros(batch_size, self.up_pool.linear.in_features))
        return state

    def prefill(self, x: Tensor, state: StageState) -> Tensor:
        """The next L positions at this stage's rate in parallel: x (B, L, H) -> (B, L, H).

        Continues from ``state`` (at any position, mid-group included) and updates it in place,
        pooling buffers and positions of every inner stage too, so that afterwards it equals the
        state that ``step`` through the same positions would leave.
        """
        if x.shape[1] == 0:
            return x
        for block, block_state in zip(self.down_blocks, state.down):
            x = block.prefill(x, block_state)
        if self.is_center:
            state.position += x.shape[1]
            return x
        batch, length, _ = x.shape
        filled = state.position % self.pool  # positions of the current group already in pool_in
        grouped = torch.cat([state.pool_in[:, :filled], x], dim=1)  # starts at a group boundary
        full = grouped.shape[1] // self.pool
        # what the inner stage adds, a group of p positions per pooled step: the current group's
        # is waiting in pool_out; each later group's comes from the inner output of the group before
        from_inner = [state.pool_out]
        if full > 0:
            pooled = self.down_pool.linear(grouped[:, : full * self.pool].reshape(batch, full, -1))
            inner = self.up_pool.linear(self.inner.prefill(pooled, state.inner)).reshape(batch, full * self.pool, -1)
            from_inner.append(inner)
        from_inner = torch.cat(from_inner, dim=1)[:, filled: filled + length]
        if full > 0:
            state.pool_out.copy_(inner[:, -self.pool:])
            # the slots the partial group has not reached yet still hold the last full group, as after stepping
            state.pool_in.copy_(grouped[:, (full - 1) * self.pool: full * self.pool])
        rest = grouped[:, full * self.pool:]
        state.pool_in[:, : rest.shape[1]] = rest
        state.position += length
        x = x + from_inner
        for block, block_state in zip(self.up_blocks, state.up):
            x = block.prefill(x, block_state)
        return x

    def step(self, x: Tensor, state: StageState) -> Tensor:
        """One step at this stage's rate: x (B, H) -> (B, H); updates ``state`` in place."""
        x = step_blocks(self.down_blocks, state.down, x, state.stacks, "down")
        if self.is_center:
            state.position += 1
            return x
        slot = state.position % self.pool
        # x + the up-pooled row (read now: pool_out is overwritten below when the group completes); x kept for pooling
        up = add_keep(x, state.pool_out[:, slot], keep=state.pool_in[:, slot])
        state.position += 1
        overlap = None
        if slot == self.pool - 1:  # a full group: one inner step, whose output serves the next group
            overlap = _overlap(x.device, self.level)
            with contextlib.nullcontext() if overlap is None else overlap.side():
                self._step_inner(state)
        x = step_blocks(self.up_blocks, state.up, up, state.stacks, "up")
        if overlap is not None:
            overlap.join()
        return x

    def _step_inner(self, state: StageState) -> None:
        """The inner stage's step on the full pooling buffer; its up-pooled output to pool_out."""
        pooled = self.down_pool.linear(state.pool_in.flatten(1))
        # in place, so the state's tensors keep their storage (a captured CUDA graph reads them there)
        state.pool_out.copy_(self.up_pool.expand_step(self.inner.step(pooled, state.inner)))


class SaShiMi(nn.Module):
    """Multi-scale backbone: (B, L, H) -> (B, L, H). Causal unless ``config.bidirectional``."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.stage = Stage(config, level=0, dim=config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.stage(x)

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> StageState:
        if self.config.bidirectional:
            raise RuntimeError("a bidirectional backbone cannot be stepped")
        return self.stage.allocate_inference_cache(batch_size, device, dtype)

    def prefill(self, x: Tensor, state: StageState) -> Tensor:
        """x (B, L, H) for the next L samples, in parallel -> (B, L, H); updates ``state`` as ``step`` would."""
        return self.stage.prefill(x, state)

    def step(self, x: Tensor, state: StageState) -> Tensor:
        """x (B, H) for one sample -> (B, H)."""
        return self.stage.step(x, state)
