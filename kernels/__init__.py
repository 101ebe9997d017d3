"""Selective-scan kernels and their PyTorch references. Imports no model code.

Installed as ``mamba_audio.kernels``. Models call only the two dispatch
functions below; each picks the fastest implementation available for the
tensors it is given and falls back to the PyTorch reference elsewhere.

Backends of ``selective_scan``:
    "reference"  sequential float32 oracle (slow; tests)
    "chunked"    chunked PyTorch scan, O(sqrt(L)) Python steps (CPU training)
    "triton"     Triton kernels, forward and backward (CUDA training); registered
                 when triton is installed, imported on first use
    "auto"       the fastest backend available for the inputs' device

Backends of ``mamba_step`` (one fused conv + SSM step of a Mamba mixer for a batch
of streams, see ``selective_scan.step_ref``) and of ``mamba_block_step`` (the same
inside a whole pre-norm residual block: norm, in_proj, step, out_proj, residual):
"reference" (PyTorch, the CPU default) and "triton" (one launch per step, the CUDA
default; complex A falls back to the reference). ``mamba_blocks_step`` steps a
``BlockStack`` of consecutive blocks of one shape in turn, in one launch on "triton".
``add_keep`` (rows added, one of them kept: a stage's pooling boundary) is one launch on "triton".

Backends of ``sample_tokens`` (one token per row from logits, temperature, top-k and
top-p with given uniforms, see ``sampling.reference``) and of ``sample_or_force`` (the same,
or a replayed token, with the counters moved on): "reference" and "triton" (one launch;
the CUDA default). ``head_sample_or_force`` also makes the logits from a hidden state (norm, linear
head) and embeds the drawn token as the next step's input, in the same launch on "triton".
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch

from .selective_scan import (
    default_chunk_size,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update_ref,
    seq_idx_from_cu_seqlens,
)
from .sampling import head_sample_or_force_ref, sample_or_force_ref, sample_tokens_ref
from .selective_scan.step_ref import (
    BlockStack,
    add_keep_ref,
    mamba_block_step_ref,
    mamba_blocks_step_ref,
    mamba_step_ref,
)

_SCAN_BACKENDS: dict[str, Callable] = {
    "reference": selective_scan_ref,
    "chunked": selective_scan_chunked,
}


def _per_channel_groups(X: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """B or C as (batch, D groups, N, L): one group per channel (a broadcast view where possible)."""
    if X.dim() == 2:  # time-invariant (D, N)
        return X[None, :, :, None].expand(batch, dim, X.shape[1], length)
    if X.dim() == 3:  # (B, N, L): one group shared by every channel
        return X[:, None].expand(batch, dim, *X.shape[1:])
    groups = X.shape[1]  # (B, G, N, L): each group's rows repeated for its D / G channels
    return X[:, :, None].expand(batch, groups, dim // groups, *X.shape[2:]).reshape(batch, dim, *X.shape[2:])


def _selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, return_final_state=False, seq_idx=None):
    """The Triton scan, imported lazily (so TRITON_INTERPRET can still be set first).

    Time-invariant B or C (D, N) (the S4D mixer) go to the kernels as D groups of one channel,
    (B, D, N, L) with the L axis broadcast: the chunked PyTorch scan would keep tensors of size
    B*D*L*N for autograd, too many for long crops. Complex A takes the chunked scan.
    """
    from .selective_scan.triton_scan import selective_scan_triton

    if A.is_complex():
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      return_final_state, seq_idx=seq_idx)
    if B.dim() == 2 or C.dim() == 2:
        batch, dim, length = u.shape
        B, C = (_per_channel_groups(X, batch, dim, length) for X in (B, C))
    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                 return_final_state, seq_idx=seq_idx)


if importlib.util.find_spec("triton") is not None:
    _SCAN_BACKENDS["triton"] = _selective_scan_triton

_STEP_BACKENDS: dict[str, Callable] = {
    "reference": selective_state_update_ref,
}


_MAMBA_STEP_BACKENDS: dict[str, Callable] = {
    "reference": mamba_step_ref,
}


def _mamba_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D=None, dt_bias=None,
                       x_proj_weight=None, dt_proj_weight=None, B=None, C=None, dt_softplus=True):
    """The Triton fused step, imported lazily; the reference for complex A."""
    from .selective_scan.triton_step import mamba_step_triton, supports

    fn = mamba_step_triton if supports(A) else mamba_step_ref
    return fn(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias, x_proj_weight, dt_proj_weight,
              B, C, dt_softplus)


if importlib.util.find_spec("triton") is not None:
    _MAMBA_STEP_BACKENDS["triton"] = _mamba_step_triton


_BLOCK_STEP_BACKENDS: dict[str, Callable] = {
    "reference": mamba_block_step_ref,
}


def _mamba_block_step_triton(*args, **kwargs):
    """The Triton whole-block step, imported lazily; the reference for complex A."""
    from .selective_scan.triton_step import mamba_block_step_triton, supports

    A = args[13] if len(args) > 13 else kwargs["A"]
    return (mamba_block_step_triton if supports(A) else mamba_block_step_ref)(*args, **kwargs)


if importlib.util.find_spec("triton") is not None:
    _BLOCK_STEP_BACKENDS["triton"] = _mamba_block_step_triton


def block_step_folds_norm_bias(hidden: int, dim: int) -> bool:
    """Whether a caller of ``mamba_block_step`` for blocks of width ``hidden`` with ``dim`` channels should pass a
    layer norm's bias folded into in_proj's (norm_bias None, in_proj_bias + in_proj_weight @ norm_bias: the same
    function). It pays where the Triton step holds a stream's channels in one tile whatever the number of streams
    (it then scales in_proj's sums by the norm afterwards, beside the variance's sum: 5-6% a step for the SC09
    outer blocks on an H100) and costs on the split and tiled paths (1-12%; benchmarks/NOTES_streaming.md). The
    answer depends on the shape alone, so the CPU reference takes the same tensors as CUDA."""
    if importlib.util.find_spec("triton") is None:
        return False
    from .selective_scan.triton_step import one_tile_for_any_batch

    return one_tile_for_any_batch(hidden, dim)


_BLOCKS_STEP_BACKENDS: dict[str, Callable] = {
    "reference": mamba_blocks_step_ref,
}


def _mamba_blocks_step_triton(x, stack):
    """The Triton stacked step, imported lazily; the reference for complex A."""
    from .selective_scan.triton_step import mamba_blocks_step_triton, supports

    return (mamba_blocks_step_triton if supports(stack.blocks[0]["A"]) else mamba_blocks_step_ref)(x, stack)


if importlib.util.find_spec("triton") is not None:
    _BLOCKS_STEP_BACKENDS["triton"] = _mamba_blocks_step_triton


_ADD_KEEP_BACKENDS: dict[str, Callable] = {
    "reference": add_keep_ref,
}


def _add_keep_triton(x, other, keep):
    """The Triton add-and-keep, imported lazily."""
    from .selective_scan.triton_step import add_keep_triton

    return add_keep_triton(x, other, keep)


if importlib.util.find_spec("triton") is not None:
    _ADD_KEEP_BACKENDS["triton"] = _add_keep_triton


_SAMPLE_BACKENDS: dict[str, Callable] = {
    "reference": sample_tokens_ref,
}


def _sample_tokens_triton(logits, uniforms, temperature, top_k, top_p):
    """The Triton sampler, imported lazily; the reference for vocabularies beyond its limit."""
    from .sampling.triton_sample import MAX_VOCAB, sample_tokens_triton

    fn = sample_tokens_triton if logits.shape[-1] <= MAX_VOCAB else sample_tokens_ref
    return fn(logits, uniforms, temperature, top_k, top_p)


if importlib.util.find_spec("triton") is not None:
    _SAMPLE_BACKENDS["triton"] = _sample_tokens_triton


_SAMPLE_OR_FORCE_BACKENDS: dict[str, Callable] = {
    "reference": sample_or_force_ref,
}


def _sample_or_force_triton(logits, *args, **kwargs):
    """The Triton sampler's replaying step, imported lazily; the reference for vocabularies beyond its limit."""
    from .sampling.triton_sample import MAX_VOCAB, sample_or_force_triton

    fn = sample_or_force_triton if logits.shape[-1] <= MAX_VOCAB else sample_or_force_ref
    return fn(logits, *args, **kwargs)


if importlib.util.find_spec("triton") is not None:
    _SAMPLE_OR_FORCE_BACKENDS["triton"] = _sample_or_force_triton


_HEAD_SAMPLE_BACKENDS: dict[str, Callable] = {
    "reference": head_sample_or_force_ref,
}


def _head_sample_or_force_triton(hidden, norm_weight, norm_bias, norm_eps, rms_norm, head_weight, *args, **kwargs):
    """The Triton head, sampler and embedding in one launch, imported lazily; the reference for vocabularies
    beyond the sampler's limit."""
    from .sampling.triton_sample import MAX_VOCAB, head_sample_or_force_triton

    fn = head_sample_or_force_triton if head_weight.shape[0] <= MAX_VOCAB else head_sample_or_force_ref
    return fn(hidden, norm_weight, norm_bias, norm_eps, rms_norm, head_weight, *args, **kwargs)


if importlib.util.find_spec("triton") is not None:
    _HEAD_SAMPLE_BACKENDS["triton"] = _head_sample_or_force_triton


def step_backends() -> list[str]:
    """Names accepted by ``mamba_step(..., backend=...)``."""
    return ["auto", *_MAMBA_STEP_BACKENDS]


def scan_backends() -> list[str]:
    """Names accepted by ``selective_scan(..., backend=...)``."""
    return ["auto", *_SCAN_BACKENDS]


# Preference per device type for backend="auto"; names not registered are skipped.
_AUTO_ORDER = {"cuda": ("triton", "chunked"), "cpu": ("chunked", "reference")}


def _resolve(backend: str, table: dict[str, Callable], tensor: torch.Tensor) -> Callable:
    if backend == "auto":
        for name in (*_AUTO_ORDER.get(tensor.device.type, _AUTO_ORDER["cpu"]), "reference"):
            if name in table:
                return table[name]
    if backend not in table:
        raise ValueError(f"unknown backend {backend!r}; available: {['auto', *table]}")
    return table[backend]


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    initial_state=None,
    return_final_state: bool = False,
    backend: str = "auto",
    seq_idx=None,
):
    """Selective scan ``y = scan(u; delta, A, B, C) + D u``, gated by silu(z).

    See ``selective_scan.naive`` for shapes and semantics. Returns y (B, D, L) in
    u.dtype, plus the final state (B, D, N) when ``return_final_state``.
    ``seq_idx`` (B, L) packs several sequences per row: the state restarts from
    zero wherever it changes (``seq_idx_from_cu_seqlens`` builds it from lengths).
    """
    fn = _resolve(backend, _SCAN_BACKENDS, u)
    if seq_idx is None:
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state,
              seq_idx=seq_idx)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus: bool = False,
                           backend: str = "auto"):
    """One recurrent step for a batch of streams; updates ``state`` (B, D, N) in place, returns y (B, D)."""
    fn = _resolve(backend, _STEP_BACKENDS, x)
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def mamba_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D=None, dt_bias=None,
               x_proj_weight=None, dt_proj_weight=None, B=None, C=None, dt_softplus: bool = True,
               backend: str = "auto"):
    """One fused Mamba step (conv, projections, state update, D skip, z gate) for a batch of streams.

    x, z (B, E); updates conv_state (B, E, W) and ssm_state (B, E, N) in place; returns y (B, E)
    in x.dtype. See ``selective_scan.step_ref`` for the math and every shape.
    """
    fn = _resolve(backend, _MAMBA_STEP_BACKENDS, x)
    return fn(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias, x_proj_weight, dt_proj_weight,
              B, C, dt_softplus)


def mamba_block_step(x, norm_weight, norm_bias, norm_eps, rms_norm, in_proj_weight, in_proj_bias, out_proj_weight,
                     out_proj_bias, conv_state, ssm_state, conv_weight, conv_bias, A, D=None, dt_bias=None,
                     x_proj_weight=None, dt_proj_weight=None, B=None, C=None, dt_softplus: bool = True,
                     backend: str = "auto"):
    """One step of a pre-norm residual Mamba block, x + out_proj(mamba_step(in_proj(norm(x)))), for a batch
    of streams: x (B, H) -> (B, H), states updated in place; see ``selective_scan.step_ref``. Same backends
    as ``mamba_step``."""
    fn = _resolve(backend, _BLOCK_STEP_BACKENDS, x)
    return fn(x, norm_weight, norm_bias, norm_eps, rms_norm, in_proj_weight, in_proj_bias, out_proj_weight,
              out_proj_bias, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias, x_proj_weight,
              dt_proj_weight, B, C, dt_softplus)


def mamba_blocks_step(x, stack: BlockStack, backend: str = "auto"):
    """x (B, H) through every block of ``stack`` in turn (``selective_scan.step_ref.BlockStack``), states updated
    in place: ``mamba_block_step`` block after block, in one launch where the backend can."""
    fn = _resolve(backend, _BLOCKS_STEP_BACKENDS, x)
    return fn(x, stack)


def add_keep(x, other, keep, backend: str = "auto"):
    """x + other for rows (B, H), x copied into ``keep`` (B, H) on the way (a stage's pooling boundary in a step
    loop: ``selective_scan.step_ref.add_keep_ref``). One launch on "triton", in the block steps' chain of
    dependent launches."""
    fn = _resolve(backend, _ADD_KEEP_BACKENDS, x)
    return fn(x, other, keep)


def sample_tokens(logits, uniforms, temperature, top_k, top_p, backend: str = "auto"):
    """logits (B, V) -> tokens (B,) long, one uniform in (0, 1) per row, per-row temperature (0: greedy),
    top_k and top_p; see ``sampling.reference`` for the rule. Graph-capturable: no host syncs."""
    fn = _resolve(backend, _SAMPLE_BACKENDS, logits)
    return fn(logits, uniforms, temperature, top_k, top_p)


def sample_or_force(logits, uniforms, temperature, top_k, top_p, counters, forced, forced_index, forced_count, out,
                    record=None, backend: str = "auto"):
    """``sample_tokens`` for the rows that draw, ``forced[i, forced_index[i]]`` for the rows still replaying given
    tokens, their random-number counters or replay indices moved on in place; the tokens to ``out`` (and
    ``record``). See ``sampling.reference.sample_or_force_ref``. Graph-capturable; one launch on "triton"."""
    fn = _resolve(backend, _SAMPLE_OR_FORCE_BACKENDS, logits)
    return fn(logits, uniforms, temperature, top_k, top_p, counters, forced, forced_index, forced_count, out, record)


def head_sample_or_force(hidden, norm_weight, norm_bias, norm_eps, rms_norm, head_weight, head_bias, embedding, extra,
                         uniforms, temperature, top_k, top_p, counters, forced, forced_index, forced_count, out,
                         next_input, record=None, backend: str = "auto"):
    """``sample_or_force`` on the logits head(norm(hidden)), then the next inputs embedding[token] (+ extra) to
    ``next_input``: the end of one autoregressive step and the start of the next. Returns the logits (B, V)
    float32. See ``sampling.reference.head_sample_or_force_ref``. Graph-capturable; one launch on "triton"."""
    fn = _resolve(backend, _HEAD_SAMPLE_BACKENDS, hidden)
    return fn(hidden, norm_weight, norm_bias, norm_eps, rms_norm, head_weight, head_bias, embedding, extra, uniforms,
              temperature, top_k, top_p, counters, forced, forced_index, forced_count, out, next_input, record)


__all__ = [
    "BlockStack",
    "add_keep",
    "block_step_folds_norm_bias",
    "head_sample_or_force",
    "mamba_blocks_step",
    "default_chunk_size",
    "mamba_block_step",
    "mamba_step",
    "mamba_step_ref",
    "sample_or_force",
    "sample_tokens",
    "scan_backends",
    "step_backends",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "seq_idx_from_cu_seqlens",
]
