"""Triton kernel for the fused Mamba step: one time step of a batch of streams in one launch.

Same function as ``step_ref.mamba_step_ref`` for real A (see there for the math
and shapes): conv-state shift, causal depthwise conv (+ bias), silu; for the
selective SSM the x- and dt-projections of the conv output; delta's bias and
softplus; h = exp(delta A) h + delta B xc; y = C h + D xc; gating by silu(z).
Both states are updated in place; arithmetic is float32 whatever the input dtype.

One program per stream (batch row). delta, B and C of the selective SSM are
sums over all channels, so a program walks its row's channels twice in tiles of
BLOCK_E:

  pass 1 (selective only): conv output of each tile, accumulated into
         x_proj_weight @ xc (the R values of dt_low and the N of B and of C);
  pass 2: the conv output again (recomputed from the same old window, so the
         conv state is read before it is written), the new window stored,
         delta = softplus(dt_proj_weight @ dt_low + dt_bias), the state tile
         (BLOCK_E x N) updated and contracted with C, D skip, z gate.

The kernel's registers hold one (BLOCK_E x N) state tile and one projection tile
at a time, so wide mixers (E = 512 in the SC09 model's center stage) need no
more registers than narrow ones.

``_mamba_block_step_kernel`` does the same inside a whole pre-norm residual block
(``step_ref.mamba_block_step_ref``): the norm of the row (H values, in registers),
in_proj by tiles of channels, the step, and out_proj accumulated tile by tile
into the residual, so a block costs one launch instead of five. Its first pass
stores the new conv windows, which the second pass reads back after a barrier.
When one tile holds every channel (narrow blocks, few streams: see
``block_step_config``) it runs in one pass instead, issuing every load before any
arithmetic so that their latencies overlap.

For a few streams of a wide block, ``mamba_block_step_triton`` splits the step over
a program per stream and slice of channels instead (``_split_in_kernel``,
``_split_out_kernel``, ``_split_sum_kernel``: three launches, the sums over all
channels through per-slice partial rows added in slice order); the same three launches can take a tile of
streams a program (``block_m``, ``_rows_in_kernel``; opt-in). On Hopper the block
steps go as programmatic dependent launches (``dependent_launches``): each loads
its weights before ``gdc_wait``, overlapping the launch before it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launches): Triton 3.3 on
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    from triton.backends.nvidia.compiler import CUDAOptions
    _TRITON_HAS_PDL = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:
    _TRITON_HAS_PDL = False

    @triton.jit
    def gdc_launch_dependents():  # never called: PDL stays False without the real one
        pass

    @triton.jit
    def gdc_wait():
        pass

from .step_ref import BLOCK_TENSORS, BlockStack, check_add_keep, check_step_inputs
from .triton_scan import _softplus

Tensor = torch.Tensor


@triton.jit
def _shift_and_convolve(u, old, conv_w, conv_ptr, row, s_cb, s_ce, s_cw, window_mask, convb_ptr, offs_e, mask_e,
                        width, offs_w, HAS_CONV_BIAS: tl.constexpr):
    """A tile of channels' new conv windows (the old ones shifted left, u last), stored into stream ``row``'s conv
    state once every thread has read the old ones; returns silu of the causal conv, (BLOCK_E,) float32."""
    window = tl.where(offs_w[None, :] == width - 1, u.to(conv_ptr.dtype.element_ty)[:, None], old)
    tl.debug_barrier()  # the old window is read everywhere before it is overwritten
    tl.store(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + offs_w[None, :] * s_cw, window, mask=window_mask)
    acc = tl.sum(window.to(tl.float32) * conv_w, axis=1)
    if HAS_CONV_BIAS:
        acc += tl.load(convb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _update_state(delta, A, h, xc, B_t, C_t, h_ptrs, tile, D_ptr, offs_e, mask_e, HAS_D: tl.constexpr):
    """A tile of channels' state step, h = exp(delta A) h + delta xc B, stored through h_ptrs; returns its
    output y = C h + D xc (BLOCK_E,) float32."""
    h = tl.exp(delta[:, None] * A) * h + (delta * xc)[:, None] * B_t
    tl.store(h_ptrs, h, mask=tile)
    y = tl.sum(h * C_t, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32) * xc
    return y


@triton.jit
def _conv_window(x_ptr, conv_ptr, convw_ptr, convb_ptr, row, offs_e, mask_e, offs_w, width,
                 s_xb, s_xe, s_cb, s_ce, s_cw, s_we, s_ww, HAS_CONV_BIAS: tl.constexpr):
    """The new conv window of a channel tile, (BLOCK_E, BLOCK_W) in the conv state's dtype, and
    silu(conv) (BLOCK_E,) float32. Column j holds the old column j + 1; the last column holds x."""
    in_window = offs_w[None, :] < width
    old = tl.load(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + (offs_w[None, :] + 1) * s_cw,
                  mask=mask_e[:, None] & (offs_w[None, :] + 1 < width), other=0.0)
    x = tl.load(x_ptr + row * s_xb + offs_e * s_xe, mask=mask_e, other=0.0).to(conv_ptr.dtype.element_ty)
    window = tl.where(offs_w[None, :] == width - 1, x[:, None], old)
    weight = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww,
                     mask=mask_e[:, None] & in_window, other=0.0).to(tl.float32)
    acc = tl.sum(window.to(tl.float32) * weight, axis=1)
    if HAS_CONV_BIAS:
        acc += tl.load(convb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    return window, acc * tl.sigmoid(acc)  # masked channels: silu(0) = 0, so they add nothing to the sums


@triton.jit
def _mamba_step_kernel(
    x_ptr, z_ptr, y_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr,
    xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    dim, rank, n_state, width,
    s_xb, s_xe, s_zb, s_ze, s_yb, s_ye,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    HAS_Z: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0)
    offs_w = tl.arange(0, BLOCK_W)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_n = offs_n < n_state
    mask_r = offs_r < rank

    # pass 1: the projections of the conv output, summed over channel tiles
    dt_low = tl.zeros([BLOCK_R], dtype=tl.float32)
    B_sel = tl.zeros([BLOCK_N], dtype=tl.float32)
    C_sel = tl.zeros([BLOCK_N], dtype=tl.float32)
    if SELECTIVE:
        for e0 in range(0, dim, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < dim
            _, xc = _conv_window(x_ptr, conv_ptr, convw_ptr, convb_ptr, row, offs_e, mask_e, offs_w, width,
                                 s_xb, s_xe, s_cb, s_ce, s_cw, s_we, s_ww, HAS_CONV_BIAS)
            cols = offs_e[None, :] * s_xpe
            w_dt = tl.load(xproj_ptr + offs_r[:, None] * s_xpr + cols, mask=mask_r[:, None] & mask_e[None, :],
                           other=0.0).to(tl.float32)
            dt_low += tl.sum(w_dt * xc[None, :], axis=1)
            w_B = tl.load(xproj_ptr + (rank + offs_n[:, None]) * s_xpr + cols, mask=mask_n[:, None] & mask_e[None, :],
                          other=0.0).to(tl.float32)
            B_sel += tl.sum(w_B * xc[None, :], axis=1)
            w_C = tl.load(xproj_ptr + (rank + n_state + offs_n[:, None]) * s_xpr + cols,
                          mask=mask_n[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
            C_sel += tl.sum(w_C * xc[None, :], axis=1)

    # pass 2: conv state, delta, state update and output, tile by tile
    for e0 in range(0, dim, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < dim
        window, xc = _conv_window(x_ptr, conv_ptr, convw_ptr, convb_ptr, row, offs_e, mask_e, offs_w, width,
                                  s_xb, s_xe, s_cb, s_ce, s_cw, s_we, s_ww, HAS_CONV_BIAS)
        # every thread has read the old window before any thread overwrites a neighbouring column
        tl.debug_barrier()
        tl.store(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + offs_w[None, :] * s_cw, window,
                 mask=mask_e[:, None] & (offs_w[None, :] < width))

        if SELECTIVE:
            w_dt = tl.load(dtproj_ptr + offs_e[:, None] * s_dpe + offs_r[None, :] * s_dpr,
                           mask=mask_e[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
            delta = tl.sum(w_dt * dt_low[None, :], axis=1)
        else:
            delta = tl.zeros([BLOCK_E], dtype=tl.float32)
        if HAS_DT_BIAS:
            delta += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        if DT_SOFTPLUS:
            delta = _softplus(delta)

        tile = mask_e[:, None] & mask_n[None, :]
        A = tl.load(A_ptr + offs_e[:, None] * s_ae + offs_n[None, :] * s_an, mask=tile, other=0.0)
        h_ptrs = ssm_ptr + row * s_hb + offs_e[:, None] * s_he + offs_n[None, :] * s_hn
        h = tl.load(h_ptrs, mask=tile, other=0.0)
        if SELECTIVE:
            B_t = B_sel[None, :]
            C_t = C_sel[None, :]
        else:
            B_t = tl.load(B_ptr + offs_e[:, None] * s_Be + offs_n[None, :] * s_Bn, mask=tile, other=0.0).to(tl.float32)
            C_t = tl.load(C_ptr + offs_e[:, None] * s_Ce + offs_n[None, :] * s_Cn, mask=tile, other=0.0).to(tl.float32)
        y = _update_state(delta, A, h, xc, B_t, C_t, h_ptrs, tile, D_ptr, offs_e, mask_e, HAS_D)
        if HAS_Z:
            z = tl.load(z_ptr + row * s_zb + offs_e * s_ze, mask=mask_e, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(y_ptr + row * s_yb + offs_e * s_ye, y.to(y_ptr.dtype.element_ty), mask=mask_e)


def supports(A: Tensor) -> bool:
    """Whether the kernel applies: real A (complex A goes to the reference)."""
    return not A.is_complex()


def mamba_step_triton(
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
    block_e: int | None = None,
) -> Tensor:
    """The fused step (``step_ref.mamba_step_ref``) in one launch; updates both states in place, returns y (B, E).

    ``block_e`` overrides the channel tile (a power of two; tests use small tiles to cover several).
    """
    check_step_inputs(x, z, conv_state, ssm_state, conv_weight, conv_bias, A, D, dt_bias,
                      x_proj_weight, dt_proj_weight, B, C)
    if not supports(A):
        raise ValueError("the Triton step takes real A; complex A runs on the reference")
    if A.dtype != torch.float32:
        raise ValueError(f"A must be float32, got {A.dtype}")
    batch, dim = x.shape
    n_state, width = A.shape[1], conv_weight.shape[1]
    selective = x_proj_weight is not None
    rank = dt_proj_weight.shape[1] if selective else 1
    y = torch.empty(batch, dim, dtype=x.dtype, device=x.device)
    if batch == 0:
        return y
    block_e = block_e or min(triton.next_power_of_2(dim), 128)
    if block_e & (block_e - 1):
        raise ValueError(f"block_e must be a power of two, got {block_e}")

    def strides(t: Tensor | None, ndim: int) -> tuple[int, ...]:
        return tuple(t.stride()) if t is not None else (0,) * ndim

    unused = x  # any tensor stands in for an absent operand; the constexpr flags keep it unread
    _mamba_step_kernel[(batch,)](
        x, z if z is not None else unused, y, conv_state, ssm_state, conv_weight,
        conv_bias if conv_bias is not None else unused, A,
        D if D is not None else unused, dt_bias if dt_bias is not None else unused,
        x_proj_weight if selective else unused, dt_proj_weight if selective else unused,
        B if not selective else unused, C if not selective else unused,
        dim, rank, n_state, width,
        *x.stride(), *strides(z, 2), *y.stride(),
        *conv_state.stride(), *ssm_state.stride(),
        *conv_weight.stride(), *A.stride(),
        *strides(x_proj_weight, 2), *strides(dt_proj_weight, 2),
        *strides(None if selective else B, 2), *strides(None if selective else C, 2),
        HAS_Z=z is not None, HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None,
        HAS_DT_BIAS=dt_bias is not None, SELECTIVE=selective, DT_SOFTPLUS=dt_softplus,
        BLOCK_E=block_e, BLOCK_N=triton.next_power_of_2(n_state), BLOCK_R=triton.next_power_of_2(rank),
        BLOCK_W=triton.next_power_of_2(width),
        num_warps=4,
    )
    return y


# ----------------------------------------------------------------------------- the whole residual block


@triton.jit
def _centred_row(residual, mask_h, hidden, eps, RMS_NORM: tl.constexpr):
    """One row (BLOCK_H,) float32 centred for its norm (an RMS norm leaves it as it is), and 1 / its RMS."""
    if RMS_NORM:
        centred = residual
    else:
        centred = tl.where(mask_h, residual - tl.sum(residual, axis=0) / hidden, 0.0)
    return centred, tl.rsqrt(tl.sum(centred * centred, axis=0) / hidden + eps)


@triton.jit
def _norm_row(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM: tl.constexpr,
              HAS_NORM_BIAS: tl.constexpr):
    """RMS or layer norm of one row (BLOCK_H,) float32, affine; zero beyond ``hidden``."""
    centred, rstd = _centred_row(residual, mask_h, hidden, eps, RMS_NORM)
    normed = centred * rstd
    normed *= tl.load(normw_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    if HAS_NORM_BIAS:
        normed += tl.load(normb_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    return tl.where(mask_h, normed, 0.0)


@triton.jit
def _one_tile_block(
    residual, row, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr,
    A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr, hidden, dim, rank, n_state, width, eps,
    s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, x_ptr, s_xb, s_xh, LOAD_X: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """One block's step for stream ``row`` when one tile holds every channel: residual (BLOCK_H,) float32 ->
    (out_proj's output before its bias (BLOCK_H,) float32, the residual); both states updated in place.

    LOAD_X: the residual is read from x_ptr instead (``residual`` is ignored). PDL: the weights are loaded,
    then ``gdc_wait`` (the previous launch's results are visible after it), then the residual and states."""
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_w = tl.arange(0, BLOCK_W)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_n = offs_n < n_state
    mask_r = offs_r < rank
    # every channel in one tile: all loads are issued before any arithmetic, so their latencies overlap,
    # and the conv output stays in registers (no store-barrier-reload of the window)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < dim
    rows_h = mask_e[:, None] & mask_h[None, :]
    in_window = offs_w[None, :] < width
    w_in = tl.load(win_ptr + offs_e[:, None] * s_wir + offs_h[None, :] * s_wih, mask=rows_h, other=0.0)
    w_z = tl.load(win_ptr + (dim + offs_e[:, None]) * s_wir + offs_h[None, :] * s_wih, mask=rows_h, other=0.0)
    conv_w = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww, mask=mask_e[:, None] & in_window,
                     other=0.0).to(tl.float32)
    tile = mask_e[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_e[:, None] * s_ae + offs_n[None, :] * s_an, mask=tile, other=0.0)
    w_out = tl.load(wout_ptr + offs_h[:, None] * s_woh + offs_e[None, :] * s_woe,
                    mask=mask_h[:, None] & mask_e[None, :], other=0.0)
    if SELECTIVE:
        cols = offs_e[None, :] * s_xpe
        w_dt = tl.load(xproj_ptr + offs_r[:, None] * s_xpr + cols, mask=mask_r[:, None] & mask_e[None, :],
                       other=0.0)
        w_B = tl.load(xproj_ptr + (rank + offs_n[:, None]) * s_xpr + cols, mask=mask_n[:, None] & mask_e[None, :],
                      other=0.0)
        w_C = tl.load(xproj_ptr + (rank + n_state + offs_n[:, None]) * s_xpr + cols,
                      mask=mask_n[:, None] & mask_e[None, :], other=0.0)
        w_delta = tl.load(dtproj_ptr + offs_e[:, None] * s_dpe + offs_r[None, :] * s_dpr,
                          mask=mask_e[:, None] & mask_r[None, :], other=0.0)
    else:
        B_t = tl.load(B_ptr + offs_e[:, None] * s_Be + offs_n[None, :] * s_Bn, mask=tile, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + offs_e[:, None] * s_Ce + offs_n[None, :] * s_Cn, mask=tile, other=0.0).to(tl.float32)
    if not HAS_NORM_BIAS:  # the norm's weight and in_proj's bias are weights too
        norm_w = tl.load(normw_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        if HAS_IN_BIAS:
            u_bias = tl.load(bin_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            z_bias = tl.load(bin_ptr + dim + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()
    if LOAD_X:
        residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    old = tl.load(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + (offs_w[None, :] + 1) * s_cw,
                  mask=mask_e[:, None] & (offs_w[None, :] + 1 < width), other=0.0)
    h_ptrs = ssm_ptr + row * s_hb + offs_e[:, None] * s_he + offs_n[None, :] * s_hn
    h = tl.load(h_ptrs, mask=tile, other=0.0)

    if HAS_NORM_BIAS:
        normed = _norm_row(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
        u = tl.sum(w_in.to(tl.float32) * normed[None, :], axis=1)
        z = tl.sum(w_z.to(tl.float32) * normed[None, :], axis=1)
        if HAS_IN_BIAS:
            u += tl.load(bin_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            z += tl.load(bin_ptr + dim + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    else:  # in_proj(w c rstd) = rstd in_proj(w c): the variance's sum and in_proj's run side by side (7% faster)
        centred, rstd = _centred_row(residual, mask_h, hidden, eps, RMS_NORM)
        weighted = centred * norm_w
        u = tl.sum(w_in.to(tl.float32) * weighted[None, :], axis=1) * rstd
        z = tl.sum(w_z.to(tl.float32) * weighted[None, :], axis=1) * rstd
        if HAS_IN_BIAS:
            u += u_bias
            z += z_bias
    xc = _shift_and_convolve(u, old, conv_w, conv_ptr, row, s_cb, s_ce, s_cw, mask_e[:, None] & in_window, convb_ptr,
                             offs_e, mask_e, width, offs_w, HAS_CONV_BIAS)
    if SELECTIVE:
        dt_low = tl.sum(w_dt.to(tl.float32) * xc[None, :], axis=1)
        B_t = tl.sum(w_B.to(tl.float32) * xc[None, :], axis=1)[None, :]
        C_t = tl.sum(w_C.to(tl.float32) * xc[None, :], axis=1)[None, :]
        delta = tl.sum(w_delta.to(tl.float32) * dt_low[None, :], axis=1)
    else:
        delta = tl.zeros([BLOCK_E], dtype=tl.float32)
    if HAS_DT_BIAS:
        delta += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        delta = _softplus(delta)
    y = _update_state(delta, A, h, xc, B_t, C_t, h_ptrs, tile, D_ptr, offs_e, mask_e, HAS_D)
    y = tl.where(mask_e, y * z * tl.sigmoid(z), 0.0)
    out = tl.sum(w_out.to(tl.float32) * y[None, :], axis=1)
    return out, residual


@triton.jit
def _tiled_block(
    residual, row, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr,
    A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr, hidden, dim, rank, n_state, width, eps,
    s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """One block's step for stream ``row`` in two passes over tiles of BLOCK_E channels (the module
    docstring): residual (BLOCK_H,) float32 -> out_proj's output before its bias; states updated in place."""
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_w = tl.arange(0, BLOCK_W)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_n = offs_n < n_state
    mask_r = offs_r < rank
    normed = _norm_row(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
    # pass 1: SSM input u = in_proj[:E] @ normed, shifted into the conv state (the new windows are
    # stored here), and for the selective SSM the projections of the conv output
    dt_low = tl.zeros([BLOCK_R], dtype=tl.float32)
    B_sel = tl.zeros([BLOCK_N], dtype=tl.float32)
    C_sel = tl.zeros([BLOCK_N], dtype=tl.float32)
    for e0 in range(0, dim, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < dim
        w_in = tl.load(win_ptr + offs_e[:, None] * s_wir + offs_h[None, :] * s_wih,
                       mask=mask_e[:, None] & mask_h[None, :], other=0.0).to(tl.float32)
        u = tl.sum(w_in * normed[None, :], axis=1)
        if HAS_IN_BIAS:
            u += tl.load(bin_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        old = tl.load(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + (offs_w[None, :] + 1) * s_cw,
                      mask=mask_e[:, None] & (offs_w[None, :] + 1 < width), other=0.0)
        window = tl.where(offs_w[None, :] == width - 1, u.to(conv_ptr.dtype.element_ty)[:, None], old)
        tl.debug_barrier()  # the old window is read everywhere before it is overwritten
        tl.store(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + offs_w[None, :] * s_cw, window,
                 mask=mask_e[:, None] & (offs_w[None, :] < width))
        if SELECTIVE:
            weight = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww,
                             mask=mask_e[:, None] & (offs_w[None, :] < width), other=0.0).to(tl.float32)
            acc = tl.sum(window.to(tl.float32) * weight, axis=1)
            if HAS_CONV_BIAS:
                acc += tl.load(convb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
            xc = acc * tl.sigmoid(acc)
            cols = offs_e[None, :] * s_xpe
            w_dt = tl.load(xproj_ptr + offs_r[:, None] * s_xpr + cols, mask=mask_r[:, None] & mask_e[None, :],
                           other=0.0).to(tl.float32)
            dt_low += tl.sum(w_dt * xc[None, :], axis=1)
            w_B = tl.load(xproj_ptr + (rank + offs_n[:, None]) * s_xpr + cols, mask=mask_n[:, None] & mask_e[None, :],
                          other=0.0).to(tl.float32)
            B_sel += tl.sum(w_B * xc[None, :], axis=1)
            w_C = tl.load(xproj_ptr + (rank + n_state + offs_n[:, None]) * s_xpr + cols,
                          mask=mask_n[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
            C_sel += tl.sum(w_C * xc[None, :], axis=1)
    tl.debug_barrier()  # pass 2 reads the windows pass 1 stored, across threads

    # pass 2: conv output from the new window, delta, state update, gate, out_proj accumulated
    out = tl.zeros([BLOCK_H], dtype=tl.float32)
    for e0 in range(0, dim, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < dim
        window = tl.load(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + offs_w[None, :] * s_cw,
                         mask=mask_e[:, None] & (offs_w[None, :] < width), other=0.0).to(tl.float32)
        weight = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww,
                         mask=mask_e[:, None] & (offs_w[None, :] < width), other=0.0).to(tl.float32)
        acc = tl.sum(window * weight, axis=1)
        if HAS_CONV_BIAS:
            acc += tl.load(convb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        xc = acc * tl.sigmoid(acc)

        if SELECTIVE:
            w_dt = tl.load(dtproj_ptr + offs_e[:, None] * s_dpe + offs_r[None, :] * s_dpr,
                           mask=mask_e[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
            delta = tl.sum(w_dt * dt_low[None, :], axis=1)
        else:
            delta = tl.zeros([BLOCK_E], dtype=tl.float32)
        if HAS_DT_BIAS:
            delta += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        if DT_SOFTPLUS:
            delta = _softplus(delta)

        tile = mask_e[:, None] & mask_n[None, :]
        A = tl.load(A_ptr + offs_e[:, None] * s_ae + offs_n[None, :] * s_an, mask=tile, other=0.0)
        h_ptrs = ssm_ptr + row * s_hb + offs_e[:, None] * s_he + offs_n[None, :] * s_hn
        h = tl.load(h_ptrs, mask=tile, other=0.0)
        if SELECTIVE:
            B_t = B_sel[None, :]
            C_t = C_sel[None, :]
        else:
            B_t = tl.load(B_ptr + offs_e[:, None] * s_Be + offs_n[None, :] * s_Bn, mask=tile, other=0.0).to(tl.float32)
            C_t = tl.load(C_ptr + offs_e[:, None] * s_Ce + offs_n[None, :] * s_Cn, mask=tile, other=0.0).to(tl.float32)
        y = _update_state(delta, A, h, xc, B_t, C_t, h_ptrs, tile, D_ptr, offs_e, mask_e, HAS_D)

        w_z = tl.load(win_ptr + (dim + offs_e[:, None]) * s_wir + offs_h[None, :] * s_wih,
                      mask=mask_e[:, None] & mask_h[None, :], other=0.0).to(tl.float32)
        z = tl.sum(w_z * normed[None, :], axis=1)
        if HAS_IN_BIAS:
            z += tl.load(bin_ptr + dim + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        y = tl.where(mask_e, y * z * tl.sigmoid(z), 0.0)

        w_out = tl.load(wout_ptr + offs_h[:, None] * s_woh + offs_e[None, :] * s_woe,
                        mask=mask_h[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
        out += tl.sum(w_out * y[None, :], axis=1)
    return out


@triton.jit
def _mamba_block_step_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, ONE_TILE: tl.constexpr, PDL: tl.constexpr = False,
):
    """PDL (launched as a programmatic dependent launch, Hopper on): the next launch may start at once, and
    this one loads what the launches before it cannot have changed (the weights, one-tile path) before
    ``gdc_wait``."""
    row = tl.program_id(0)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    if PDL:
        gdc_launch_dependents()
    if ONE_TILE:
        out, residual = _one_tile_block(
            0.0, row, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr,
            A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr, hidden, dim, rank, n_state, width, eps,
            s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
            s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
            RMS_NORM, HAS_NORM_BIAS, HAS_IN_BIAS, HAS_CONV_BIAS, HAS_D, HAS_DT_BIAS, SELECTIVE, DT_SOFTPLUS,
            BLOCK_H, BLOCK_E, BLOCK_N, BLOCK_R, BLOCK_W, x_ptr, s_xb, s_xh, True, PDL)
    else:
        if PDL:
            gdc_wait()
        residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
        out = _tiled_block(
            residual, row, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr,
            A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr, hidden, dim, rank, n_state, width, eps,
            s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
            s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
            RMS_NORM, HAS_NORM_BIAS, HAS_IN_BIAS, HAS_CONV_BIAS, HAS_D, HAS_DT_BIAS, SELECTIVE, DT_SOFTPLUS,
            BLOCK_H, BLOCK_E, BLOCK_N, BLOCK_R, BLOCK_W)

    if HAS_OUT_BIAS:
        out += tl.load(bout_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_ob + offs_h * s_oh, (residual + out).to(out_ptr.dtype.element_ty), mask=mask_h)


# ----------------------------------------------------------------------------- the split block step
# One block's step for a few streams spread over many programs: stream ``row`` = program_id(0), its channels
# cut into slices of BLOCK_E, slice = program_id(1). The two sums over all channels (x_proj's for delta, B
# and C; out_proj's) go through per-slice partial rows, summed in slice order by the next launch, so a step
# is three launches whose programs each load 1 / n_split of the block's weights (a single program per
# stream has to pull all of them through one multiprocessor). Same positional arguments as
# ``_mamba_block_step_kernel`` plus the scratch: xc (B, E) float32, part (B, n_split, PW) float32 with PW =
# BLOCK_R + 2 BLOCK_N (dt_low, B, C), opart (B, n_split, BLOCK_H) float32.


@triton.jit
def _split_in_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    xc_ptr, part_ptr, opart_ptr, n_split,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = False,
):
    """Launch 1 of 3: norm, the slice's u = in_proj @ normed shifted into its conv windows (stored),
    xc = silu(conv) to the xc scratch; selective, the slice's share of x_proj @ xc to part[row, slice].
    PDL as in ``_mamba_block_step_kernel``: the weights are loaded before ``gdc_wait``."""
    row = tl.program_id(0)
    piece = tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_w = tl.arange(0, BLOCK_W)
    offs_e = piece * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < dim
    in_window = offs_w[None, :] < width
    # every load first, as in the one-tile block
    w_in = tl.load(win_ptr + offs_e[:, None] * s_wir + offs_h[None, :] * s_wih,
                   mask=mask_e[:, None] & mask_h[None, :], other=0.0)
    conv_w = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww, mask=mask_e[:, None] & in_window,
                     other=0.0).to(tl.float32)
    if SELECTIVE:
        offs_n = tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        cols = offs_e[None, :] * s_xpe
        w_dt = tl.load(xproj_ptr + offs_r[:, None] * s_xpr + cols, mask=(offs_r < rank)[:, None] & mask_e[None, :],
                       other=0.0)
        w_B = tl.load(xproj_ptr + (rank + offs_n[:, None]) * s_xpr + cols,
                      mask=(offs_n < n_state)[:, None] & mask_e[None, :], other=0.0)
        w_C = tl.load(xproj_ptr + (rank + n_state + offs_n[:, None]) * s_xpr + cols,
                      mask=(offs_n < n_state)[:, None] & mask_e[None, :], other=0.0)
    if PDL:
        gdc_wait()
    residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    old = tl.load(conv_ptr + row * s_cb + offs_e[:, None] * s_ce + (offs_w[None, :] + 1) * s_cw,
                  mask=mask_e[:, None] & (offs_w[None, :] + 1 < width), other=0.0)

    normed = _norm_row(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
    u = tl.sum(w_in.to(tl.float32) * normed[None, :], axis=1)
    if HAS_IN_BIAS:
        u += tl.load(bin_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    xc = _shift_and_convolve(u, old, conv_w, conv_ptr, row, s_cb, s_ce, s_cw, mask_e[:, None] & in_window, convb_ptr,
                             offs_e, mask_e, width, offs_w, HAS_CONV_BIAS)
    tl.store(xc_ptr + row * dim + offs_e, xc, mask=mask_e)
    if SELECTIVE:
        part = part_ptr + (row * n_split + piece) * (BLOCK_R + 2 * BLOCK_N)
        tl.store(part + offs_r, tl.sum(w_dt.to(tl.float32) * xc[None, :], axis=1))
        tl.store(part + BLOCK_R + offs_n, tl.sum(w_B.to(tl.float32) * xc[None, :], axis=1))
        tl.store(part + BLOCK_R + BLOCK_N + offs_n, tl.sum(w_C.to(tl.float32) * xc[None, :], axis=1))


@triton.jit
def _split_out_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    xc_ptr, part_ptr, opart_ptr, n_split,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = False,
):
    """Launch 2 of 3: delta, B and C from the partial rows (summed in slice order), the slice's state
    update (stored), y = C h + D xc gated by silu(z) (z from the slice's in_proj rows), and its share of
    out_proj @ y to opart[row, slice]. PDL: the weights are loaded before ``gdc_wait``."""
    row = tl.program_id(0)
    piece = tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_n = offs_n < n_state
    offs_e = piece * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < dim
    tile = mask_e[:, None] & mask_n[None, :]
    w_z = tl.load(win_ptr + (dim + offs_e[:, None]) * s_wir + offs_h[None, :] * s_wih,
                  mask=mask_e[:, None] & mask_h[None, :], other=0.0)
    A = tl.load(A_ptr + offs_e[:, None] * s_ae + offs_n[None, :] * s_an, mask=tile, other=0.0)
    w_out = tl.load(wout_ptr + offs_h[:, None] * s_woh + offs_e[None, :] * s_woe,
                    mask=mask_h[:, None] & mask_e[None, :], other=0.0)
    if SELECTIVE:
        w_delta = tl.load(dtproj_ptr + offs_e[:, None] * s_dpe + offs_r[None, :] * s_dpr,
                          mask=mask_e[:, None] & (offs_r < rank)[None, :], other=0.0)
    if PDL:
        gdc_wait()
    residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    xc = tl.load(xc_ptr + row * dim + offs_e, mask=mask_e, other=0.0)
    h_ptrs = ssm_ptr + row * s_hb + offs_e[:, None] * s_he + offs_n[None, :] * s_hn
    h = tl.load(h_ptrs, mask=tile, other=0.0)
    if SELECTIVE:
        offs_s = tl.arange(0, BLOCK_S)
        parts = part_ptr + (row * n_split + offs_s[:, None]) * (BLOCK_R + 2 * BLOCK_N)
        in_split = (offs_s < n_split)[:, None]
        dt_low = tl.sum(tl.load(parts + offs_r[None, :], mask=in_split, other=0.0), axis=0)
        B_t = tl.sum(tl.load(parts + BLOCK_R + offs_n[None, :], mask=in_split, other=0.0), axis=0)[None, :]
        C_t = tl.sum(tl.load(parts + BLOCK_R + BLOCK_N + offs_n[None, :], mask=in_split, other=0.0), axis=0)[None, :]
        delta = tl.sum(w_delta.to(tl.float32) * dt_low[None, :], axis=1)
    else:
        B_t = tl.load(B_ptr + offs_e[:, None] * s_Be + offs_n[None, :] * s_Bn, mask=tile, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + offs_e[:, None] * s_Ce + offs_n[None, :] * s_Cn, mask=tile, other=0.0).to(tl.float32)
        delta = tl.zeros([BLOCK_E], dtype=tl.float32)
    if HAS_DT_BIAS:
        delta += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        delta = _softplus(delta)
    y = _update_state(delta, A, h, xc, B_t, C_t, h_ptrs, tile, D_ptr, offs_e, mask_e, HAS_D)
    normed = _norm_row(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
    z = tl.sum(w_z.to(tl.float32) * normed[None, :], axis=1)
    if HAS_IN_BIAS:
        z += tl.load(bin_ptr + dim + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    y = tl.where(mask_e, y * z * tl.sigmoid(z), 0.0)
    tl.store(opart_ptr + (row * n_split + piece) * BLOCK_H + offs_h, tl.sum(w_out.to(tl.float32) * y[None, :], axis=1))


@triton.jit
def _split_sum_kernel(x_ptr, out_ptr, bout_ptr, opart_ptr, hidden, n_split, s_xb, s_xh, s_ob, s_oh,
                      HAS_OUT_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr,
                      PDL: tl.constexpr = False):
    """Launch 3 of 3: out = x + out_proj's bias + the slices' out_proj rows, summed in slice order."""
    row = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_s = tl.arange(0, BLOCK_S)
    parts = tl.load(opart_ptr + (row * n_split + offs_s[:, None]) * BLOCK_H + offs_h[None, :],
                    mask=(offs_s < n_split)[:, None], other=0.0)
    out = tl.sum(parts, axis=0)
    if HAS_OUT_BIAS:
        out += tl.load(bout_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_ob + offs_h * s_oh, (residual + out).to(out_ptr.dtype.element_ty), mask=mask_h)


# ----------------------------------------------------------------------------- the split step for many streams
# The split step's three launches with a tile of BLOCK_M streams per program instead of one, so that a slice's
# weights are read once per tile rather than once per stream: its projections become matrix products (tl.dot in
# float32, IEEE: the same arithmetic as the per-stream kernels), its SSM state a (streams, channels, N) tile.
# Grid (cdiv(batch, BLOCK_M), n_split); the scratch rows and their layout are the split step's, and its
# ``_split_sum_kernel`` is launch 3. BLOCK_H, BLOCK_E, BLOCK_N, BLOCK_R and BLOCK_M are at least 16 (tl.dot).
# Opt-in (``block_m``, or ``STREAM_TILES`` for the defaults): on the H100 it was slower than a program per stream
# at 256 streams and about as fast at 1024 (``block_step_config``'s docstring has the figures).


@triton.jit
def _norm_rows(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM: tl.constexpr,
               HAS_NORM_BIAS: tl.constexpr):
    """``_norm_row`` for a tile of rows, residual (BLOCK_M, BLOCK_H) float32."""
    if RMS_NORM:
        normed = residual * tl.rsqrt(tl.sum(residual * residual, axis=1) / hidden + eps)[:, None]
    else:
        centred = tl.where(mask_h[None, :], residual - (tl.sum(residual, axis=1) / hidden)[:, None], 0.0)
        normed = centred * tl.rsqrt(tl.sum(centred * centred, axis=1) / hidden + eps)[:, None]
    normed *= tl.load(normw_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    if HAS_NORM_BIAS:
        normed += tl.load(normb_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    return tl.where(mask_h[None, :], normed, 0.0)


@triton.jit
def _rows_in_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    xc_ptr, part_ptr, opart_ptr, n_split, batch,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr = False,
):
    """``_split_in_kernel`` for BLOCK_M streams: norm, u = normed @ in_proj[slice].T shifted into the conv
    windows, xc to the scratch, and the slice's share of xc @ x_proj[:, slice].T to the partial rows."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    piece = tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    mask_m = rows < batch
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_w = tl.arange(0, BLOCK_W)
    offs_e = piece * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < dim
    # the weights, laid out as the right-hand sides of the products
    w_in = tl.load(win_ptr + offs_e[None, :] * s_wir + offs_h[:, None] * s_wih,
                   mask=mask_h[:, None] & mask_e[None, :], other=0.0).to(tl.float32)  # (H, E)
    conv_w = tl.load(convw_ptr + offs_e[:, None] * s_we + offs_w[None, :] * s_ww,
                     mask=mask_e[:, None] & (offs_w[None, :] < width), other=0.0).to(tl.float32)
    if SELECTIVE:
        offs_n = tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        mask_n = (offs_n < n_state)[None, :]
        cols = xproj_ptr + offs_e[:, None] * s_xpe
        w_dt = tl.load(cols + offs_r[None, :] * s_xpr, mask=mask_e[:, None] & (offs_r < rank)[None, :],
                       other=0.0).to(tl.float32)  # (E, R)
        w_B = tl.load(cols + (rank + offs_n[None, :]) * s_xpr, mask=mask_e[:, None] & mask_n, other=0.0).to(tl.float32)
        w_C = tl.load(cols + (rank + n_state + offs_n[None, :]) * s_xpr, mask=mask_e[:, None] & mask_n,
                      other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()
    residual = tl.load(x_ptr + rows[:, None] * s_xb + offs_h[None, :] * s_xh, mask=mask_m[:, None] & mask_h[None, :],
                       other=0.0).to(tl.float32)
    windows = conv_ptr + rows[:, None, None] * s_cb + offs_e[None, :, None] * s_ce
    w3 = offs_w[None, None, :]
    rows_e = mask_m[:, None, None] & mask_e[None, :, None]
    old = tl.load(windows + (w3 + 1) * s_cw, mask=rows_e & (w3 + 1 < width), other=0.0)

    normed = _norm_rows(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
    u = tl.dot(normed, w_in, input_precision="ieee")
    if HAS_IN_BIAS:
        u += tl.load(bin_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    window = tl.where(w3 == width - 1, u.to(conv_ptr.dtype.element_ty)[:, :, None], old)
    tl.debug_barrier()  # the old windows are read everywhere before they are overwritten
    tl.store(windows + w3 * s_cw, window, mask=rows_e & (w3 < width))
    acc = tl.sum(window.to(tl.float32) * conv_w[None, :, :], axis=2)
    if HAS_CONV_BIAS:
        acc += tl.load(convb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    xc = acc * tl.sigmoid(acc)  # masked channels: silu(0) = 0, so they add nothing to the products
    tl.store(xc_ptr + rows[:, None] * dim + offs_e[None, :], xc, mask=mask_m[:, None] & mask_e[None, :])
    if SELECTIVE:
        part = part_ptr + (rows[:, None] * n_split + piece) * (BLOCK_R + 2 * BLOCK_N)
        tl.store(part + offs_r[None, :], tl.dot(xc, w_dt, input_precision="ieee"), mask=mask_m[:, None])
        tl.store(part + BLOCK_R + offs_n[None, :], tl.dot(xc, w_B, input_precision="ieee"), mask=mask_m[:, None])
        tl.store(part + BLOCK_R + BLOCK_N + offs_n[None, :], tl.dot(xc, w_C, input_precision="ieee"),
                 mask=mask_m[:, None])


@triton.jit
def _rows_out_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    xc_ptr, part_ptr, opart_ptr, n_split, batch,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr = False,
):
    """``_split_out_kernel`` for BLOCK_M streams: delta = dt_low @ dt_proj[slice].T, the (streams, channels, N)
    state tile updated, y gated by z = normed @ in_proj[E + slice].T, and y @ out_proj[:, slice].T to the
    partial rows."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    piece = tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    mask_m = rows < batch
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_n = offs_n < n_state
    offs_e = piece * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < dim
    tile = mask_e[:, None] & mask_n[None, :]
    w_z = tl.load(win_ptr + (dim + offs_e[None, :]) * s_wir + offs_h[:, None] * s_wih,
                  mask=mask_h[:, None] & mask_e[None, :], other=0.0).to(tl.float32)  # (H, E)
    A = tl.load(A_ptr + offs_e[:, None] * s_ae + offs_n[None, :] * s_an, mask=tile, other=0.0)
    w_out = tl.load(wout_ptr + offs_h[None, :] * s_woh + offs_e[:, None] * s_woe,
                    mask=mask_e[:, None] & mask_h[None, :], other=0.0).to(tl.float32)  # (E, H)
    if SELECTIVE:
        w_delta = tl.load(dtproj_ptr + offs_e[None, :] * s_dpe + offs_r[:, None] * s_dpr,
                          mask=(offs_r < rank)[:, None] & mask_e[None, :], other=0.0).to(tl.float32)  # (R, E)
    else:
        B_t = tl.load(B_ptr + offs_e[:, None] * s_Be + offs_n[None, :] * s_Bn, mask=tile, other=0.0).to(tl.float32)
        C_t = tl.load(C_ptr + offs_e[:, None] * s_Ce + offs_n[None, :] * s_Cn, mask=tile, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()
    rows_e = mask_m[:, None] & mask_e[None, :]
    residual = tl.load(x_ptr + rows[:, None] * s_xb + offs_h[None, :] * s_xh, mask=mask_m[:, None] & mask_h[None, :],
                       other=0.0).to(tl.float32)
    xc = tl.load(xc_ptr + rows[:, None] * dim + offs_e[None, :], mask=rows_e, other=0.0)
    h_ptrs = ssm_ptr + rows[:, None, None] * s_hb + offs_e[None, :, None] * s_he + offs_n[None, None, :] * s_hn
    tile3 = rows_e[:, :, None] & mask_n[None, None, :]
    h = tl.load(h_ptrs, mask=tile3, other=0.0)
    if SELECTIVE:
        offs_s = tl.arange(0, BLOCK_S)
        parts = part_ptr + (rows[:, None, None] * n_split + offs_s[None, :, None]) * (BLOCK_R + 2 * BLOCK_N)
        in_split = mask_m[:, None, None] & (offs_s < n_split)[None, :, None]
        dt_low = tl.sum(tl.load(parts + offs_r[None, None, :], mask=in_split, other=0.0), axis=1)
        B3 = tl.sum(tl.load(parts + BLOCK_R + offs_n[None, None, :], mask=in_split, other=0.0), axis=1)[:, None, :]
        C3 = tl.sum(tl.load(parts + BLOCK_R + BLOCK_N + offs_n[None, None, :], mask=in_split, other=0.0),
                    axis=1)[:, None, :]
        delta = tl.dot(dt_low, w_delta, input_precision="ieee")
    else:
        B3 = B_t[None, :, :]
        C3 = C_t[None, :, :]
        delta = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    if HAS_DT_BIAS:
        delta += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    if DT_SOFTPLUS:
        delta = _softplus(delta)
    h = tl.exp(delta[:, :, None] * A[None, :, :]) * h + (delta * xc)[:, :, None] * B3
    tl.store(h_ptrs, h, mask=tile3)
    y = tl.sum(h * C3, axis=2)
    if HAS_D:
        y += tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :] * xc
    normed = _norm_rows(residual, normw_ptr, normb_ptr, offs_h, mask_h, hidden, eps, RMS_NORM, HAS_NORM_BIAS)
    z = tl.dot(normed, w_z, input_precision="ieee")
    if HAS_IN_BIAS:
        z += tl.load(bin_ptr + dim + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    y = tl.where(mask_e[None, :], y * z * tl.sigmoid(z), 0.0)
    tl.store(opart_ptr + (rows[:, None] * n_split + piece) * BLOCK_H + offs_h[None, :],
             tl.dot(y, w_out, input_precision="ieee"), mask=mask_m[:, None])


@triton.jit
def _offset(offsets, j, MULTIPLE: tl.constexpr):
    """Entry ``j`` of one block's row of the stack's offset table, declared a multiple of ``MULTIPLE``."""
    return tl.multiple_of(tl.load(offsets + j), MULTIPLE)


@triton.jit
def _mamba_blocks_step_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, bin_ptr, wout_ptr, bout_ptr,
    conv_ptr, ssm_ptr, convw_ptr, convb_ptr, A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, B_ptr, C_ptr,
    hidden, dim, rank, n_state, width, eps,
    s_xb, s_xh, s_ob, s_oh, s_wir, s_wih, s_woh, s_woe,
    s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    s_we, s_ww, s_ae, s_an,
    s_xpr, s_xpe, s_dpe, s_dpr,
    s_Be, s_Bn, s_Ce, s_Cn,
    offsets_ptr, n_blocks,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    SELECTIVE: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr, ONE_TILE: tl.constexpr, N_TENSORS: tl.constexpr, OFFSET_MULTIPLE: tl.constexpr,
):
    """``n_blocks`` blocks in turn for stream ``row``, each as ``_mamba_block_step_kernel`` steps it, the residual
    stream kept in registers between them. The pointers are block 0's; block k's tensors lie ``offsets[k, j]``
    elements from them (j in the order of ``step_ref.BLOCK_TENSORS``), each a multiple of ``OFFSET_MULTIPLE``
    (so block k's rows are as aligned as block 0's, and their loads can stay vectorised)."""
    row = tl.program_id(0)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    residual = tl.load(x_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    for k in range(n_blocks):
        o = offsets_ptr + k * N_TENSORS
        normw, normb = normw_ptr + _offset(o, 0, OFFSET_MULTIPLE), normb_ptr + _offset(o, 1, OFFSET_MULTIPLE)
        win, b_in = win_ptr + _offset(o, 2, OFFSET_MULTIPLE), bin_ptr + _offset(o, 3, OFFSET_MULTIPLE)
        wout, conv = wout_ptr + _offset(o, 4, OFFSET_MULTIPLE), conv_ptr + _offset(o, 6, OFFSET_MULTIPLE)
        ssm, convw = ssm_ptr + _offset(o, 7, OFFSET_MULTIPLE), convw_ptr + _offset(o, 8, OFFSET_MULTIPLE)
        convb, A = convb_ptr + _offset(o, 9, OFFSET_MULTIPLE), A_ptr + _offset(o, 10, OFFSET_MULTIPLE)
        D, dtb = D_ptr + _offset(o, 11, OFFSET_MULTIPLE), dtb_ptr + _offset(o, 12, OFFSET_MULTIPLE)
        xproj, dtproj = xproj_ptr + _offset(o, 13, OFFSET_MULTIPLE), dtproj_ptr + _offset(o, 14, OFFSET_MULTIPLE)
        B, C = B_ptr + _offset(o, 15, OFFSET_MULTIPLE), C_ptr + _offset(o, 16, OFFSET_MULTIPLE)
        if ONE_TILE:
            out, residual = _one_tile_block(
                residual, row, normw, normb, win, b_in, wout, conv, ssm, convw, convb, A, D, dtb, xproj, dtproj, B, C,
                hidden, dim, rank, n_state, width, eps,
                s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
                s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
                RMS_NORM, HAS_NORM_BIAS, HAS_IN_BIAS, HAS_CONV_BIAS, HAS_D, HAS_DT_BIAS, SELECTIVE, DT_SOFTPLUS,
                BLOCK_H, BLOCK_E, BLOCK_N, BLOCK_R, BLOCK_W, x_ptr, s_xb, s_xh)
        else:
            out = _tiled_block(
                residual, row, normw, normb, win, b_in, wout, conv, ssm, convw, convb, A, D, dtb, xproj, dtproj, B, C,
                hidden, dim, rank, n_state, width, eps,
                s_wir, s_wih, s_woh, s_woe, s_cb, s_ce, s_cw, s_hb, s_he, s_hn, s_we, s_ww, s_ae, s_an,
                s_xpr, s_xpe, s_dpe, s_dpr, s_Be, s_Bn, s_Ce, s_Cn,
                RMS_NORM, HAS_NORM_BIAS, HAS_IN_BIAS, HAS_CONV_BIAS, HAS_D, HAS_DT_BIAS, SELECTIVE, DT_SOFTPLUS,
                BLOCK_H, BLOCK_E, BLOCK_N, BLOCK_R, BLOCK_W)
        if HAS_OUT_BIAS:
            out += tl.load(bout_ptr + _offset(o, 5, OFFSET_MULTIPLE) + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        residual = (residual + out).to(out_ptr.dtype.element_ty).to(tl.float32)  # as separate steps round it
    tl.store(out_ptr + row * s_ob + offs_h * s_oh, residual.to(out_ptr.dtype.element_ty), mask=mask_h)


def _block_launch(x: Tensor, out: Tensor, block: dict, norm_eps: float, rms_norm: bool, dt_softplus: bool,
                  block_e: int | None, num_warps: int | None) -> tuple[tuple, dict]:
    """Check one block's tensors (named as ``step_ref.BLOCK_TENSORS``) for x (B, H) -> (the block kernel's
    positional arguments, its constexpr and launch keywords)."""
    batch, hidden = x.shape
    dim = block["conv_weight"].shape[0]
    in_proj_weight, out_proj_weight = block["in_proj_weight"], block["out_proj_weight"]
    if in_proj_weight.shape != (2 * dim, hidden) or out_proj_weight.shape != (hidden, dim):
        raise ValueError(f"in_proj_weight must be (2 * channels, hidden)=({2 * dim}, {hidden}) and out_proj_weight "
                         f"(hidden, channels)=({hidden}, {dim}); got {tuple(in_proj_weight.shape)} and "
                         f"{tuple(out_proj_weight.shape)}")
    check_step_inputs(x.new_empty(batch, dim), None, *(block[name] for name in (
        "conv_state", "ssm_state", "conv_weight", "conv_bias", "A", "D", "dt_bias", "x_proj_weight", "dt_proj_weight",
        "B", "C")))
    if block["norm_weight"].shape != (hidden,):
        raise ValueError(f"norm_weight must be (hidden,)=({hidden},), got {tuple(block['norm_weight'].shape)}")
    A = block["A"]
    if not supports(A) or A.dtype != torch.float32:
        raise ValueError("the Triton step takes real float32 A; complex A runs on the reference")
    selective = block["x_proj_weight"] is not None
    n_state, width = A.shape[1], block["conv_weight"].shape[1]
    rank = block["dt_proj_weight"].shape[1] if selective else 1
    if block_e is None or num_warps is None:  # the stacked step's defaults (the one-block step passes its own)
        default_e, default_warps, _, _ = block_step_config(hidden, dim, batch, split=False)
        block_e, num_warps = block_e or default_e, num_warps or default_warps
    if block_e & (block_e - 1):
        raise ValueError(f"block_e must be a power of two, got {block_e}")

    def given(name: str) -> Tensor:  # any tensor stands in for an absent operand; the constexpr flags keep it unread
        return x if block[name] is None or (name in ("B", "C") and selective) else block[name]

    def strides(name: str, ndim: int) -> tuple[int, ...]:
        return tuple(given(name).stride()) if given(name) is not x else (0,) * ndim

    args = (x, out, *(given(name) for name in ("norm_weight", "norm_bias", "in_proj_weight", "in_proj_bias",
                                                 "out_proj_weight", "out_proj_bias", "conv_state", "ssm_state",
                                                 "conv_weight", "conv_bias", "A", "D", "dt_bias", "x_proj_weight",
                                                 "dt_proj_weight", "B", "C")),
            hidden, dim, rank, n_state, width, float(norm_eps),
            *x.stride(), *out.stride(), *in_proj_weight.stride(), *out_proj_weight.stride(),
            *block["conv_state"].stride(), *block["ssm_state"].stride(), *block["conv_weight"].stride(), *A.stride(),
            *strides("x_proj_weight", 2), *strides("dt_proj_weight", 2), *strides("B", 2), *strides("C", 2))
    meta = dict(
        RMS_NORM=rms_norm, HAS_NORM_BIAS=block["norm_bias"] is not None, HAS_IN_BIAS=block["in_proj_bias"] is not None,
        HAS_OUT_BIAS=block["out_proj_bias"] is not None, HAS_CONV_BIAS=block["conv_bias"] is not None,
        HAS_D=block["D"] is not None, HAS_DT_BIAS=block["dt_bias"] is not None, SELECTIVE=selective,
        DT_SOFTPLUS=dt_softplus, BLOCK_H=triton.next_power_of_2(hidden), BLOCK_E=block_e,
        BLOCK_N=triton.next_power_of_2(n_state), BLOCK_R=triton.next_power_of_2(rank),
        BLOCK_W=triton.next_power_of_2(width), ONE_TILE=block_e >= dim, num_warps=num_warps)
    return args, meta


def mamba_block_step_triton(
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
    block_e: int | None = None,
    num_warps: int | None = None,
    split: bool | None = None,
    block_m: int | None = None,
) -> Tensor:
    """A whole residual block's step (``step_ref.mamba_block_step_ref``): norm, in_proj, the fused Mamba step,
    out_proj, residual.

    Either one launch with one program per stream, which walks the channels twice (as ``_mamba_step_kernel``),
    the conv state holding the new windows between the passes; or, ``split``, three launches whose programs
    each take one slice of ``block_e`` channels of one stream (see ``_split_in_kernel``): for a few streams of a
    wide block, whose weights one program per stream would pull through a single multiprocessor; or of
    ``block_m`` streams (``_rows_in_kernel``): for many streams, whose programs then share each weight load.

    ``split``, ``block_e`` (channels per tile or slice, a power of two), ``num_warps`` and ``block_m`` (streams
    per program of the split step: 1, or a power of two from 16) override ``block_step_config``'s choice."""
    block = dict(norm_weight=norm_weight, norm_bias=norm_bias, in_proj_weight=in_proj_weight,
                 in_proj_bias=in_proj_bias, out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias,
                 conv_state=conv_state, ssm_state=ssm_state, conv_weight=conv_weight, conv_bias=conv_bias, A=A, D=D,
                 dt_bias=dt_bias, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight, B=B, C=C)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    batch, hidden = x.shape
    dim = conv_weight.shape[0]
    default_e, default_warps, default_split, default_m = block_step_config(hidden, dim, batch)
    if split is False and (block_m or 1) > 1:
        raise ValueError(f"block_m={block_m} streams per program is a setting of the split step; split=False")
    if split is None:
        split = default_split or (block_m or 1) > 1
    elif split != default_split and block_e is None:  # the other path's defaults
        default_e, default_warps, _, default_m = block_step_config(hidden, dim, batch, split=split)
    block_m = (block_m or default_m) if split else 1
    if block_m != 1 and (block_m < 16 or block_m & (block_m - 1)):
        raise ValueError(f"block_m (streams per program) must be 1 or a power of two from 16, got {block_m}")
    if block_m > 1 and block_e is not None and block_e < 16:
        raise ValueError(f"block_e must be at least 16 with block_m > 1 (matrix products), got {block_e}")
    args, meta = _block_launch(x, out, block, norm_eps, rms_norm, dt_softplus, block_e or default_e,
                               num_warps or default_warps)
    if not batch:
        return out
    pdl = dependent_launches(x.device)
    meta.update(PDL=pdl, **({"launch_pdl": True} if pdl else {}))
    if not split:
        _mamba_block_step_kernel[(batch,)](*args, **meta)
        return out
    meta.pop("ONE_TILE")
    if block_m > 1:  # tl.dot takes no side under 16
        meta.update({k: max(16, meta[k]) for k in ("BLOCK_H", "BLOCK_N", "BLOCK_R")}, BLOCK_M=block_m)
    n_split = triton.cdiv(dim, meta["BLOCK_E"])
    meta["BLOCK_S"] = triton.next_power_of_2(n_split)
    f32 = dict(device=x.device, dtype=torch.float32)
    xc = torch.empty(batch, dim, **f32)
    part = torch.empty(batch, n_split, meta["BLOCK_R"] + 2 * meta["BLOCK_N"], **f32)
    opart = torch.empty(batch, n_split, meta["BLOCK_H"], **f32)
    if block_m > 1:
        grid = (triton.cdiv(batch, block_m), n_split)
        _rows_in_kernel[grid](*args, xc, part, opart, n_split, batch, **meta)
        _rows_out_kernel[grid](*args, xc, part, opart, n_split, batch, **meta)
    else:
        _split_in_kernel[(batch, n_split)](*args, xc, part, opart, n_split, **meta)
        _split_out_kernel[(batch, n_split)](*args, xc, part, opart, n_split, **meta)
    _split_sum_kernel[(batch,)](x, out, args[7], opart, hidden, n_split, *x.stride(), *out.stride(),
                                HAS_OUT_BIAS=meta["HAS_OUT_BIAS"], BLOCK_H=meta["BLOCK_H"], BLOCK_S=meta["BLOCK_S"],
                                num_warps=meta["num_warps"], PDL=pdl, **({"launch_pdl": True} if pdl else {}))
    return out


def mamba_blocks_step_triton(x: Tensor, stack: BlockStack, block_e: int | None = None,
                             num_warps: int | None = None) -> Tensor:
    """Every block of ``stack`` (``step_ref.BlockStack``) stepped in turn in one launch, the residual stream
    kept in registers between blocks: ``step_ref.mamba_blocks_step_ref``'s result, states updated in place.
    ``block_e`` and ``num_warps`` as ``mamba_block_step_triton``'s."""
    if stack.offsets.device != x.device:
        raise ValueError(f"the stack's tensors are on {stack.offsets.device}, x on {x.device}")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    args, meta = _block_launch(x, out, stack.blocks[0], stack.norm_eps, stack.rms_norm, stack.dt_softplus, block_e,
                               num_warps)
    if x.shape[0]:
        _mamba_blocks_step_kernel[(x.shape[0],)](*args, stack.offsets, len(stack), N_TENSORS=len(BLOCK_TENSORS),
                                                 OFFSET_MULTIPLE=stack.offset_multiple, **meta)
    return out


# Block steps go as programmatic dependent launches on Hopper and later (compute capability 9+, a Triton that
# has them): each lets the next launch start at once, and loads its weights while the one before it finishes
# (``gdc_wait`` guards the rest). False turns them off (the ablation rows of benchmarks/streaming.py).
DEPENDENT_LAUNCHES = True


# True: past 16 streams the split step takes tiles of 16 streams a program (``_rows_in_kernel``). Off by default:
# measured slower than a program per stream at 256 streams (benchmarks/NOTES_streaming.md); benchmarks/streaming.py
# times it as an ablation row.
STREAM_TILES = False


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@triton.jit
def _add_keep_kernel(x_ptr, other_ptr, out_ptr, keep_ptr, width, s_xb, s_xh, s_ob, s_oh, s_nb, s_nh, s_kb, s_kh,
                     BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """out = x + other and keep = x for one row (``step_ref.add_keep_ref``); PDL as the block steps'."""
    row = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    x = tl.load(x_ptr + row * s_xb + offs * s_xh, mask=mask, other=0.0)
    other = tl.load(other_ptr + row * s_ob + offs * s_oh, mask=mask, other=0.0)
    tl.store(keep_ptr + row * s_kb + offs * s_kh, x.to(keep_ptr.dtype.element_ty), mask=mask)
    total = x.to(tl.float32) + other.to(tl.float32)
    tl.store(out_ptr + row * s_nb + offs * s_nh, total.to(out_ptr.dtype.element_ty), mask=mask)


def add_keep_triton(x: Tensor, other: Tensor, keep: Tensor) -> Tensor:
    """``step_ref.add_keep_ref`` in one launch: x + other (B, H), and x copied into ``keep`` (B, H)."""
    check_add_keep(x, other, keep)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    pdl = dependent_launches(x.device)
    _add_keep_kernel[(x.shape[0],)](x, other, out, keep, x.shape[1], *x.stride(), *other.stride(), *out.stride(),
                                    *keep.stride(), BLOCK=max(16, triton.next_power_of_2(x.shape[1])), PDL=pdl,
                                    num_warps=1, **({"launch_pdl": True} if pdl else {}))
    return out


def dependent_launches(device: torch.device) -> bool:
    """Whether the block steps on ``device`` go as programmatic dependent launches (``DEPENDENT_LAUNCHES``)."""
    if not DEPENDENT_LAUNCHES or device.type != "cuda" or not _TRITON_HAS_PDL:
        return False
    return _capability(torch.cuda.current_device() if device.index is None else device.index)[0] >= 9


def one_tile_for_any_batch(hidden: int, dim: int) -> bool:
    """Whether ``block_step_config`` gives a block of this shape one program per stream with every channel in one
    tile at every number of streams (its three regimes: up to 16 streams, up to 32, more)."""
    return all(not split and block_e >= dim for block_e, _, split, _ in (
        block_step_config(hidden, dim, batch) for batch in (1, 17, 33)))


def block_step_config(hidden: int, dim: int, batch: int = 1,
                      split: bool | None = None) -> tuple[int, int, bool, int]:
    """(channels per tile or slice, warps, split, streams per program of the split step) of the block step for
    ``batch`` streams of a block of width ``hidden`` with ``dim`` channels; ``split`` given, that path's.

    One program per stream, measured on an H100 (``benchmarks/step_sweep.py``, the SC09 model's three block
    shapes, tiles of 16 to 512 channels on 2, 4 and 8 warps; 2026-11-23, before the split path and dependent
    launches): a few streams are latency-bound, and the fewest passes over the channels win, tiles of up to 16K
    weights on 8 warps (hidden 64: 5.6 us per step against 9.2 with the earlier 2K tiles on 4 warps; hidden
    128: 13.3 against 34.2; hidden 256: 40.4 against 89.0); with 256 streams several programs share each SM,
    and 8K-weight tiles win, on 4 warps from hidden 128 up (7.7, 22.9 and 69.5 us against 10.7, 41.3 and 111.0).

    Split (one program per stream and slice of channels, three launches), measured in the 2026-11-24 sweeps
    (slices of 8 to 128 channels on 1, 2 and 4 warps, 1 and 16 streams; the committed result, with dependent
    launches, is benchmarks/results/step_sweep_nvidia_h100_80gb_hbm3.json): from 256 channels on, a few streams
    step 2-6x faster split (without dependent launches, hidden 128: 7.5 us per step against 13.3 for one
    stream, 8.0 against 13.9 for 16; hidden 256: 9.2 against 40.4, and 10.8 against 41.4), best with slices of
    16 channels on one warp (hidden 128) and 32 on four (hidden 256); at 128 channels the three launches cost
    more than they spread (6.0 us against 4.8), and 256 streams fill the GPU with one program each.

    More than 16 streams with ``STREAM_TILES``: the split step with 16 streams a program (``_rows_in_kernel``),
    slices of 32 channels on 4 warps. It reads each slice's weights once per 16 streams instead of once per
    stream, but measured slower (2026-11-24 sweep, benchmarks/results/step_sweep_rows_nvidia_h100_80gb_hbm3.json,
    fastest tile of streams against a program per stream, us per step of the three shapes: 256 streams 19.8 /
    42.6 / 69.4 against 8.0 / 22.3 / 69.4; 1024 streams 36.3 / 85.2 / 263 against 27.6 / 84.8 / 298).
    """
    block_h = triton.next_power_of_2(hidden)
    many = STREAM_TILES and batch > 16
    if split is None:
        split = many or (batch <= 16 and dim >= 256)
    if split and many:
        return 32, 4, True, 16
    if split:
        return (16, 1, True, 1) if block_h <= 128 else (32, 4, True, 1)
    weights = 16384 if batch <= 32 else 8192  # one program per stream: a few streams stay well under the SM count
    warps = 8 if batch <= 32 or block_h <= 64 else 4
    return max(16, min(triton.next_power_of_2(dim), weights // block_h)), warps, False, 1
