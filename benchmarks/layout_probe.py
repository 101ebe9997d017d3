"""Does one register layout for the whole block step make one stream's outer block faster? (issue 4)

Today's block step (``_mamba_block_step_kernel``, one program per stream, every channel in one tile) moves its
intermediate vectors between Triton's per-tile layouts: on the SC09 outer block (hidden 64, 128 channels, N 16)
its sm_90 build has 12 layout conversions and 29 barriers. This probe builds the same step with every tensor a
(chunks, channels, 16) tile of one layout: in_proj and out_proj as (hidden / 16, E, 16), the per-channel
parameters (A, x_proj's rows as columns, dt_proj, the conv weights shifted by one) packed beside each other in
16-column groups of one float32 matrix prepared once, so that every load is contiguous along the last axis and
Triton keeps a single layout (one conversion, 14 barriers; the only sums across warps are x_proj's and
out_proj's). It checks the step against the reference and times 16 chained blocks (each its own weights and
states, as the outer stage) in a CUDA graph of programmatic dependent launches, against today's launches.

    python benchmarks/layout_probe.py          # writes benchmarks/results/layout_probe_<gpu>.json
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys

import torch
import triton
import triton.language as tl

from mamba_audio.kernels.selective_scan.step_ref import mamba_block_step_ref
from mamba_audio.kernels.selective_scan.triton_scan import _softplus
from mamba_audio.kernels.selective_scan.triton_step import (block_step_config, dependent_launches,
                                                           gdc_launch_dependents, gdc_wait, mamba_block_step_triton)

from handoff_probe import block_dicts, sc09_outer_blocks  # benchmarks/handoff_probe.py
from results_io import file_label, save_result  # benchmarks/results_io.py
from step_sweep import graph_time_us  # benchmarks/step_sweep.py

K = 16  # columns of every tile's last axis: the state size, and a group of the packed per-channel matrix
GROUPS = ("A", "x_proj dt rows", "x_proj B rows", "x_proj C rows", "dt_proj", "conv weight shifted")
VECTORS = ("conv weight last", "conv bias", "D", "dt bias", "in_proj bias u", "in_proj bias z")


@triton.jit
def _add3(a0, b0, c0, a1, b1, c1):
    return a0 + a1, b0 + b1, c0 + c1


@triton.jit
def _sum_hidden(x, CHUNKS_FIRST: tl.constexpr):
    """Sum of a (C, E or 1, K) tile over its hidden units (axes 0 and 2), kept as (1, E or 1, 1)."""
    if CHUNKS_FIRST:  # within each thread first, then across the columns' 4 lanes: fewer shuffles, measured slower
        return tl.sum(tl.sum(x, axis=0, keep_dims=True), axis=2, keep_dims=True)
    return tl.sum(tl.sum(x, axis=2, keep_dims=True), axis=0, keep_dims=True)


@triton.jit
def _one_layout_block_kernel(
    x_ptr, out_ptr, normw_ptr, normb_ptr, win_ptr, woutT_ptr, bout_ptr, pk_ptr, vec_ptr, conv_ptr, ssm_ptr,
    hidden, dim, eps, s_xb, s_ob, s_wir, s_wor, s_pe, s_ve, s_cb, s_ce, s_hb, s_he,
    RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_OUT_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, WIDTH: tl.constexpr, PDL: tl.constexpr,
    CHUNKS_FIRST: tl.constexpr,
):
    """One block step of stream program_id(0), every tensor a (BLOCK_C, BLOCK_E, BLOCK_K) tile or a broadcast
    slice of one: hidden unit c * BLOCK_K + k, channel e. The SSM state size is BLOCK_K (its tile is read and
    written unmasked along k). States updated in place; out = x + block(x)."""
    row = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
    c3 = tl.arange(0, BLOCK_C)[:, None, None]
    e3 = tl.arange(0, BLOCK_E)[None, :, None]
    k3 = tl.arange(0, BLOCK_K)[None, None, :]
    h3 = c3 * BLOCK_K + k3
    mask_h = h3 < hidden
    mask_e = e3 < dim
    w_in = tl.load(win_ptr + e3 * s_wir + h3, mask=mask_e & mask_h, other=0.0).to(tl.float32)
    w_z = tl.load(win_ptr + (dim + e3) * s_wir + h3, mask=mask_e & mask_h, other=0.0).to(tl.float32)
    w_out = tl.load(woutT_ptr + e3 * s_wor + h3, mask=mask_e & mask_h, other=0.0).to(tl.float32)
    pk = pk_ptr + e3 * s_pe + k3
    A = tl.load(pk, mask=mask_e, other=0.0)
    w_dt = tl.load(pk + BLOCK_K, mask=mask_e, other=0.0)
    w_B = tl.load(pk + 2 * BLOCK_K, mask=mask_e, other=0.0)
    w_C = tl.load(pk + 3 * BLOCK_K, mask=mask_e, other=0.0)
    w_delta = tl.load(pk + 4 * BLOCK_K, mask=mask_e, other=0.0)
    conv_w = tl.load(pk + 5 * BLOCK_K, mask=mask_e, other=0.0)
    vec = vec_ptr + e3 * s_ve
    conv_last = tl.load(vec, mask=mask_e, other=0.0)
    conv_b = tl.load(vec + 1, mask=mask_e, other=0.0)
    D = tl.load(vec + 2, mask=mask_e, other=0.0)
    dt_b = tl.load(vec + 3, mask=mask_e, other=0.0)
    b_u = tl.load(vec + 4, mask=mask_e, other=0.0)
    b_z = tl.load(vec + 5, mask=mask_e, other=0.0)
    normw = tl.load(normw_ptr + h3, mask=mask_h, other=0.0).to(tl.float32)
    if HAS_NORM_BIAS:
        normb = tl.load(normb_ptr + h3, mask=mask_h, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()
    residual = tl.load(x_ptr + row * s_xb + h3, mask=mask_h, other=0.0).to(tl.float32)  # (C, 1, K)
    in_window = mask_e & (k3 < WIDTH)
    old = tl.load(conv_ptr + row * s_cb + e3 * s_ce + k3, mask=in_window, other=0.0)
    old_next = tl.load(conv_ptr + row * s_cb + e3 * s_ce + k3 + 1, mask=mask_e & (k3 + 1 < WIDTH), other=0.0)
    h_ptrs = ssm_ptr + row * s_hb + e3 * s_he + k3
    h = tl.load(h_ptrs, mask=mask_e, other=0.0)
    if RMS_NORM:
        normed = residual * tl.rsqrt(_sum_hidden(residual * residual, CHUNKS_FIRST) / hidden + eps)
    else:
        centred = tl.where(mask_h, residual - _sum_hidden(residual, CHUNKS_FIRST) / hidden, 0.0)
        normed = centred * tl.rsqrt(_sum_hidden(centred * centred, CHUNKS_FIRST) / hidden + eps)
    normed *= normw
    if HAS_NORM_BIAS:
        normed += normb
    u = _sum_hidden(w_in * normed, CHUNKS_FIRST) + b_u  # (1, E, 1)
    z = _sum_hidden(w_z * normed, CHUNKS_FIRST) + b_z
    acc = tl.sum(old.to(tl.float32) * conv_w, axis=2, keep_dims=True) + conv_last * u + conv_b
    xc = acc * tl.sigmoid(acc)
    dt_low, B_t, C_t = tl.reduce((w_dt * xc, w_B * xc, w_C * xc), 1, _add3, keep_dims=True)  # (1, 1, K) each
    delta = _softplus(tl.sum(w_delta * dt_low, axis=2, keep_dims=True) + dt_b)  # (1, E, 1)
    h = tl.exp(delta * A) * h + (delta * xc) * B_t
    y = tl.sum(h * C_t, axis=2, keep_dims=True) + D * xc
    y = tl.where(mask_e, y * z * tl.sigmoid(z), 0.0)
    out = tl.sum(w_out * y, axis=1, keep_dims=True)  # (C, 1, K)
    if HAS_OUT_BIAS:
        out += tl.load(bout_ptr + h3, mask=mask_h, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_ob + h3, (residual + out).to(out_ptr.dtype.element_ty), mask=mask_h)
    tl.store(h_ptrs, h, mask=mask_e)
    window = tl.where(k3 == WIDTH - 1, u.to(conv_ptr.dtype.element_ty), old_next)
    tl.debug_barrier()  # every thread has read the old windows
    tl.store(conv_ptr + row * s_cb + e3 * s_ce + k3, window, mask=in_window)


def pack(block: dict) -> dict:
    """The probe's layout of one block's weights (step_ref.BLOCK_TENSORS names): the packed per-channel matrix
    (E, len(GROUPS) * K), the per-channel vectors (E, 8) and out_proj transposed (E, H), all float32."""
    dim, width = block["conv_weight"].shape
    n_state, rank = block["A"].shape[1], block["dt_proj_weight"].shape[1]
    if n_state != K or rank > K or width > K or block["x_proj_weight"] is None:  # the state tile is read unmasked
        raise ValueError(f"the probe takes a selective SSM of state size {K}, rank and conv width up to {K}; got "
                         f"state size {n_state}, rank {rank}, conv width {width}")
    f32 = dict(device=block["A"].device, dtype=torch.float32)
    groups = torch.zeros(dim, len(GROUPS), K, **f32)
    x_proj = block["x_proj_weight"].float()
    groups[:, 0, :n_state] = block["A"]
    groups[:, 1, :rank] = x_proj[:rank].t()
    groups[:, 2, :n_state] = x_proj[rank:rank + n_state].t()
    groups[:, 3, :n_state] = x_proj[rank + n_state:].t()
    groups[:, 4, :rank] = block["dt_proj_weight"].float()
    conv = block["conv_weight"].float()
    groups[:, 5, 1:width] = conv[:, :width - 1]  # the old window's column k meets the new window's weight k - 1
    vectors = torch.zeros(dim, 8, **f32)
    vectors[:, 0] = conv[:, width - 1]
    for column, name in ((1, "conv_bias"), (2, "D"), (3, "dt_bias")):
        if block[name] is not None:
            vectors[:, column] = block[name].float()
    if block["in_proj_bias"] is not None:
        vectors[:, 4], vectors[:, 5] = block["in_proj_bias"].float().chunk(2)
    return dict(packed=groups.reshape(dim, -1), vectors=vectors, out_proj_t=block["out_proj_weight"].float().t()
                .contiguous())


def one_layout_step(x, block, packed, eps, rms_norm, num_warps=8, chunks_first=False):
    """x (B, H) float32 -> x + block(x), the block's states updated in place."""
    batch, hidden = x.shape
    dim, width = block["conv_weight"].shape
    out = torch.empty_like(x)
    conv, ssm = block["conv_state"], block["ssm_state"]
    block_h = max(K, triton.next_power_of_2(hidden))
    pdl = dependent_launches(x.device)
    _one_layout_block_kernel[(batch,)](
        x, out, block["norm_weight"], block["norm_bias"] if block["norm_bias"] is not None else x,
        block["in_proj_weight"], packed["out_proj_t"],
        block["out_proj_bias"] if block["out_proj_bias"] is not None else x, packed["packed"], packed["vectors"],
        conv, ssm, hidden, dim, float(eps), x.stride(0), out.stride(0), block["in_proj_weight"].stride(0),
        packed["out_proj_t"].stride(0), packed["packed"].stride(0), packed["vectors"].stride(0), conv.stride(0),
        conv.stride(1), ssm.stride(0), ssm.stride(1),
        RMS_NORM=rms_norm, HAS_NORM_BIAS=block["norm_bias"] is not None,
        HAS_OUT_BIAS=block["out_proj_bias"] is not None,
        BLOCK_C=block_h // K, BLOCK_E=triton.next_power_of_2(dim), BLOCK_K=K, WIDTH=width, PDL=pdl,
        CHUNKS_FIRST=chunks_first,
        num_warps=num_warps, **({"launch_pdl": True} if pdl else {}))
    return out


def copy_states(dicts: list[dict]) -> list[dict]:
    return [dict(d, conv_state=d["conv_state"].clone(), ssm_state=d["ssm_state"].clone()) for d in dicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/layout_probe_<gpu>.json)")
    parser.add_argument("--streams", default="1,16,256")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("layout_probe.py times GPU kernels; no CUDA device here")
    device = torch.device("cuda")
    outer, _ = sc09_outer_blocks(device)
    result = dict(device=torch.cuda.get_device_name(), command="python " + shlex.join(sys.argv),
                  torch=torch.__version__, triton=triton.__version__, preset="sc09-6m",
                  block=dict(hidden=outer[0].mixer.d_model, channels=outer[0].mixer.d_inner), rows=[])
    print("the SC09 outer stage's 16 blocks chained, us per block in a CUDA graph")
    for batch in map(int, args.streams.split(",")):
        dicts, eps, rms = block_dicts(outer, batch)
        packs = [pack(d) for d in dicts]
        x0 = torch.randn(batch, dicts[0]["norm_weight"].shape[0], device=device)
        ref, today, ours = copy_states(dicts), copy_states(dicts), copy_states(dicts)
        x_ref = x_today = x_ours = x0
        for _ in range(8):  # 8 samples through the stage: outputs and every state against the reference
            for i in range(len(dicts)):
                x_ref = mamba_block_step_ref(x_ref, norm_eps=eps, rms_norm=rms, **ref[i])
                x_today = mamba_block_step_triton(x_today, norm_eps=eps, rms_norm=rms, **today[i])
                x_ours = one_layout_step(x_ours, ours[i], packs[i], eps, rms)
        hidden, dim = dicts[0]["norm_weight"].shape[0], dicts[0]["A"].shape[0]
        row = dict(streams=batch, today_config=list(block_step_config(hidden, dim, batch)),
                   rel_error_today=float((x_today - x_ref).norm() / x_ref.norm()),
                   rel_error_one_layout=float((x_ours - x_ref).norm() / x_ref.norm()),
                   state_rel_error_one_layout=max(float((o[name] - r[name]).norm() / r[name].norm())
                                                  for o, r in zip(ours, ref) for name in ("conv_state", "ssm_state")))

        def chain_today():
            x = x0
            for block in today:
                x = mamba_block_step_triton(x, norm_eps=eps, rms_norm=rms, **block)

        row["today_us"] = graph_time_us(chain_today) / len(dicts)
        for warps, chunks_first in itertools.product((4, 8, 16), (True, False)):
            def chain_ours():
                x = x0
                for block, packed in zip(ours, packs):
                    x = one_layout_step(x, block, packed, eps, rms, num_warps=warps, chunks_first=chunks_first)

            order = "chunks_first" if chunks_first else "columns_first"
            row[f"one_layout_{order}_{warps}_warps_us"] = graph_time_us(chain_ours) / len(dicts)
        result["rows"].append(row)
        print(f"  {batch:4d} streams: today {row['today_us']:6.2f}; one layout, 4/8/16 warps, chunks first "
              + " / ".join(f"{row[f'one_layout_chunks_first_{w}_warps_us']:.2f}" for w in (4, 8, 16))
              + ", columns first " + " / ".join(f"{row[f'one_layout_columns_first_{w}_warps_us']:.2f}"
                                                 for w in (4, 8, 16))
              + f" (relative error against the reference: today {row['rel_error_today']:.1e}, one layout "
              f"{row['rel_error_one_layout']:.1e}, states {row['state_rel_error_one_layout']:.1e})")
    path = save_result(result, "layout_probe", file_label(result["device"]), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
