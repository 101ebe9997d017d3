"""Triton selective scan for training: forward and backward, parallel over the sequence.

Same function as ``selective_scan_ref`` (real A): mamba_ssm's ``selective_scan_fn``
plus an initial state in and the final state out, with gradients for both.

Shapes (B batch, D channels, L length, N state size, G groups, K chunks of T steps):

    u, delta, z        (B, D, L)       float32 / bfloat16 / float16, any strides
    A                  (D, N)          float32 real
    B, C               (B, N, L) or (B, G, N, L)
    D, delta_bias      (D,)
    initial_state      (B, D, N)
    seq_idx            (B, L) int32/int64, optional: packed sequences; the decay into
                       every position where it changes is zero, so the state restarts there

Per channel d and state n the recurrence is h_t = a_t h_{t-1} + x_t with
a_t = exp(delta_t A_n) and x_t = delta_t u_t B_t. The sequence is cut into K chunks:

forward, by default (without packed sequences; where segments, below, are long or one): the walk
  A thread per channel holds all N states in registers and steps through time itself,
  a few steps (16 bytes of input) per trip of its loop: no step waits on another
  thread, where a scan across threads spends shuffles on every step. The sequence is
  cut into segments (whole chunks) so that there are enough threads: a summary pass of
  the same kernel gives each segment's end state from a zero start and its decay,
  ``_carry_kernel`` the state entering every segment, then the walk proper writes y
  and the per-chunk states the backward starts from.
forward otherwise (and always with packed sequences, seq_idx): tiles
  1. ``_chunk_summary_kernel``: each chunk's decay over the chunk and its end state
     from a zero start (a weighted sum, no scan);
  2. ``_carry_kernel``: the state entering every chunk (a scan over chunks);
  3. ``_scan_fwd_kernel``: each chunk scanned from its entering state, contracted
     with C, plus D u, gated by silu(z).
  With one chunk, step 3 alone runs and writes the final state. When batch x channels
  alone fill the GPU, step 3 instead walks the chunks in order per block of channels
  (SEQUENTIAL), one exponential per element instead of two.

backward (the adjoint g_t = dL/dh_t runs backwards: g_t = dy_t C_t + a_{t+1} g_{t+1})
  1. ``_chunk_summary_kernel`` (reverse): each chunk's adjoint at its start from a zero end;
  2. ``_carry_kernel`` (reverse): the adjoint entering every chunk from the right;
  3. ``_scan_bwd_kernel``: per chunk, recompute h (from the entering states saved
     by the forward, B x (K+1) x D x N floats) and g, and form every gradient;
  4. ``_grad_sums_kernel``: the sums of its partials (below), each gradient in its dtype.

The tiled kernels (backward, packed forward) hold (channels x steps) tiles, one state n at a
time, as in mamba_ssm's CUDA kernel: y accumulates in registers and each thread scans several
consecutive steps.
Only the inputs and the per-chunk states are kept for backward: nothing of size
B*D*L*N. Sums over a split's channels (dB, dC) happen in order inside one program
(partials per split, summed after); sums over batch
and chunks (dA, dD, d delta_bias) go through per-program partial buffers summed
in a fixed order, so results are deterministic run to run.
At short sequences the GPU waits on the host, where each PyTorch operation costs 8-22 us
(H100 machine): the zero state entering the first chunk and the zero adjoint leaving the
last are written by the carry pass or the sequential forward where one runs, the backward's
float32 scratch is one allocation, and its partials are summed in one launch.
"""

from __future__ import annotations

import functools
import types
from typing import Mapping

import torch
import triton
import triton.language as tl

from ..launch import launch
from .naive import check_scan_inputs, check_seq_idx

Tensor = torch.Tensor

LOG2E = tl.constexpr(1.4426950408889634)


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) as torch computes it (threshold 20), accurate for very negative x: log1p(e) is
    computed as log(1 + e) e / ((1 + e) - 1), which stays exact where 1 + e rounds. Shared with the step kernel."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@triton.jit
def _linear_combine(a_prev, b_prev, a_next, b_next):
    """Compose h -> a_prev h + b_prev, then h -> a_next h + b_next."""
    return a_prev * a_next, a_next * b_prev + b_next


@triton.jit
def _adjoint_combine(f_late, q_late, v_late, f_early, q_early, v_early):
    """Combine two segments of the reverse recurrence g_t = v_t + a_{t+1} g_{t+1}.

    A segment [i..j] is summarised by f = a_i, q = prod_{r=i+1..j} a_r and
    v = sum_s prod_{r=i+1..s} a_r v_s. Used with ``reverse=True``, where Triton
    passes the segment later in time first.
    """
    bridge = q_early * f_late
    return f_early, bridge * q_late, v_early + bridge * v_late


def _flip_asm(pack: int) -> str:
    """PTX reversing a thread's `pack` registers and exchanging with lane ^ 31: output i is input pack-1-i of
    the mirror lane."""
    return " ".join(f"shfl.sync.bfly.b32 ${i}, ${2 * pack - 1 - i}, 31, 31, -1;" for i in range(pack))


_FLIP8 = tl.constexpr(_flip_asm(8))
_FLIP16 = tl.constexpr(_flip_asm(16))
_FLIP8_C = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 8))
_FLIP16_C = tl.constexpr(",".join(["=r"] * 16 + ["r"] * 16))


@triton.jit
def _flip(x, PACK: tl.constexpr):
    """Reverse a (BD, T) float32 tile along T (PACK = 0: a gather, any layout; the interpreter's path), or with
    PACK = registers per thread, for a tile held by ONE warp without replication: every thread's registers in
    reverse order, taken from lane ^ 31 (one shuffle per register). That maps each element to the mirror of
    every one of its coordinates, channels included; a scan along T cannot tell, and applying it twice is
    the identity. Triton's reverse=True scan (3.6) pays five dependent shuffles per register and operand
    for the same reversal."""
    if PACK == 8:
        return tl.inline_asm_elementwise(_FLIP8, _FLIP8_C, [x], dtype=tl.float32, is_pure=True, pack=8)
    elif PACK == 16:
        return tl.inline_asm_elementwise(_FLIP16, _FLIP16_C, [x], dtype=tl.float32, is_pure=True, pack=16)
    else:  # a gather, which the interpreter runs as one numpy call (tl.flip is ~10x slower there)
        rev = x.shape[1] - 1 - tl.arange(0, x.shape[1])
        return tl.gather(x, rev[None, :] + tl.zeros(x.shape, dtype=tl.int32), 1)


@triton.jit
def _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, b, d, t, mask2, d_mask,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta tile (BD, T) after bias and softplus, zero outside the sequence; also the raw pre-softplus value."""
    raw = tl.load(dt_ptr + b * s_dt_b + d[:, None] * s_dt_d + t[None, :] * s_dt_l, mask=mask2, other=0.0)
    raw = raw.to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    dt = tl.where(mask2, dt, 0.0)
    return dt, raw


@triton.jit
def _starts_tile(seq_ptr, s_seq_b, s_seq_l, b, t, L, BD: tl.constexpr):
    """(BD, T) bool, the same row for every channel: True at t > 0 where seq_idx changes
    (a packed sequence starts there, so the decay into t is zero)."""
    rows = tl.zeros((BD, 1), dtype=tl.int32)
    ptrs = seq_ptr + b * s_seq_b + t[None, :] * s_seq_l + rows
    inside = ((t > 0) & (t < L))[None, :] & (rows == 0)
    cur = tl.load(ptrs, mask=inside, other=0)
    prev = tl.load(ptrs - s_seq_l, mask=inside, other=0)
    return inside & (cur != prev)


@triton.jit
def _channel_range(pid_s, n_per_group, n_split, DS):
    """Group and channel range [d_lo, d_hi) of split ``pid_s``; splits never cross a group."""
    g = pid_s // n_split
    d_lo = g * n_per_group + (pid_s % n_split) * DS
    d_hi = tl.minimum(d_lo + DS, (g + 1) * n_per_group)
    return g, d_lo, d_hi


@triton.jit
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1] as e times a degree-8 polynomial (a least-squares fit on [0, 1]; largest
    relative error 2e-7 evaluated in float32): FMAs instead of a log and a division."""
    p = 0.005105420083889834
    p = p * e - 0.028990298987068678
    p = p * e + 0.07737795349542527
    p = p * e - 0.13590352195110128
    p = p * e + 0.19071183869665365
    p = p * e - 0.24833909332555285
    p = p * e + 0.33317928817156944
    p = p * e - 0.4999943531344592
    p = p * e + 0.9999999650843909
    return e * p


@triton.jit
def _softplus_poly(x):
    """softplus with torch's threshold (20), log1p by ``_log1p_unit``. The walk pays it per step of every channel
    in one thread, where ``_softplus``'s log and division with the gate's exact reciprocal were a fifth of the
    loop's instructions (1,288 -> 993 a trip, NOTES_scan.md version 10); the tiled kernels and the step kernel
    keep ``_softplus`` (their measured figures rest on it)."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + _log1p_unit(tl.exp2(-tl.abs(x) * LOG2E)))


@triton.jit
def _silu_fast(z, FAST: tl.constexpr):
    """z sigmoid(z); compiled, the reciprocal is rcp.approx (one special-function op, no range fix-ups)."""
    w = 1.0 + tl.exp2(-z * LOG2E)
    if FAST:
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [w], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = 1.0 / w
    return z * r


@triton.jit
def _bits_or(a, b):
    return a | b


@triton.jit
def _column(tile, idx, k, FAST: tl.constexpr):
    """Column k (a constant) of a tile each thread holds whole rows of, as in the walk. Compiled: an OR of bit
    patterns with zeros, which LLVM folds to a register move (a sum would keep an add of 0.0 per column: IEEE
    rules forbid folding x + 0.0). Interpreted: a sum, exact since every other term is zero."""
    if FAST:
        bits = tl.where(idx[None, :] == k, tile.to(tl.int32, bitcast=True), 0)
        return tl.reduce(bits, 1, _bits_or).to(tl.float32, bitcast=True)
    else:
        return tl.sum(tl.where(idx[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _walk_rows(ptr, b, s_b, d, s_d, s_l, d_mask, t, bound, BOUND: tl.constexpr):
    """(BD, TW) tile of rows d at steps t, in the tensor's dtype, zero for rows outside d_mask and, with BOUND, at
    steps from bound on. Without BOUND every step must lie inside the tensor: the loop's and the tail's loads,
    whose steps are clamped instead."""
    ptrs = ptr + b * s_b + d[:, None] * s_d + t[None, :] * s_l
    if BOUND:
        return tl.load(ptrs, mask=d_mask[:, None] & (t < bound)[None, :], other=0.0)
    return tl.load(ptrs, mask=d_mask[:, None], other=0.0)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _chunk_summary_kernel(
    u_ptr, dt_ptr, A_ptr, X_ptr, z_ptr, dout_ptr, bias_ptr, seq_ptr,
    decay_ptr, local_ptr,
    L, n_per_group, n_split, DS, n_chunks, dim,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_X_b, s_X_g, s_X_n, s_X_l, s_z_b, s_z_d, s_z_l, s_o_b, s_o_d, s_o_l, s_seq_b, s_seq_l,
    REVERSE: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, T: tl.constexpr,
):
    """Per chunk k and channel: the decay over the chunk, exp(A sum_t delta_t), and

    forward (X = B):  the end state from a zero start, sum_t exp(A sum_{s>t} delta_s) delta_t u_t B_t;
    reverse (X = C):  the adjoint at the start from a zero end, sum_t exp(A sum_{s<=t} delta_s) dy_t C_t,
    with dy = dout * silu(z). Both go to (B, K, D, N) float32 buffers. Tiles are
    (BD channels, T steps), one state n at a time. A packed sequence starting inside
    the chunk (HAS_SEQ) zeroes the chunk's decay and cuts off the terms it separates.
    """
    pid_k = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    g, d_lo, d_hi = _channel_range(tl.program_id(2), n_per_group, n_split, DS)
    t_loc = tl.arange(0, T)
    t = pid_k * T + t_loc
    t_mask = t < L
    chunk_open = tl.full((BD,), 1, tl.int1)
    if HAS_SEQ:
        starts = _starts_tile(seq_ptr, s_seq_b, s_seq_l, pid_b, t, L, BD)
        if REVERSE:  # the adjoint at the chunk start sees only the steps before the first start
            cut = tl.min(tl.where(starts, t_loc[None, :], T), axis=1)
            keep = t_loc[None, :] < cut[:, None]
        else:  # the end state sees only the steps from the last start on
            cut = tl.max(tl.where(starts, t_loc[None, :], -1), axis=1)
            keep = t_loc[None, :] >= cut[:, None]
        chunk_open = tl.max(starts.to(tl.int32), axis=1) == 0
    x_ptrs = X_ptr + pid_b * s_X_b + g * s_X_g + t * s_X_l
    out_base = (pid_b * n_chunks + pid_k) * dim * NS
    for d0 in range(d_lo, d_hi, BD):
        d = d0 + tl.arange(0, BD)
        d_mask = d < d_hi
        m2 = d_mask[:, None] & t_mask[None, :]
        dt, _ = _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, pid_b, d, t, m2, d_mask, HAS_BIAS, SOFTPLUS)
        if REVERSE:
            coef = tl.load(dout_ptr + pid_b * s_o_b + d[:, None] * s_o_d + t[None, :] * s_o_l,
                           mask=m2, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * s_z_b + d[:, None] * s_z_d + t[None, :] * s_z_l,
                            mask=m2, other=0.0).to(tl.float32)
                coef = coef * z * tl.sigmoid(z)
            span = tl.cumsum(dt, axis=1)  # decay from the chunk start through t
        else:
            u = tl.load(u_ptr + pid_b * s_u_b + d[:, None] * s_u_d + t[None, :] * s_u_l,
                        mask=m2, other=0.0).to(tl.float32)
            coef = dt * u
            span = tl.cumsum(dt, axis=1, reverse=True) - dt  # decay after t to the chunk end
        if HAS_SEQ:
            coef = tl.where(keep, coef, 0.0)
        total = tl.sum(dt, axis=1)
        for n in tl.static_range(NS):
            A2 = tl.load(A_ptr + d * s_A_d + n * s_A_n, mask=d_mask, other=0.0) * LOG2E
            Xn = tl.load(x_ptrs + n * s_X_n, mask=t_mask, other=0.0).to(tl.float32)
            local = tl.sum(tl.exp2(A2[:, None] * span) * coef * Xn[None, :], axis=1)
            offs = out_base + d * NS + n
            tl.store(decay_ptr + offs, tl.where(chunk_open, tl.exp2(A2 * total), 0.0), mask=d_mask)
            tl.store(local_ptr + offs, local, mask=d_mask)


@triton.jit
def _carry_kernel(decay_ptr, local_ptr, states_ptr, n_chunks, rows,
                  REVERSE: tl.constexpr, ZERO_START: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr,
                  ZERO_R0: tl.constexpr = False):
    """Carry states across chunks: s_{k+1} = decay_k s_k + local_k (forward) or
    r_k = decay_k r_{k+1} + local_k (reverse), for every (d, n) row of one batch.

    decay/local: (B, K, rows); states: (B, K+1, rows) with states[:, 0] (forward) or
    states[:, K] (reverse) given; the other K entries are written. ZERO_START: the given
    entry is zero, and written here for the kernels that read it later (zeroing it
    on the host cost two PyTorch operations a call). ZERO_R0 (reverse): zeros instead of r_0,
    which the backward never reads (its dA partials take that row).
    """
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    r = pid_r * ROWS + tl.arange(0, ROWS)
    r_mask = r < rows
    col = tl.arange(0, CB)
    sum_base = pid_b * n_chunks * rows
    st_base = pid_b * (n_chunks + 1) * rows
    if REVERSE:
        start_ptrs = states_ptr + st_base + n_chunks * rows + r
    else:
        start_ptrs = states_ptr + st_base + r
    if ZERO_START:
        carry = tl.zeros((ROWS,), dtype=tl.float32)
        tl.store(start_ptrs, carry, mask=r_mask)
    else:
        carry = tl.load(start_ptrs, mask=r_mask, other=0.0)
    for kb in range(0, n_chunks, CB):
        j = kb + col
        if REVERSE:
            k = n_chunks - 1 - j
        else:
            k = j
        m = r_mask[:, None] & (j < n_chunks)[None, :]
        offs = sum_base + k[None, :] * rows + r[:, None]
        dec = tl.load(decay_ptr + offs, mask=m, other=1.0)
        loc = tl.load(local_ptr + offs, mask=m, other=0.0)
        loc = tl.where(col[None, :] == 0, loc + dec * carry[:, None], loc)
        _, s = tl.associative_scan((dec, loc), axis=1, combine_fn=_linear_combine)
        if REVERSE:
            out_k = k
            if ZERO_R0:
                s = tl.where(k[None, :] == 0, 0.0, s)
        else:
            out_k = k + 1
        tl.store(states_ptr + st_base + out_k[None, :] * rows + r[:, None], s, mask=m)
        carry = tl.sum(tl.where(col[None, :] == CB - 1, s, 0.0), axis=1)


@triton.jit
def _fwd_chunk(u_ptr, dt_ptr, A_ptr, B_ptrs, C_ptrs, D_ptr, z_ptr, bias_ptr, seq_ptr, y_ptr, h_in_ptrs, h_out_ptrs,
               pid_b, d, d_mask, t, L, s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
               s_B_n, s_C_n, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l, s_seq_b, s_seq_l,
               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               HAS_SEQ: tl.constexpr, NEED_END: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr,
               T: tl.constexpr):
    """One chunk of BD channels: scan each state n from h_in (pointers to (BD,) rows of N floats),
    write y (BD, T); with NEED_END write the end states through h_out."""
    t_mask = t < L
    m2 = d_mask[:, None] & t_mask[None, :]
    t_loc = tl.arange(0, T)
    first = (t_loc == 0)[None, :]
    # B and C rows are read as (BD, T) tiles (the same row for every channel) so that they
    # arrive in the layout of the scan; the repeated addresses hit L1.
    bc_rows = tl.zeros((BD, 1), dtype=tl.int32)
    B_tile = B_ptrs[None, :] + bc_rows
    C_tile = C_ptrs[None, :] + bc_rows
    end_mask = d_mask[:, None] & (t_loc == T - 1)[None, :]
    end_ptrs = h_out_ptrs[:, None] + t_loc[None, :] * 0
    dt, _ = _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, pid_b, d, t, m2, d_mask, HAS_BIAS, SOFTPLUS)
    u = tl.load(u_ptr + pid_b * s_u_b + d[:, None] * s_u_d + t[None, :] * s_u_l,
                mask=m2, other=0.0).to(tl.float32)
    dtu = dt * u
    if HAS_SEQ:
        starts = _starts_tile(seq_ptr, s_seq_b, s_seq_l, pid_b, t, L, BD)
    y = tl.zeros((BD, T), dtype=tl.float32)
    for n in tl.static_range(NS):
        A2 = tl.load(A_ptr + d * s_A_d + n * s_A_n, mask=d_mask, other=0.0) * LOG2E
        Bn = tl.load(B_tile + n * s_B_n, mask=m2, other=0.0).to(tl.float32)
        Cn = tl.load(C_tile + n * s_C_n, mask=m2, other=0.0).to(tl.float32)
        h0 = tl.load(h_in_ptrs + n, mask=d_mask, other=0.0)
        a = tl.exp2(A2[:, None] * dt)
        if HAS_SEQ:
            a = tl.where(starts, 0.0, a)
        x = dtu * Bn
        x = tl.where(first, x + a * h0[:, None], x)
        _, h = tl.associative_scan((a, x), axis=1, combine_fn=_linear_combine)
        y += h * Cn
        if NEED_END:  # padding steps carry the state unchanged, so the last column is the end state
            tl.store(end_ptrs + n, h, mask=end_mask)
    if HAS_D:
        y += u * tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + d[:, None] * s_z_d + t[None, :] * s_z_l,
                    mask=m2, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + pid_b * s_y_b + d[:, None] * s_y_d + t[None, :] * s_y_l,
             y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, states_ptr, y_ptr,
    L, n_per_group, n_split, DS, n_chunks, dim,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l, s_seq_b, s_seq_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, SEQUENTIAL: tl.constexpr, SINGLE_CHUNK: tl.constexpr, ZERO_H0: tl.constexpr,
    BD: tl.constexpr, NS: tl.constexpr, T: tl.constexpr,
):
    """y for batch b and the channels of one split; states is (B, K+1, D, N) float32.

    SEQUENTIAL: one block of BD channels walks all chunks in order, its state
    passing from chunk to chunk through states (one exponential per element);
    with ZERO_H0 (no initial state) it first writes the zero state entering
    chunk 0 there, which the backward starts from too.
    Otherwise: chunk k = program_id(0) only, from states[b, k] as the carry pass
    left it, over all channel blocks of the split; with a single chunk it also
    writes the final state.
    """
    pid_k = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    g, d_lo, d_hi = _channel_range(tl.program_id(2), n_per_group, n_split, DS)
    b_base = B_ptr + pid_b * s_B_b + g * s_B_g
    c_base = C_ptr + pid_b * s_C_b + g * s_C_g
    st_b = states_ptr + pid_b * (n_chunks + 1) * dim * NS
    if SEQUENTIAL:
        d = d_lo + tl.arange(0, BD)
        d_mask = d < d_hi
        if ZERO_H0:
            for n in tl.static_range(NS):
                tl.store(st_b + d * NS + n, tl.zeros((BD,), dtype=tl.float32), mask=d_mask)
            tl.debug_barrier()  # read by other threads in chunk 0
        for k in range(0, n_chunks):
            t = k * T + tl.arange(0, T)
            h_in = st_b + k * dim * NS + d * NS
            _fwd_chunk(u_ptr, dt_ptr, A_ptr, b_base + t * s_B_l, c_base + t * s_C_l, D_ptr, z_ptr, bias_ptr,
                       seq_ptr, y_ptr, h_in, h_in + dim * NS, pid_b, d, d_mask, t, L, s_u_b, s_u_d, s_u_l,
                       s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_C_n, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l,
                       s_seq_b, s_seq_l, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, True, BD, NS, T)
            tl.debug_barrier()  # the end states just stored are the next chunk's start, read by other threads
    else:
        t = pid_k * T + tl.arange(0, T)
        for d0 in range(d_lo, d_hi, BD):
            d = d0 + tl.arange(0, BD)
            h_in = st_b + pid_k * dim * NS + d * NS
            _fwd_chunk(u_ptr, dt_ptr, A_ptr, b_base + t * s_B_l, c_base + t * s_C_l, D_ptr, z_ptr, bias_ptr,
                       seq_ptr, y_ptr, h_in, h_in + dim * NS, pid_b, d, d < d_hi, t, L, s_u_b, s_u_d, s_u_l,
                       s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n, s_B_n, s_C_n, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l,
                       s_seq_b, s_seq_l, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_SEQ, SINGLE_CHUNK, BD, NS, T)


@triton.jit
def _walk_steps(raw, u, z, bc, y_ptr, b, s_y_b, s_y_d, s_y_l, d, d_mask, t, t_loc, n_idx, stop, A2, h, D_row, bias,
                total, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                SUMMARY: tl.constexpr, TAIL: tl.constexpr, FAST: tl.constexpr, NS: tl.constexpr, BD: tl.constexpr,
                TW: tl.constexpr):
    """TW steps of every state of BD channels (a thread per channel, all in its registers): the recurrence
    runs step by step inside the thread, so no step waits on another thread. bc points at this sub-chunk's
    packed float32 B (NS x TW) then C (NS x TW). Returns the new states (BD, NP) and total, to which SUMMARY
    adds these steps' delta."""
    rows0 = tl.zeros((BD, 1), dtype=tl.int32)
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt += bias[:, None]
    if SOFTPLUS:
        dt = _softplus_poly(dt)
    if TAIL:  # steps past the end decay by 1 and add nothing: the state passes through unchanged
        dt = tl.where((t < stop)[None, :] & (rows0 == 0), dt, 0.0)
    u = u.to(tl.float32)
    dtu = dt * u
    y = tl.zeros((BD, TW), dtype=tl.float32)
    for n in tl.static_range(NS):
        Bn = tl.load(bc + n * TW + t_loc[None, :] + rows0)
        a = tl.exp2(_column(A2, n_idx, n, FAST)[:, None] * dt)
        x = dtu * Bn
        hn = _column(h, n_idx, n, FAST)
        hs = x
        for s in tl.static_range(TW):
            hn = _column(a, t_loc, s, FAST) * hn + _column(x, t_loc, s, FAST)
            if not SUMMARY:
                hs = tl.where(t_loc[None, :] == s, hn[:, None], hs)
        if not SUMMARY:
            y += hs * tl.load(bc + (NS + n) * TW + t_loc[None, :] + rows0)
        h = tl.where(n_idx[None, :] == n, hn[:, None], h)
    if SUMMARY:
        return h, total + tl.sum(dt, axis=1)
    if HAS_D:
        y += u * D_row[:, None]
    if HAS_Z:
        y = y * _silu_fast(z.to(tl.float32), FAST)
    ptrs = y_ptr + b * s_y_b + d[:, None] * s_y_d + t[None, :] * s_y_l
    if TAIL:
        tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=d_mask[:, None] & (t < stop)[None, :])
    else:
        tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=d_mask[:, None])
    return h, total


@triton.jit
def _walk_trip(raw, u, z, t0, last, bc_bg, lane, u_ptr, dt_ptr, z_ptr, y_ptr, b, s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d,
               s_dt_l, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l, d, d_mask, t_loc, n_idx, full, stop, A2, h, D_row,
               bias, total, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               SUMMARY: tl.constexpr, FAST: tl.constexpr, NS: tl.constexpr, BD: tl.constexpr, TW: tl.constexpr):
    """One whole trip at t0 (inputs raw, u, z already loaded) while the next trip's are loaded (and its B, C block
    prefetched into L1); returns (h, total, the next trip's raw, u, z). The last trip reloads itself: nothing past
    ``last`` (the last whole trip) is read."""
    SUB: tl.constexpr = 2 * NS * TW
    t_next = tl.minimum(t0 + TW, last) + t_loc
    raw_next = _walk_rows(dt_ptr, b, s_dt_b, d, s_dt_d, s_dt_l, d_mask, t_next, full, False)
    u_next = _walk_rows(u_ptr, b, s_u_b, d, s_u_d, s_u_l, d_mask, t_next, full, False)
    z_next = _walk_rows(z_ptr, b, s_z_b, d, s_z_d, s_z_l, d_mask, t_next, full, False) if HAS_Z else raw_next
    if FAST:  # a sector per lane, so that the next trip's loads wait on L1, not L2
        pf = bc_bg + (tl.minimum(t0 + TW, last) // TW) * SUB + (lane * 8) % SUB
        tl.inline_asm_elementwise("prefetch.global.L1 [$1];\n mov.u32 $0, 0;", "=r,l",
                                  [pf.to(tl.int64, bitcast=True)], dtype=tl.int32, is_pure=False, pack=1)
    h, total = _walk_steps(raw, u, z, bc_bg + (t0 // TW) * SUB, y_ptr, b, s_y_b, s_y_d, s_y_l, d, d_mask, t0 + t_loc,
                           t_loc, n_idx, stop, A2, h, D_row, bias, total, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SUMMARY,
                           False, FAST, NS, BD, TW)
    return h, total, raw_next, u_next, z_next


# sizes unspecialised: one compilation serves every shape (a stride of 1 along L stays specialised)
@triton.jit(do_not_specialize=["L", "seg_len", "n_seg", "n_sub", "n_groups", "n_per_group", "n_split", "n_chunks",
                               "dim", "s_h_in_b", "s_h_in_j"])
def _scan_walk_kernel(
    u_ptr, dt_ptr, A_ptr, bc_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, h_in_ptr, h_out_ptr, decay_ptr,
    L, seg_len, n_seg, n_sub, n_groups, n_per_group, n_split, n_chunks, dim, s_h_in_b, s_h_in_j,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SUMMARY: tl.constexpr, SAVE: tl.constexpr, FAST: tl.constexpr, NS: tl.constexpr, NP: tl.constexpr,
    BD: tl.constexpr, TW: tl.constexpr, T: tl.constexpr,
):
    """The forward as a walk: segment j = program_id(0) of seg_len steps (a multiple of T), batch b, BD channels
    of one group, one channel per thread holding all its states; TW steps (16 bytes of the widest-element input)
    per trip, the next trip's inputs loaded (and its B, C rows prefetched into L1) during this one.

    SUMMARY: from a zero state; writes the segment's end state to h_out (B, n_seg, D, N) and its decay
    exp(A sum delta) to decay (same shape); ``_carry`` turns them into entering states.
    Otherwise: from h_in[b, j] (batch stride s_h_in_b, segment stride s_h_in_j), writes y and the final state
    into h_out[:, K] (B, K+1, D, N); with SAVE (for the backward) also the state after every whole chunk of
    T steps. bc_ptr is B and C packed by ``_pack_bc``.
    """
    j = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g, d_lo, d_hi = _channel_range(tl.program_id(2), n_per_group, n_split, BD)
    d = d_lo + tl.arange(0, BD)
    d_mask = d < d_hi
    t_loc = tl.arange(0, TW)
    n_idx = tl.arange(0, NP)
    hn_mask = d_mask[:, None] & (n_idx < NS)[None, :]
    A2 = tl.load(A_ptr + d[:, None] * s_A_d + n_idx[None, :] * s_A_n, mask=hn_mask, other=0.0) * LOG2E
    D_row = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_D else tl.zeros((BD,), tl.float32)
    bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32) if HAS_BIAS else tl.zeros((BD,), tl.float32)
    rows = d[:, None] * NS + n_idx[None, :]
    if SUMMARY:
        h = tl.zeros((BD, NP), dtype=tl.float32)
    else:
        h = tl.load(h_in_ptr + b * s_h_in_b + j * s_h_in_j + rows, mask=hn_mask, other=0.0)
    total = tl.zeros((BD,), dtype=tl.float32)
    SUB: tl.constexpr = 2 * NS * TW  # floats of packed B and C per sub-chunk
    bc_bg = bc_ptr + (b * n_groups + g) * n_sub * SUB
    start = tl.multiple_of(j * seg_len, T)
    stop = tl.minimum(start + seg_len, L)
    full = tl.multiple_of(start + (stop - start) // TW * TW, TW)
    last = tl.maximum(full - TW, start)  # the last whole sub-chunk: the prefetch never reads past it
    lane = tl.arange(0, BD) % 32
    t = start + t_loc
    raw = _walk_rows(dt_ptr, b, s_dt_b, d, s_dt_d, s_dt_l, d_mask, t, full, True)
    u = _walk_rows(u_ptr, b, s_u_b, d, s_u_d, s_u_l, d_mask, t, full, True)
    z = _walk_rows(z_ptr, b, s_z_b, d, s_z_d, s_z_l, d_mask, t, full, True) if HAS_Z else raw
    # trips grouped by chunk, so that the per-chunk state store sits outside the hot loop (inside it, it cost
    # ~30 registers a thread)
    for c0 in range(start, full, T):
        for t0 in range(c0, tl.minimum(c0 + T, full), TW):
            h, total, raw, u, z = _walk_trip(
                raw, u, z, t0, last, bc_bg, lane, u_ptr, dt_ptr, z_ptr, y_ptr, b, s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d,
                s_dt_l, s_z_b, s_z_d, s_z_l, s_y_b, s_y_d, s_y_l, d, d_mask, t_loc, n_idx, full, stop, A2, h, D_row,
                bias, total, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SUMMARY, FAST, NS, BD, TW)
        if SAVE:
            if c0 + T <= full:  # a whole chunk (a last, partial one ends at L: the final state below)
                tl.store(h_out_ptr + (b * (n_chunks + 1) + c0 // T + 1) * dim * NS + rows, h, mask=hn_mask)
    if full < stop:
        t = full + t_loc
        t_in = tl.minimum(t, L - 1)  # clamped, not masked: masked, it cost the kernel 13 registers a thread
        raw = _walk_rows(dt_ptr, b, s_dt_b, d, s_dt_d, s_dt_l, d_mask, t_in, stop, False)
        u = _walk_rows(u_ptr, b, s_u_b, d, s_u_d, s_u_l, d_mask, t_in, stop, False)
        z = _walk_rows(z_ptr, b, s_z_b, d, s_z_d, s_z_l, d_mask, t_in, stop, False) if HAS_Z else raw
        h, total = _walk_steps(raw, u, z, bc_bg + (full // TW) * SUB, y_ptr, b, s_y_b, s_y_d, s_y_l, d, d_mask, t,
                               t_loc, n_idx, stop, A2, h, D_row, bias, total, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS,
                               SUMMARY, True, FAST, NS, BD, TW)
    if not SUMMARY:
        if stop == L:  # the final state (segments are whole chunks: only the last can have a tail)
            tl.store(h_out_ptr + (b * (n_chunks + 1) + n_chunks) * dim * NS + rows, h, mask=hn_mask)
    else:
        offs = (b * n_seg + j) * dim * NS + rows
        tl.store(h_out_ptr + offs, h, mask=hn_mask)
        tl.store(decay_ptr + offs, tl.exp2(A2 * total[:, None]), mask=hn_mask)


@triton.jit(do_not_specialize=["L", "n_sub", "n_groups"])
def _pack_bc_kernel(B_ptr, C_ptr, out_ptr, L, n_sub, n_groups, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
                    NS: tl.constexpr, NP: tl.constexpr, TW: tl.constexpr, SB: tl.constexpr):
    """SB trips' B and C rows of one (batch, group) into the walk's packed layout (see ``_pack_bc``)."""
    bg = tl.program_id(1).to(tl.int64)
    b, g = bg // n_groups, bg % n_groups
    sub = (tl.program_id(0) * SB + tl.arange(0, SB))[:, None, None]
    n = tl.arange(0, NP)[None, :, None]
    i = tl.arange(0, TW)[None, None, :]
    t = sub * TW + i
    keep = (sub < n_sub) & (n < NS) & (i < TW)
    out = out_ptr + ((bg * n_sub + sub) * 2 * NS + n) * TW + i
    x = tl.load(B_ptr + b * s_B_b + g * s_B_g + n * s_B_n + t * s_B_l, mask=keep & (t < L), other=0.0)
    tl.store(out, x.to(tl.float32), mask=keep)
    x = tl.load(C_ptr + b * s_C_b + g * s_C_g + n * s_C_n + t * s_C_l, mask=keep & (t < L), other=0.0)
    tl.store(out + NS * TW, x.to(tl.float32), mask=keep)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, states_ptr, adj_ptr, dout_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, n_per_group, n_split, DS, n_chunks, dim, n_groups,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l, s_o_b, s_o_d, s_o_l, s_seq_b, s_seq_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_H0: tl.constexpr, BD: tl.constexpr, NS: tl.constexpr, T: tl.constexpr,
    UNROLL: tl.constexpr, SCAN2: tl.constexpr, RELOAD: tl.constexpr, EARLY_DBC: tl.constexpr, FLIP: tl.constexpr,
    FLIP_PACK: tl.constexpr,
):
    """All gradients of chunk k, batch b, the channels of one split.

    states[b, k] is h entering the chunk, adj[b, k+1] the adjoint of h leaving it.
    du, d delta, dz: (B, D, L) contiguous, input dtypes. dB, dC partials:
    (n_split, B, G, N, L) float32, written by the split's first channel block, then
    accumulated over its other channel blocks in order. dA partials: over adj itself, each (d, n) of adj[b, k+1]
    once this program has read it (no other program reads that row); adj[b, 0], which no program reads, holds
    zeros (the reverse carry writes them), so that adj (B, K+1, D, N) is the partials' rows (a separate buffer
    cost B K D N floats; zeroing adj[b, 0] here, in the state loop, made the kernel 4-18% slower on the H100 at
    the benchmark's shapes). dD, d delta_bias (B, K, D).
    With HAS_H0 the first chunk also writes the gradient of the initial state, a_0 g_0, to dh0 (B, D, N).

    Switches (the same results; which is fastest is measured per shape, benchmarks/scan.py --sweep):
    SCAN2      the adjoint's reverse scan carries 2 values (a_{t+1}, v) instead of 3: a_{t+1} comes
               from a delta tile shifted by one step, one more exponential per element and state
    RELOAD     dout, z and the raw delta are read again after the state loop instead of staying live
               through it (4 fewer (BD, T) tiles in registers during the scans)
    EARLY_DBC  this split's dB, dC rows so far are loaded before the scans (latency hidden, two more
               rows live through them) rather than just before they are updated
    FLIP       the reverse scan as a forward scan between two reversals done by ``_flip`` (FLIP_PACK
               registers per thread, one shuffle each; 0: a gather) instead of Triton's reverse=True
    """
    pid_k = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    g, d_lo, d_hi = _channel_range(pid_s, n_per_group, n_split, DS)
    t_loc = tl.arange(0, T)
    t = pid_k * T + t_loc
    t_mask = t < L
    first = (t_loc == 0)[None, :]
    last = (t_loc == T - 1)[None, :]
    bc_rows = tl.zeros((BD, 1), dtype=tl.int32)  # B, C rows read as (BD, T) tiles, as in the forward
    B_tile = B_ptr + pid_b * s_B_b + g * s_B_g + t[None, :] * s_B_l + bc_rows
    C_tile = C_ptr + pid_b * s_C_b + g * s_C_g + t[None, :] * s_C_l + bc_rows
    st_base = (pid_b * (n_chunks + 1) + pid_k) * dim * NS
    part_base = (pid_b * n_chunks + pid_k) * dim
    split_local = pid_s % n_split
    dBC_ptrs = (((split_local * tl.num_programs(1) + pid_b) * n_groups + g) * NS) * L + t
    if HAS_SEQ:
        # no decay into a sequence start: log2 a gets -inf there (an FMA instead of a select per state);
        # then h_t = x_t exactly, so g_t a_t h_{t-1} = g_t (h_t - x_t) is zero there without a select
        cut = tl.where(_starts_tile(seq_ptr, s_seq_b, s_seq_l, pid_b, t, L, BD), float("-inf"), 0.0)
        if SCAN2:  # the same for a_{t+1}
            cut_next = tl.where(_starts_tile(seq_ptr, s_seq_b, s_seq_l, pid_b, t + 1, L, BD), float("-inf"), 0.0)
    for d0 in range(d_lo, d_hi, BD):
        d = d0 + tl.arange(0, BD)
        d_mask = d < d_hi
        m2 = d_mask[:, None] & t_mask[None, :]
        offs_dl = pid_b * dim * L + d[:, None] * L + t[None, :]  # contiguous gradient outputs
        dt, raw = _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, pid_b, d, t, m2, d_mask, HAS_BIAS, SOFTPLUS)
        if SCAN2:  # delta one step later (0 past the chunk and the sequence: a_{t+1} = 1, never used there)
            m_next = d_mask[:, None] & ((t + 1 < L) & (t_loc < T - 1))[None, :]
            dt_next, _ = _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, pid_b, d, t + 1, m_next, d_mask,
                                     HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + pid_b * s_u_b + d[:, None] * s_u_d + t[None, :] * s_u_l,
                    mask=m2, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + pid_b * s_o_b + d[:, None] * s_o_d + t[None, :] * s_o_l,
                       mask=m2, other=0.0).to(tl.float32)
        dy = dout
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * s_z_b + d[:, None] * s_z_d + t[None, :] * s_z_l,
                        mask=m2, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dy = dout * z * sig
        dtu = dt * u
        y = tl.zeros((BD, T), dtype=tl.float32)
        ddt = tl.zeros((BD, T), dtype=tl.float32)
        du = tl.zeros((BD, T), dtype=tl.float32)
        # a loop over the states, UNROLL at a time: the body is long, and unrolling all NS bloats the
        # code; a few copies give the scheduler independent scans to interleave
        for n0 in range(0, NS, UNROLL):
            for j in tl.static_range(UNROLL):
                n = n0 + j
                A = tl.load(A_ptr + d * s_A_d + n * s_A_n, mask=d_mask, other=0.0)
                Bn = tl.load(B_tile + n * s_B_n, mask=m2, other=0.0).to(tl.float32)
                Cn = tl.load(C_tile + n * s_C_n, mask=m2, other=0.0).to(tl.float32)
                h0 = tl.load(states_ptr + st_base + d * NS + n, mask=d_mask, other=0.0)
                g_end = tl.load(adj_ptr + st_base + dim * NS + d * NS + n, mask=d_mask, other=0.0)
                # this split's dB, dC rows so far; the first channel block starts them (the partial
                # buffers are not zeroed)
                row = dBC_ptrs + n * L
                if EARLY_DBC:  # issued before the scans so that the latency hides behind them
                    dB_prev = tl.load(dB_ptr + row, mask=t_mask & (d0 > d_lo), other=0.0)
                    dC_prev = tl.load(dC_ptr + row, mask=t_mask & (d0 > d_lo), other=0.0)
                # forward again: h_t over the chunk
                A2 = (A * LOG2E)[:, None]
                if HAS_SEQ:
                    a = tl.exp2(A2 * dt + cut)
                else:
                    a = tl.exp2(A2 * dt)
                x = dtu * Bn
                _, h = tl.associative_scan((a, tl.where(first, x + a * h0[:, None], x)), axis=1,
                                           combine_fn=_linear_combine)
                y += h * Cn
                # adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}, entering from the right with g_end
                v = dy * Cn
                v = tl.where(last, v + g_end[:, None], v)
                # reversed, the scan passes the later segment first (the map applied first), with
                # reverse=True and after FLIP alike
                if SCAN2:
                    if HAS_SEQ:
                        a_next = tl.exp2(A2 * dt_next + cut_next)
                    else:
                        a_next = tl.exp2(A2 * dt_next)
                    if FLIP:
                        _, gt = tl.associative_scan((_flip(a_next, FLIP_PACK), _flip(v, FLIP_PACK)), axis=1,
                                                    combine_fn=_linear_combine)
                        gt = _flip(gt, FLIP_PACK)
                    else:
                        _, gt = tl.associative_scan((a_next, v), axis=1, combine_fn=_linear_combine, reverse=True)
                else:
                    if FLIP:
                        _, _, gt = tl.associative_scan((_flip(a, FLIP_PACK), tl.full(a.shape, 1.0, tl.float32),
                                                        _flip(v, FLIP_PACK)), axis=1, combine_fn=_adjoint_combine)
                        gt = _flip(gt, FLIP_PACK)
                    else:
                        _, _, gt = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), v), axis=1,
                                                       combine_fn=_adjoint_combine, reverse=True)
                w = gt * (h - x)  # g_t a_t h_{t-1}
                ddt += w * A[:, None] + (gt * u) * Bn
                du += (gt * dt) * Bn
                # over g_end, read above by this program alone (its sum depends on g_end: stored after the load)
                tl.store(adj_ptr + st_base + dim * NS + d * NS + n, tl.sum(w * dt, axis=1), mask=d_mask)
                # dB, dC: sums over this split's channels, accumulated in order in its own partial rows
                if not EARLY_DBC:
                    dB_prev = tl.load(dB_ptr + row, mask=t_mask & (d0 > d_lo), other=0.0)
                    dC_prev = tl.load(dC_ptr + row, mask=t_mask & (d0 > d_lo), other=0.0)
                tl.store(dB_ptr + row, dB_prev + tl.sum(gt * dtu, axis=0), mask=t_mask)
                tl.store(dC_ptr + row, dC_prev + tl.sum(h * dy, axis=0), mask=t_mask)
                if HAS_H0:
                    if pid_k == 0:  # a_0 g_0, stored by the threads holding step 0
                        tl.store(dh0_ptr + ((pid_b * dim + d) * NS + n)[:, None] + t_loc[None, :] * 0, a * gt,
                                 mask=d_mask[:, None] & first)
        if RELOAD:  # read again what only the epilogue needs (cache hits, most of them)
            _, raw = _load_delta(dt_ptr, s_dt_b, s_dt_d, s_dt_l, bias_ptr, pid_b, d, t, m2, d_mask, HAS_BIAS,
                                 False)
            dout = tl.load(dout_ptr + pid_b * s_o_b + d[:, None] * s_o_d + t[None, :] * s_o_l,
                           mask=m2, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * s_z_b + d[:, None] * s_z_d + t[None, :] * s_z_l,
                            mask=m2, other=0.0).to(tl.float32)
                sig = tl.sigmoid(z)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
            y += u * Dv[:, None]
            du += dy * Dv[:, None]
            tl.store(dD_ptr + part_base + d, tl.sum(dy * u, axis=1), mask=d_mask)
        if HAS_Z:
            dz = dout * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + offs_dl, dz.to(dz_ptr.dtype.element_ty), mask=m2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(m2, ddt, 0.0)
        if HAS_BIAS:
            tl.store(dbias_ptr + part_base + d, tl.sum(ddt, axis=1), mask=d_mask)
        tl.store(du_ptr + offs_dl, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + offs_dl, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _sum_rows(part_ptr, out_ptr, R, W, blk, RB: tl.constexpr, WB: tl.constexpr):
    """out[j] = sum over r < R of part[r W + j] for the WB columns j of block blk (none outside [0, W)), in out's
    dtype: RB rows a trip, trips in order, so every run sums in the same order. Returns blk less this gradient's
    blocks: the block of the next one."""
    if (blk >= 0) & (blk * WB < W):
        j = blk * WB + tl.arange(0, WB)
        j_mask = j < W
        acc = tl.zeros((WB,), dtype=tl.float32)
        for r0 in range(0, R, RB):
            r = r0 + tl.arange(0, RB).to(tl.int64)
            x = tl.load(part_ptr + r[:, None] * W + j[None, :], mask=(r < R)[:, None] & j_mask[None, :], other=0.0)
            acc += tl.sum(x, axis=0)
        tl.store(out_ptr + j, acc.to(out_ptr.dtype.element_ty), mask=j_mask)
    return blk - tl.cdiv(W, WB)


@triton.jit
def _grad_sums_kernel(
    dB_part_ptr, dC_part_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dh0_part_ptr,
    dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    n_split, n_bc, n_parts, n_parts_A, dim, n_state, n_h0,
    SUM_B: tl.constexpr, SUM_C: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, CAST_H0: tl.constexpr,
    SPLIT_RB: tl.constexpr, PART_RB: tl.constexpr, TILE: tl.constexpr,
):
    """The gradients ``_scan_bwd_kernel`` leaves as float32 partials, each summed and written in its final dtype,
    in one launch (a sum and a cast per gradient in PyTorch cost more host time than the kernels at short
    sequences): dB, dC (n_bc elements each) over the n_split channel splits (SUM_B, SUM_C; without, the backward
    wrote them itself), dA (dim x n_state) over its n_parts_A rows, dD, d delta_bias (dim) over the n_parts
    (batch, chunk) partials, and
    with CAST_H0 dh0 (n_h0) cast. Each program sums one block of TILE partials of one gradient: the blocks of dB,
    then of dC, dA, dD, d delta_bias and dh0, of those present. (Program i taking block i of every gradient left
    the programs with dA, dD and d delta_bias blocks summing them one after another: 22 us at (16, 512, 1024, 16)
    on the H100, 5.5 us this way, where PyTorch's sums and casts took 35.)"""
    blk = tl.program_id(0)
    if SUM_B:
        blk = _sum_rows(dB_part_ptr, dB_ptr, n_split, n_bc, blk, SPLIT_RB, TILE // SPLIT_RB)
    if SUM_C:
        blk = _sum_rows(dC_part_ptr, dC_ptr, n_split, n_bc, blk, SPLIT_RB, TILE // SPLIT_RB)
    blk = _sum_rows(dA_part_ptr, dA_ptr, n_parts_A, dim * n_state, blk, PART_RB, TILE // PART_RB)
    if HAS_D:
        blk = _sum_rows(dD_part_ptr, dD_ptr, n_parts, dim, blk, PART_RB, TILE // PART_RB)
    if HAS_BIAS:
        blk = _sum_rows(dbias_part_ptr, dbias_ptr, n_parts, dim, blk, PART_RB, TILE // PART_RB)
    if CAST_H0:
        _sum_rows(dh0_part_ptr, dh0_ptr, 1, n_h0, blk, 1, TILE)


# ----------------------------------------------------------------------------- launch parameters


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _split(batch: int, groups: int, n_chunks: int, per_group: int, BD: int, sm_count: int):
    """(DS, n_split) for the chunk-parallel kernels: channels per program, a multiple of BD, as many as
    still gives about four programs per multiprocessor."""
    n_split = 1
    while batch * groups * n_chunks * n_split < 4 * sm_count and per_group // (2 * n_split) >= BD:
        n_split *= 2
    DS = -(-per_group // n_split)
    DS = -(-DS // BD) * BD
    return DS, -(-per_group // DS)


_TILE_KEYS = ("T", "BD", "num_warps", "bwd_BD", "bwd_num_warps", "unroll", "bwd_scan2", "bwd_reload",
              "bwd_early_dbc", "bwd_flip", "bwd_maxnreg")
_CONFIG_KEYS = _TILE_KEYS + ("sequential", "walk", "walk_BD", "walk_maxnreg", "walk_segments", "walk_refine",
                              "bwd_split")


def _check_overrides(overrides: dict) -> None:
    """Raise ValueError naming a config key ``choose_config`` does not know, or a value that is not an int,
    a bool or None."""
    unknown = sorted(set(overrides) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown scan config keys {unknown}; known: {sorted(_CONFIG_KEYS)}")
    for k, v in overrides.items():
        if not (v is None or isinstance(v, (bool, int))):
            raise ValueError(f"scan config {k} must be an int, a bool or None, got {v!r}")


def choose_config(batch: int, dim: int, length: int, n_state: int, groups: int, sm_count: int = 132,
                  training: bool = True, **overrides) -> dict:
    """Launch parameters from a small table, no autotuning; ``overrides`` replace any entry.

    T        chunk length, a power of two fixed per length range (a new L recompiles nothing);
             forward and backward share it, since the backward starts from the forward's
             per-chunk states
    BD, num_warps          the forward's tiles: BD channels x T steps, one state at a time
    bwd_BD, bwd_num_warps  the backward's tiles
    unroll   states per trip of the backward's loop over N (copies of its body)
    bwd_flip, bwd_reload, bwd_early_dbc, bwd_scan2   the backward kernel's switches FLIP, RELOAD,
             EARLY_DBC, SCAN2 (see ``_scan_bwd_kernel``); bwd_maxnreg caps its registers per thread
             (None: ptxas decides)
    sequential  forward walks the chunks in order (one exponential per element)
             when batch x channels alone fill the GPU; otherwise chunk summaries,
             a carry pass and a second scan (two per element)
    DS, n_split  channels per program and programs per group in the chunk-parallel kernels
             (forward and chunk summaries); bwd_DS, bwd_n_split the same for the backward (the override
             bwd_split asks for that many splits, as near as whole tiles of bwd_BD channels allow: each split
             keeps float32 partial rows of dB and dC, 2 x B x G x N x L floats, for the whole backward)
    walk     the forward as ``_scan_walk_kernel`` (never with packed sequences; by default where there is one
             segment or each is 1024 steps or more, see below): a thread
             per channel, its states in registers; walk_BD channels per program (BD/32 warps; 32 by default: one
             warp a program was 1-2% faster than two at all four shapes the walk takes, version 16), the sequence cut
             into walk_segments segments of walk_seg steps (whole chunks), each segment's entering state from
             a summary pass and the carry when there are several. Segments: one where batch x channels give
             512 warps, else the fewest giving 1024 (H100 measurements, benchmarks/NOTES_scan.md version 10);
             walk_maxnreg caps its registers (None: ptxas decides; 128 measured slower at 5 of 6 shapes);
             walk_refine cuts the summary pass's segments that many times finer than the walk's (default 4 where
             that leaves whole chunks; 1: the same).

    The entries come from benchmarks/scan.py's sweeps on an H100 (benchmarks/NOTES_scan.md).
    Backward: two channels in one warp (the sums over channels stay inside each thread)
    beat one channel per warp by up to 30% and two or four warps per tile by more; unroll 2
    did not pay. Forward: T=256 x 4 channels on 4 warps, or 128 x 8 when that still gives
    three programs per multiprocessor. With gradients T=128, except T=256 (half the saved
    states, the same speed) where the chunks run sequentially and L >= 2048; at T=128, 8 channels
    where that gives three programs an SM (version 13: at (16, 512, 1024) the training forward
    0.296 -> 0.174 ms and the backward's chunk summaries 0.178 -> 0.110; at T=256 8 channels were
    slower, 0.383 -> 0.528 ms at (16, 256, 4096)).
    Version 8 (H100 sweep): bwd_flip on (the state loop's shuffles 177 -> 81 at T=128; fwd+bwd
    7-16% faster at every shape); bwd_reload only at T=256, where it cuts spills (324 -> 104
    bytes) and gains 4-6%; at T=128 (no spills) it cost 2-4%.
    """
    sequential = batch * dim >= 12 * sm_count
    wide = sequential and batch * dim // 8 >= 3 * sm_count  # 8-channel tiles still give 3 programs an SM
    if training:
        T = 256 if sequential and length >= 2048 else 128
        cfg = dict(T=T, BD=8 if wide and T == 128 else 4, num_warps=4)
    elif wide:
        cfg = dict(T=128, BD=8, num_warps=4)
    else:
        cfg = dict(T=256, BD=4, num_warps=4)
    cfg.update(bwd_BD=2, bwd_num_warps=1, unroll=1, bwd_scan2=False, bwd_reload=None, bwd_early_dbc=True,
               bwd_flip=True, bwd_maxnreg=None)
    if length <= 64:
        cfg["T"] = 64
    _check_overrides(overrides)
    cfg.update({k: v for k, v in overrides.items() if k in _TILE_KEYS and v is not None})
    cfg["T"] = _pow2(cfg["T"])
    if cfg["bwd_reload"] is None:
        cfg["bwd_reload"] = cfg["T"] >= 256
    for k in ("bwd_scan2", "bwd_reload", "bwd_early_dbc", "bwd_flip"):
        cfg[k] = bool(cfg[k])
    if n_state % cfg["unroll"]:  # the backward's state loop takes whole groups of `unroll` states
        cfg["unroll"] = 1
    per_group = dim // groups
    cfg["BD"] = min(cfg["BD"], _pow2(per_group))
    cfg["bwd_BD"] = min(cfg["bwd_BD"], _pow2(per_group))
    K = max(1, -(-length // cfg["T"]))
    cfg["n_chunks"] = K
    cfg["sequential"] = K > 1 and sequential
    if overrides.get("sequential") is not None:
        cfg["sequential"] = bool(overrides["sequential"]) and K > 1
    cfg["DS"], cfg["n_split"] = _split(batch, groups, K, per_group, cfg["BD"], sm_count)
    cfg["bwd_DS"], cfg["bwd_n_split"] = _split(batch, groups, K, per_group, cfg["bwd_BD"], sm_count)
    if overrides.get("bwd_split"):
        DS = -(-per_group // max(1, overrides["bwd_split"]))
        cfg["bwd_DS"] = -(-DS // cfg["bwd_BD"]) * cfg["bwd_BD"]
        cfg["bwd_n_split"] = -(-per_group // cfg["bwd_DS"])
    cfg["walk_BD"] = overrides.get("walk_BD") or min(32, _pow2(per_group))
    cfg["walk_maxnreg"] = overrides.get("walk_maxnreg")
    cfg["walk_save"] = training  # the per-chunk states, for the backward
    warps = batch * groups * -(-per_group // cfg["walk_BD"]) * max(1, cfg["walk_BD"] // 32)
    segments, per_h100 = 1, sm_count / 132  # the warp counts below are an H100's (132 multiprocessors)
    if warps < 512 * per_h100:
        while warps * segments < 1024 * per_h100 and segments < K:
            segments *= 2
    segments = min(overrides.get("walk_segments") or segments, K)
    cfg["walk_seg"] = -(-K // segments) * cfg["T"]
    cfg["walk_segments"] = -(-length // cfg["walk_seg"])
    # the walk where there is one segment or each is 1024 steps or more; with shorter ones (at (16, 256, 4096)
    # and (16, 512, 1024): 512 and 256 steps) the host time of its extra launches outweighed what it saves on
    # the GPU (benchmarks/NOTES_scan.md, version 11)
    walk = overrides.get("walk")
    cfg["walk"] = (cfg["walk_segments"] == 1 or cfg["walk_seg"] >= 1024) if walk is None else bool(walk)
    # summary segments per walk segment where that leaves them whole chunks (values up to 1: none); 4 by
    # default: the summary pass is latency-bound (benchmarks/NOTES_scan.md, version 12), and 4x as many
    # programs on segments a quarter as long took 5-12% off the forward's GPU time where the walk has segments
    refine = overrides.get("walk_refine")
    refine = 4 if refine is None else refine
    whole = refine > 1 and (cfg["walk_seg"] // cfg["T"]) % refine == 0
    cfg["walk_refine"] = refine if whole and cfg["walk_segments"] > 1 else 1
    return cfg


def _flip_args(cfg: dict, compiled: bool):
    """(FLIP, FLIP_PACK) for the backward. Compiled, the shuffle reversal needs the tile in one warp with no
    replication (bwd_BD x T >= 256 elements: 8 or 16 registers per thread), else Triton's reverse scan;
    under the interpreter (no inline assembly) the same code path runs with a gather."""
    if not cfg["bwd_flip"]:
        return False, 0
    if not compiled:
        return True, 0
    pack = cfg["bwd_BD"] * cfg["T"] // 32
    if cfg["bwd_num_warps"] != 1 or pack not in (8, 16):
        return False, 0
    return True, pack


def _strides3(x: Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def _groups(X: Tensor) -> int:
    """Groups of B or C: (B, N, L) is one group."""
    return 1 if X.dim() == 3 else X.shape[1]


def _grouped_strides(X: Tensor) -> tuple:
    """(batch, group, N, L) strides of B or C, (B, N, L) as one group: read through these rather than an
    unsqueezed view, which costs a PyTorch operation of host time a call."""
    return (X.stride(0), 0, X.stride(1), X.stride(2)) if X.dim() == 3 else X.stride()


def _seq_args(seq_idx):
    """Pointer and (batch, length) strides of seq_idx, or a placeholder when there is none."""
    if seq_idx is None:
        return None, (0, 0)
    return seq_idx, (seq_idx.stride(0), seq_idx.stride(1))


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, h0, seq_idx, cfg):
    """y and the states entering every chunk, (B, K+1, D, N) float32, from h0 (any float dtype) or zero."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    groups = _groups(B)
    T, K, BD, DS, n_split = cfg["T"], cfg["n_chunks"], cfg["BD"], cfg["DS"], cfg["n_split"]
    dev = u.device
    walk = cfg["walk"] and seq_idx is None
    states = torch.empty(batch, K + 1, dim, n_state, device=dev, dtype=torch.float32)
    if h0 is not None:
        states[:, 0].copy_(h0)
    elif K == 1 or (walk and (cfg["walk_segments"] == 1 or cfg["walk_save"])):
        # read by the forward, or kept for the backward; otherwise the carry pass or the sequential forward writes
        # the zero state, and a walk of several segments without gradients never reads it
        states[:, 0].zero_()
    y = torch.empty(batch, dim, length, device=dev, dtype=u.dtype)
    if walk:
        _walk(u, delta, A, B, C, D, z, delta_bias, softplus, y, states, h0 is None, cfg)
        return y, states
    dummy = u  # pointer for absent optional tensors (never read)
    grid = (K, batch, groups * n_split)
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
                 HAS_SEQ=seq_idx is not None)
    seq_ptr, seq_strides = _seq_args(seq_idx)
    seq_ptr = dummy if seq_ptr is None else seq_ptr
    if cfg["sequential"]:
        n_split_seq = -(-(dim // groups) // BD)
        grid_seq = (1, batch, groups * n_split_seq)
        split_args = (dim // groups, n_split_seq, BD)
    elif K > 1:
        decay = torch.empty(batch, K, dim, n_state, device=dev, dtype=torch.float32)
        local = torch.empty_like(decay)
        launch(_chunk_summary_kernel, grid,
            u, delta, A, B, dummy, dummy, delta_bias if delta_bias is not None else dummy, seq_ptr,
            decay, local,
            length, dim // groups, n_split, DS, K, dim,
            *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
            *_grouped_strides(B), 0, 0, 0, 0, 0, 0, *seq_strides,
            REVERSE=False, HAS_Z=False, HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=flags["SOFTPLUS"],
            HAS_SEQ=flags["HAS_SEQ"], BD=BD, NS=n_state, T=T, num_warps=cfg["num_warps"],
        )
        _carry(decay, local, states, reverse=False, zero_start=h0 is None)
    if not cfg["sequential"]:
        grid_seq, split_args = grid, (dim // groups, n_split, DS)
    launch(_scan_fwd_kernel, grid_seq,
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, seq_ptr, states, y,
        length, *split_args, K, dim,
        *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
        *_grouped_strides(B), *_grouped_strides(C), *(_strides3(z) if z is not None else (0, 0, 0)), *_strides3(y),
        *seq_strides,
        HAS_D=D is not None, SEQUENTIAL=cfg["sequential"], SINGLE_CHUNK=K == 1,
        ZERO_H0=cfg["sequential"] and h0 is None, BD=BD, NS=n_state, T=T, num_warps=cfg["num_warps"], **flags,
    )
    return y, states


def _pack_bc(B: Tensor, C: Tensor, TW: int) -> Tensor:
    """B and C ((B, N, L) or (B, G, N, L)) as one float32 (B, G, L/TW, 2, N, TW) tensor, zero past L: a walk trip's
    B and C rows are one block, read with 16-byte loads at constant offsets from one address and prefetched in one
    go. One launch (the walk's host time counts at short sequences)."""
    batch, groups, (n_state, length) = B.shape[0], _groups(B), B.shape[-2:]
    n_sub = -(-length // TW)
    bc = torch.empty(batch, groups, n_sub, 2, n_state, TW, device=B.device, dtype=torch.float32)
    SB = 32
    launch(_pack_bc_kernel, (triton.cdiv(n_sub, SB), batch * groups),
        B, C, bc, length, n_sub, groups, *_grouped_strides(B), *_grouped_strides(C),
        NS=n_state, NP=_pow2(n_state), TW=TW, SB=SB, num_warps=4)
    return bc


def _walk(u, delta, A, B, C, D, z, delta_bias, softplus, y, states, zero_h0, cfg) -> None:
    """The forward by ``_scan_walk_kernel``: y, and into states (B, K+1, D, N) the final state and, for training,
    the per-chunk states after states[:, 0] (zero with zero_h0)."""
    batch, dim, length = u.shape
    groups, n_state = _groups(B), A.shape[1]
    TW = 16 // max(x.element_size() for x in (u, delta, z) if x is not None)
    bc = _pack_bc(B, C, TW)
    BD, seg_len, n_seg, K = cfg["walk_BD"], cfg["walk_seg"], cfg["walk_segments"], cfg["n_chunks"]
    per_group = dim // groups
    n_split = -(-per_group // BD)
    dummy = u
    consts = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
                  FAST=u.is_cuda, NS=n_state, NP=_pow2(n_state), BD=BD, TW=TW, T=cfg["T"],
                  num_warps=max(1, BD // 32), maxnreg=cfg["walk_maxnreg"])
    zs = _strides3(z) if z is not None else (0, 0, 0)

    def walk_pass(segments, length_of_one, h_in, h_out, decay, summary, s_h_in_j=0):
        launch(_scan_walk_kernel, (segments, batch, groups * n_split),
            u, delta, A, bc, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, y, h_in, h_out, decay,
            length, length_of_one, segments, bc.shape[2], groups, per_group, n_split, K, dim, h_in.stride(0),
            s_h_in_j, *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1), *zs, *_strides3(y),
            SUMMARY=summary, SAVE=cfg["walk_save"] and not summary, **consts)

    if n_seg == 1:  # from states[:, 0] itself
        walk_pass(1, seg_len, states, states, dummy, False)
        return
    # the summary pass over segments `refine` times shorter than the walk's (more programs for the pass
    # that has the least work per step); the walk starts at every refine-th of their boundaries
    refine = cfg["walk_refine"]
    fine_len = seg_len // refine
    n_fine = -(-length // fine_len)
    local = states.new_empty(batch, n_fine - 1, dim, n_state)
    decay = torch.empty_like(local)
    walk_pass(n_fine - 1, fine_len, dummy, local, decay, True)
    h_in = states.new_empty(batch, n_fine, dim, n_state)
    if not zero_h0:
        h_in[:, 0] = states[:, 0]
    _carry(decay, local, h_in, reverse=False, zero_start=zero_h0)
    walk_pass(n_seg, seg_len, h_in, states, dummy, False, s_h_in_j=refine * dim * n_state)


@functools.lru_cache(maxsize=1024)
def _carry_tile(batch: int, K: int, rows: int, sm_count: int) -> tuple:
    """(ROWS, CB) for ``_carry_kernel``: tiles of 4096 (row, chunk) entries, 64 rows a program unless that leaves
    fewer programs than multiprocessors, then as few as 8 (and longer runs of chunks). H100 (session 15,
    benchmarks/NOTES_scan.md version 15): one sequence of 2048 chunks over 2048 rows, 82 -> 30 us; at 256 programs
    or more 64 rows were as fast as any tile, or within 2 us. Cached: it runs at every carry, on the host path."""
    ROWS = min(64, _pow2(rows))
    while ROWS > 8 and batch * triton.cdiv(rows, ROWS) < sm_count:
        ROWS //= 2
    return ROWS, min(4096 // ROWS, _pow2(K))


def _carry(decay: Tensor, local: Tensor, states: Tensor, reverse: bool, zero_start: bool,
           zero_r0: bool = False) -> None:
    batch, K, dim, n_state = decay.shape
    rows = dim * n_state
    ROWS, CB = _carry_tile(batch, K, rows, _sm_count(decay.device))
    launch(_carry_kernel, (triton.cdiv(rows, ROWS), batch),
        decay, local, states, K, rows, REVERSE=reverse, ZERO_START=zero_start, ROWS=ROWS, CB=CB, ZERO_R0=zero_r0,
        num_warps=4)


def _f32_buffers(device: torch.device, *sizes: int) -> tuple:
    """Flat float32 buffers of these sizes cut from one allocation: two PyTorch operations rather than one per
    buffer. Each starts 128-byte aligned (Triton specializes kernels on 16-byte alignment)."""
    padded = [-(-n // 32) * 32 for n in sizes]
    return torch.empty(sum(padded), device=device, dtype=torch.float32).split(padded)


def _backward(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, softplus, seq_idx, states, h0_dtype, cfg):
    """Every gradient in its input's dtype; dh0 in h0_dtype, None without an initial state."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    groups = _groups(B)
    T, K, BD, DS, n_split = cfg["T"], cfg["n_chunks"], cfg["BD"], cfg["DS"], cfg["n_split"]
    bBD, bDS, b_split = cfg["bwd_BD"], cfg["bwd_DS"], cfg["bwd_n_split"]
    dev = u.device
    f32 = torch.float32
    dummy = u
    grid = (K, batch, groups * n_split)
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
                 HAS_SEQ=seq_idx is not None)
    z_strides = _strides3(z) if z is not None else (0, 0, 0)
    seq_ptr, seq_strides = _seq_args(seq_idx)
    seq_ptr = dummy if seq_ptr is None else seq_ptr

    # adj[:, 0] is zero (the backward's dA partials take the rows of adj, and nothing reads that one): written by
    # the reverse carry, or here where there is one chunk
    adj = torch.empty(batch, K + 1, dim, n_state, device=dev, dtype=f32)
    if K == 1:
        adj.zero_()
    if dfinal is not None:
        adj[:, K].copy_(dfinal)
    if K > 1:
        decay = torch.empty(batch, K, dim, n_state, device=dev, dtype=f32)
        local = torch.empty_like(decay)
        launch(_chunk_summary_kernel, grid,
            u, delta, A, C, z if z is not None else dummy, dout,
            delta_bias if delta_bias is not None else dummy, seq_ptr, decay, local,
            length, dim // groups, n_split, DS, K, dim,
            *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
            *_grouped_strides(C), *z_strides, *_strides3(dout), *seq_strides,
            REVERSE=True, BD=BD, NS=n_state, T=T, num_warps=cfg["num_warps"], **flags,
        )
        # and the zero adjoint leaving the last chunk, without a final state's gradient
        _carry(decay, local, adj, reverse=True, zero_start=dfinal is None, zero_r0=True)
        del decay, local  # freed before the gradients are allocated: the allocator reuses them

    du = torch.empty(batch, dim, length, device=dev, dtype=u.dtype)
    ddelta = torch.empty(batch, dim, length, device=dev, dtype=delta.dtype)
    dz = torch.empty(batch, dim, length, device=dev, dtype=z.dtype) if z is not None else None
    dB = torch.empty(B.shape, device=dev, dtype=B.dtype)
    dC = torch.empty(C.shape, device=dev, dtype=C.dtype)
    dA = torch.empty(dim, n_state, device=dev, dtype=f32)
    dD = torch.empty(dim, device=dev, dtype=D.dtype) if D is not None else None
    dbias = torch.empty(dim, device=dev, dtype=delta_bias.dtype) if delta_bias is not None else None
    dh0 = torch.empty(batch, dim, n_state, device=dev, dtype=h0_dtype) if h0_dtype is not None else None
    # float32 partials for _grad_sums_kernel; the backward kernel writes dB, dC itself from one split in float32,
    # and dh0 in float32; its dA partials go over adj, row by row as it has read them
    sum_B, sum_C = b_split > 1 or B.dtype != f32, b_split > 1 or C.dtype != f32
    cast_h0 = h0_dtype is not None and h0_dtype != f32
    n_bc, n_parts, n_h0 = batch * groups * n_state * length, batch * K, batch * dim * n_state
    dB_part, dC_part, dD_part, dbias_part, dh0_part = _f32_buffers(
        dev, b_split * n_bc if sum_B else 0, b_split * n_bc if sum_C else 0,
        n_parts * dim if D is not None else 0, n_parts * dim if delta_bias is not None else 0,
        n_h0 if cast_h0 else 0)
    flip, flip_pack = _flip_args(cfg, u.is_cuda)
    launch(_scan_bwd_kernel, (K, batch, groups * b_split),
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, seq_ptr, states, adj, dout,
        du, ddelta, dz if dz is not None else du, dB_part if sum_B else dB, dC_part if sum_C else dC,
        dD_part, dbias_part, dh0_part if cast_h0 else (dh0 if dh0 is not None else dummy),
        length, dim // groups, b_split, bDS, K, dim, groups,
        *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
        *_grouped_strides(B), *_grouped_strides(C), *z_strides, *_strides3(dout), *seq_strides,
        HAS_D=D is not None, HAS_H0=h0_dtype is not None, BD=bBD, NS=n_state, T=T, UNROLL=cfg["unroll"],
        SCAN2=cfg["bwd_scan2"],
        RELOAD=cfg["bwd_reload"], EARLY_DBC=cfg["bwd_early_dbc"], FLIP=flip, FLIP_PACK=flip_pack,
        num_warps=cfg["bwd_num_warps"],
        maxnreg=cfg["bwd_maxnreg"], **flags,
    )
    # rows of partials a trip: up to 32 splits, up to 128 (batch, chunk) partials
    split_rb, part_rb, tile = min(32, _pow2(b_split)), min(128, _pow2(n_parts)), 4096
    blocks = ((sum_B + sum_C) * triton.cdiv(n_bc, tile // split_rb) + triton.cdiv(dim * n_state, tile // part_rb)
              + ((D is not None) + (delta_bias is not None)) * triton.cdiv(dim, tile // part_rb)
              + cast_h0 * triton.cdiv(n_h0, tile))
    launch(_grad_sums_kernel, (blocks,),
        dB_part, dC_part, adj, dD_part, dbias_part, dh0_part,
        dB, dC, dA, dD if dD is not None else dA, dbias if dbias is not None else dA, dh0 if cast_h0 else dA,
        b_split, n_bc, n_parts, batch * (K + 1), dim, n_state, n_h0,
        SUM_B=sum_B, SUM_C=sum_C, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, CAST_H0=cast_h0,
        SPLIT_RB=split_rb, PART_RB=part_rb, TILE=tile, num_warps=4,
    )
    return dict(du=du, ddelta=ddelta, dz=dz, dA=dA, dB=dB, dC=dC, dD=dD, dbias=dbias, dh0=dh0)


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; off the GPU (the Triton interpreter) every program costs Python time:
    1, the fewest programs."""
    return _cuda_sm_count(device.index) if device.type == "cuda" else 1


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=1024)
def _config(batch, dim, length, n_state, groups, sm_count, training, overrides: tuple) -> Mapping:
    """``choose_config`` once per shape and overrides, read-only (computed per call it cost ~20 us of host
    time, as much as a small kernel)."""
    return types.MappingProxyType(choose_config(batch, dim, length, n_state, groups, sm_count, training,
                                                **dict(overrides)))


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, seq_idx, config, training):
    """y, the per-chunk states (B, K+1, D, N) and the launch parameters."""
    batch, dim, length = u.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    if config:  # checked before the cache, which needs hashable values; the models pass none
        _check_overrides(config)
    cfg = _config(batch, dim, length, A.shape[1], groups, _sm_count(u.device), training,
                  tuple(sorted(config.items())) if config else ())
    y, states = _forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, seq_idx, cfg)
    return y, states, cfg


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the per-chunk entering states, recomputes the rest."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, config,
                return_final_state):
        y, states, cfg = _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                                       config, training=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, seq_idx, states)
        ctx.cfg = cfg
        ctx.delta_softplus = delta_softplus
        ctx.initial_state_dtype = None if initial_state is None else initial_state.dtype
        # an unused output's gradient arrives as None, not as zeros the engine allocates and fills
        ctx.set_materialize_grads(False)
        if not return_final_state:
            return y
        return y, states[:, cfg["n_chunks"]].clone()

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        u, delta, A, B, C, D, z, delta_bias, seq_idx, states = ctx.saved_tensors
        dout = unit_stride_along_l(dout) if dout is not None else torch.zeros_like(u)
        grads = _backward(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, seq_idx, states,
                          ctx.initial_state_dtype, ctx.cfg)
        return (grads["du"], grads["ddelta"], grads["dA"], grads["dB"], grads["dC"], grads["dD"], grads["dz"],
                grads["dbias"], None, grads["dh0"], None, None, None)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: Tensor | None = None,
    config: dict | None = None,
):
    """Selective scan on the GPU through Triton; same arguments and results as ``selective_scan_ref``.

    Real A with input-dependent B and C ((B, N, L) or grouped (B, G, N, L)). Returns
    y (B, D, L) in u.dtype and, with ``return_final_state``, the final state (B, D, N)
    float32, which is differentiable too. ``seq_idx`` (B, L) restarts the state from zero
    where it changes (packed variable-length sequences; ``initial_state`` feeds the first
    sequence of each row). ``config`` overrides launch parameters of
    ``choose_config`` (T, BD, num_warps, sequential); tests use small chunks.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_devices_and_dtypes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if seq_idx is not None:
        check_seq_idx(seq_idx, u)
    if not supports(A, B, C):
        raise ValueError("selective_scan_triton takes real A and input-dependent B, C; "
                         "use the chunked backend for complex A or time-invariant B, C")
    u, delta, B, C, z, seq_idx = (unit_stride_along_l(t) for t in (u, delta, B, C, z, seq_idx))
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, config)
    if torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in args):
        return SelectiveScanTriton.apply(*args, bool(return_final_state))
    # no gradients: no autograd node (its machinery costs host time), nothing saved for a backward
    y, states, cfg = _scan_forward(*args, training=False)
    return (y, states[:, cfg["n_chunks"]].clone()) if return_final_state else y


def unit_stride_along_l(x: Tensor | None) -> Tensor | None:
    """``x`` as it is where its last axis (L) has unit stride, is a broadcast (stride 0) or has one step;
    otherwise a contiguous copy. The kernels read along L in vectors: a strided L axis (the model's
    delta and z are (B, L, D) tensors seen as (B, D, L), its B and C columns of x_proj's output) costs
    a memory transaction per element in every pass, a copy one pass. mamba_ssm copies the same way."""
    if x is None or x.shape[-1] <= 1 or x.stride(-1) in (0, 1):
        return x
    return x.contiguous()


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _check_devices_and_dtypes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """Raise ValueError for a tensor on another device than u or of a dtype the kernels do not take."""
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    for name, x in named.items():
        if x is None:
            continue
        if x.device != u.device:
            raise ValueError(f"{name} is on {x.device} but u is on {u.device}")
        if name != "A" and x.dtype not in _FLOATS:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if not A.is_complex() and A.dtype != torch.float32:
        raise ValueError(f"A must be float32 (or complex), got {A.dtype}")


def supports(A: Tensor, B: Tensor, C: Tensor) -> bool:
    """Whether the Triton kernels cover these arguments (real A, input-dependent B and C)."""
    return (not A.is_complex()) and B.dim() >= 3 and C.dim() >= 3
