"""PyTorch reference for the fused Mamba step: conv step, projections, selective state update.

One time step of a batch of streams through the core of a Mamba mixer, between
its in-projection and its out-projection. With E channels, a conv of width W,
N states and R the rank of delta's projection:

    window  = [conv_state[:, :, 1:], x]                   conv_state (B, E, W) <- window
    xc      = silu(sum_w window * conv_weight + conv_bias)                      (B, E)
    selective (x_proj_weight given):
        dt_low, B, C = split(xc @ x_proj_weight.T, [R, N, N])   (2N each for complex A,
                                                                 as (real, imag) pairs)
        dt      = dt_low @ dt_proj_weight.T                                     (B, E)
    time-invariant (B, C given as (E, N)):
        dt      = 0
    delta   = softplus(dt + dt_bias)
    h       = exp(delta A) h + delta B xc                      ssm_state (B, E, N) <- h
    y       = (C h + D xc) * silu(z)                                            (B, E)

Shapes and dtypes:

    x, z              (B, E)        float32 / bfloat16 / float16
    conv_state        (B, E, W)     any float dtype; x is rounded to it when stored
    ssm_state         (B, E, N)     float32 (complex64 for complex A)
    conv_weight       (E, W)
    conv_bias, D, dt_bias (E,)
    A                 (E, N)        float32 real, or complex64
    x_proj_weight     (R + 2N, E)   (R + 4N, E) for complex A
    dt_proj_weight    (E, R)
    B, C              (E, N)        time-invariant, instead of the two projections

Arithmetic is float32 (complex64 for the states of a complex A); y comes back
in x.dtype. The state update itself is ``selective_state_update_ref``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import selective_state_update_ref

Tensor = torch.Tensor


def check_step_inputs(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias,
                      x_proj_weight, dt_proj_weight, B, C) -> None:
    """Raise ValueError naming the first argument whose shape does not fit the others."""
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, channels), got shape {tuple(x.shape)}")
    batch, dim = x.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (channels={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    if conv_weight.dim() != 2 or conv_weight.shape[0] != dim:
        raise ValueError(f"conv_weight must be (channels={dim}, width), got {tuple(conv_weight.shape)}")
    width = conv_weight.shape[1]
    if conv_state.shape != (batch, dim, width):
        raise ValueError(f"conv_state must be (batch, channels, width)=({batch}, {dim}, {width}), "
                         f"got {tuple(conv_state.shape)}")
    if ssm_state.shape != (batch, dim, n):
        raise ValueError(f"ssm_state must be (batch, channels, N)=({batch}, {dim}, {n}), got {tuple(ssm_state.shape)}")
    if ssm_state.dtype != (torch.complex64 if A.is_complex() else torch.float32):
        raise ValueError(f"ssm_state must be float32 (complex64 for complex A), got {ssm_state.dtype}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must match x {tuple(x.shape)}, got {tuple(z.shape)}")
    for name, X in (("conv_bias", conv_bias), ("D", D), ("dt_bias", dt_bias)):
        if X is not None and X.shape != (dim,):
            raise ValueError(f"{name} must be (channels,)=({dim},), got {tuple(X.shape)}")
    if (x_proj_weight is None) == (B is None and C is None):
        raise ValueError("give either x_proj_weight and dt_proj_weight (selective) or B and C (time-invariant)")
    if x_proj_weight is not None:
        if dt_proj_weight is None or dt_proj_weight.dim() != 2 or dt_proj_weight.shape[0] != dim:
            shape = None if dt_proj_weight is None else tuple(dt_proj_weight.shape)
            raise ValueError(f"dt_proj_weight must be (channels={dim}, rank), got {shape}")
        rank = dt_proj_weight.shape[1]
        rows = rank + (4 if A.is_complex() else 2) * n
        if x_proj_weight.shape != (rows, dim):
            raise ValueError(f"x_proj_weight must be (rank + {'4' if A.is_complex() else '2'}N, channels)="
                             f"({rows}, {dim}), got {tuple(x_proj_weight.shape)}")
    else:
        for name, X in (("B", B), ("C", C)):
            if X is None or X.shape != (dim, n):
                raise ValueError(f"{name} must be (channels, N)=({dim}, {n}), got {None if X is None else tuple(X.shape)}")


def conv_step_ref(x: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None = None) -> Tensor:
    """Shift ``x`` (B, E) into ``conv_state`` (B, E, W) in place; return silu(causal conv) (B, E) float32."""
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1))
    out = (conv_state.float() * conv_weight.float()).sum(-1)
    if conv_bias is not None:
        out = out + conv_bias.float()
    return F.silu(out)


def _pairs_to_complex(x: Tensor) -> Tensor:
    """(..., 2N) as (real, imag) pairs -> (..., N) complex64."""
    return torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())


def mamba_step_ref(
    x: Tensor,
    z: Tensor | None,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    x_proj_weight: Tensor | None = None,
    dt_proj_weight: Tensor | None = None,
    B: Tensor | None = None,
    C: Tensor | None = None,
    dt_softplus: bool = True,
) -> Tensor:
    """One fused Mamba step (see the module docstring); updates both states in place, returns y (B, E) in x.dtype."""
    check_step_inputs(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias,
                      x_proj_weight, dt_proj_weight, B, C)
    batch, dim = x.shape
    xc = conv_step_ref(x, conv_state, conv_weight, conv_bias)
    if x_proj_weight is not None:
        rank = dt_proj_weight.shape[1]
        n_bc = (x_proj_weight.shape[0] - rank) // 2
        dt_low, B_t, C_t = torch.split(xc @ x_proj_weight.float().t(), [rank, n_bc, n_bc], dim=-1)
        dt = dt_low @ dt_proj_weight.float().t()
        if A.is_complex():
            B_t, C_t = _pairs_to_complex(B_t), _pairs_to_complex(C_t)
    else:
        # per-channel B and C are the grouped case with one group per channel
        dt = xc.new_zeros(batch, dim)
        B_t, C_t = B.expand(batch, *B.shape), C.expand(batch, *C.shape)
    y = selective_state_update_ref(ssm_state, xc, dt, A, B_t, C_t, D, z, dt_bias, dt_softplus)
    return y.to(x.dtype)


def norm_ref(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, rms_norm: bool) -> Tensor:
    """The affine RMS norm (``rms_norm``, weight only) or layer norm over the last axis of float32 ``x``, in
    float32: the block steps' and the sampling head's."""
    if rms_norm:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return F.layer_norm(x, (x.shape[-1],), weight.float(), None if bias is None else bias.float(), eps)


def mamba_block_step_ref(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor | None,
    norm_eps: float,
    rms_norm: bool,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    conv_state: Tensor,
    ssm_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    x_proj_weight: Tensor | None = None,
    dt_proj_weight: Tensor | None = None,
    B: Tensor | None = None,
    C: Tensor | None = None,
    dt_softplus: bool = True,
) -> Tensor:
    """One step of a pre-norm residual Mamba block: x + out_proj(mamba_step(in_proj(norm(x)))).

    x (B, H) float32 / bfloat16 / float16; norm over H, LayerNorm (weight, optional bias) or
    RMSNorm (``rms_norm``, weight only); in_proj_weight (2E, H) whose first E outputs are the
    SSM input and last E the gate z; out_proj_weight (H, E); optional biases (2E,) and (H,).
    The rest as ``mamba_step_ref``. All in float32; returns (B, H) in x.dtype, states updated in place.
    """
    if x.dim() != 2 or norm_weight.shape != (x.shape[1],):
        raise ValueError(f"x must be (batch, hidden) and norm_weight (hidden,), got {tuple(x.shape)} and "
                         f"{tuple(norm_weight.shape)}")
    hidden, dim = x.shape[1], conv_weight.shape[0]
    if in_proj_weight.shape != (2 * dim, hidden) or out_proj_weight.shape != (hidden, dim):
        raise ValueError(f"in_proj_weight must be (2 * channels, hidden)=({2 * dim}, {hidden}) and out_proj_weight "
                         f"(hidden, channels)=({hidden}, {dim}); got {tuple(in_proj_weight.shape)} and "
                         f"{tuple(out_proj_weight.shape)}")
    residual = x.float()
    normed = norm_ref(residual, norm_weight, norm_bias, norm_eps, rms_norm)
    xz = F.linear(normed, in_proj_weight.float(), None if in_proj_bias is None else in_proj_bias.float())
    u, z = xz.chunk(2, dim=-1)
    y = mamba_step_ref(u, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias, x_proj_weight,
                       dt_proj_weight, B, C, dt_softplus)
    out = F.linear(y, out_proj_weight.float(), None if out_proj_bias is None else out_proj_bias.float())
    return (residual + out).to(x.dtype)


# the tensors of one block's step, as ``mamba_block_step_ref`` names them
BLOCK_TENSORS = ("norm_weight", "norm_bias", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
                 "conv_state", "ssm_state", "conv_weight", "conv_bias", "A", "D", "dt_bias", "x_proj_weight",
                 "dt_proj_weight", "B", "C")


class BlockStack:
    """Consecutive pre-norm residual Mamba blocks of one shape, stepped together (``mamba_blocks_step``).

    ``blocks``: one mapping per block from the names of ``BLOCK_TENSORS`` to its tensors (None or absent
    for an optional one), states included; ``norm_eps``, ``rms_norm`` and ``dt_softplus`` are shared.
    Every block must have the same tensors, shapes, strides and dtypes, on one device. ``offsets``
    (blocks, len(BLOCK_TENSORS)) int64, on that device, holds each tensor's distance in elements from
    the first block's (0 for an absent one), so a kernel reaches block k's tensors from block 0's;
    ``offset_multiple`` is the largest power of two (at most 16) that divides all of them.
    Build it once, outside a CUDA graph capture (it copies the table to the device); it keeps the
    tensors alive, and stays valid while they keep their storage.
    """

    def __init__(self, blocks, norm_eps: float, rms_norm: bool, dt_softplus: bool = True):
        self.blocks = [{name: block.get(name) for name in BLOCK_TENSORS} for block in blocks]
        if not self.blocks:
            raise ValueError("a block stack needs at least one block")
        unknown = {name for block in blocks for name in block} - set(BLOCK_TENSORS)
        if unknown:
            raise ValueError(f"unknown block tensors {sorted(unknown)}; expected names from {BLOCK_TENSORS}")
        first = self.blocks[0]
        device = first["norm_weight"].device
        rows = []
        for index, block in enumerate(self.blocks):
            row = []
            for name in BLOCK_TENSORS:
                tensor, reference = block[name], first[name]
                if (tensor is None) != (reference is None):
                    raise ValueError(f"block {index} {'lacks' if tensor is None else 'has'} {name}, block 0 "
                                     f"{'has' if tensor is None else 'does not'}")
                if tensor is None:
                    row.append(0)
                    continue
                if (tensor.shape, tensor.stride(), tensor.dtype, tensor.device) != (
                        reference.shape, reference.stride(), reference.dtype, device):
                    raise ValueError(f"block {index}'s {name} is {tuple(tensor.shape)} {tensor.dtype} on "
                                     f"{tensor.device} (strides {tensor.stride()}); block 0's is "
                                     f"{tuple(reference.shape)} {reference.dtype} on {device} "
                                     f"(strides {reference.stride()})")
                distance = tensor.data_ptr() - reference.data_ptr()
                if distance % tensor.element_size():
                    raise ValueError(f"block {index}'s {name} is not aligned to its element size")
                row.append(distance // tensor.element_size())
            rows.append(row)
        self.offsets = torch.tensor(rows, dtype=torch.int64).to(device)
        # the largest power of two up to 16 that divides every offset: a kernel may assume block k's tensors are
        # as aligned as block 0's up to that many elements (separate allocations: 16 and more)
        self.offset_multiple = 16
        while self.offset_multiple > 1 and any(value % self.offset_multiple for row in rows for value in row):
            self.offset_multiple //= 2
        self.norm_eps, self.rms_norm, self.dt_softplus = float(norm_eps), bool(rms_norm), bool(dt_softplus)

    def __len__(self) -> int:
        return len(self.blocks)


def mamba_blocks_step_ref(x: Tensor, stack: BlockStack) -> Tensor:
    """x (B, H) through every block of ``stack`` in turn, one ``mamba_block_step_ref`` each; states updated in
    place. Between blocks the residual stream is rounded to x.dtype, as separate steps would round it."""
    for block in stack.blocks:
        x = mamba_block_step_ref(x, norm_eps=stack.norm_eps, rms_norm=stack.rms_norm, dt_softplus=stack.dt_softplus,
                                 **block)
    return x


def check_add_keep(x: Tensor, other: Tensor, keep: Tensor) -> None:
    """Raise ValueError unless x, other and keep are (B, H) of one shape."""
    if x.dim() != 2 or other.shape != x.shape or keep.shape != x.shape:
        raise ValueError(f"x, other and keep must be (batch, hidden) of one shape, got {tuple(x.shape)}, "
                         f"{tuple(other.shape)} and {tuple(keep.shape)}")


def add_keep_ref(x: Tensor, other: Tensor, keep: Tensor) -> Tensor:
    """x + other (B, H), with x copied into ``keep`` (B, H) on the way: at a SaShiMi stage's pooling boundary, the
    up-pooled rows added and the row kept for the next down-pooling."""
    check_add_keep(x, other, keep)
    keep.copy_(x)
    return x + other
