"""What bounds one stream's step (issue 4): three measurements on the SC09 6.1M model's blocks, one stream, CUDA.

A sample goes through the outer stage's 16 residual blocks one after another (hidden 64, 128 channels), today one
programmatic dependent launch each. Two ways around the launches were proposed in NOTES_streaming.md, and this
measures what each would cost before either is built:

1. ``ring``: one persistent launch, a program per outer block, each holding its block's weights and states in
   registers across samples, the residual row handed from program to program through global memory and a flag
   (block 0 takes block 15's output of the sample before, so the ring is one dependent chain, as the model is).
   Rows for the hand-off alone (the body adds 1 to the row) and with the real block step, each with every thread
   polling the flag (volatile loads, then a fence) or thread 0 alone (acquire loads, then a barrier, as CUTLASS's
   semaphore does). The real ring's output and states are checked against the launches'.
2. ``stream``: how fast one program (one multiprocessor) reads float32 weights that sit in L2 (or L1): a stacked
   stage, all its blocks in one program, would pull 16 x 120 KB a sample through one multiprocessor.
3. ``stacked``: 8 outer (and 8 middle) blocks in one launch (``mamba_blocks_step_triton``) against a launch per
   block, each captured 64 times in a CUDA graph.

    python benchmarks/handoff_probe.py            # writes benchmarks/results/handoff_probe_<gpu>.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch
import triton
import triton.language as tl

from mamba_audio.kernels.selective_scan.step_ref import BLOCK_TENSORS, BlockStack
from mamba_audio.kernels.selective_scan.triton_scan import _softplus
from mamba_audio.kernels.selective_scan.triton_step import _offset, mamba_block_step_triton, mamba_blocks_step_triton

from results_io import file_label, save_result  # benchmarks/results_io.py
from step_sweep import block_args, graph_time_us  # benchmarks/step_sweep.py
from streaming import build_model  # benchmarks/streaming.py

# thread 0 spins on an acquire load until the flag reaches the target; every other thread skips to the barrier after
_SPIN_THREAD0 = tl.constexpr(
    "{\n .reg .pred p0, p1;\n .reg .b32 t, v;\n mov.u32 t, %tid.x;\n setp.ne.u32 p0, t, 0;\n @p0 bra DONE${:uid};\n"
    " SPIN${:uid}:\n ld.acquire.gpu.global.b32 v, [$1];\n setp.lt.s32 p1, v, $2;\n @p1 bra SPIN${:uid};\n"
    " DONE${:uid}:\n mov.u32 $0, 0;\n}")


@triton.jit
def _fence_gpu():
    tl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, 0;", "=r,r", [tl.zeros([1], tl.int32)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _wait(flag_ptr, target, THREAD0: tl.constexpr):
    if THREAD0:
        tl.inline_asm_elementwise(_SPIN_THREAD0, "=r,l,r", [flag_ptr + tl.zeros([1], tl.int32),
                                                            target + tl.zeros([1], tl.int32)],
                                  dtype=tl.int32, is_pure=False, pack=1)
        tl.debug_barrier()
    else:
        seen = tl.load(flag_ptr, volatile=True)
        while seen < target:
            seen = tl.load(flag_ptr, volatile=True)
        _fence_gpu()


@triton.jit
def _ring_kernel(buf_ptr, flag_ptr, normw_ptr, normb_ptr, win_ptr, wout_ptr, conv_ptr, ssm_ptr, convw_ptr, convb_ptr,
                 A_ptr, D_ptr, dtb_ptr, xproj_ptr, dtproj_ptr, offsets_ptr, n_steps, n_blocks, eps,
                 N_TENSORS: tl.constexpr, OM: tl.constexpr, H: tl.constexpr, E: tl.constexpr, N: tl.constexpr,
                 R: tl.constexpr, FLAG_STRIDE: tl.constexpr, NOP: tl.constexpr, THREAD0: tl.constexpr):
    """Program k steps block k for n_steps samples: waits until block k - 1 has finished the sample (block 0: until
    the last block has finished the sample before), reads its row of buf, writes its own, raises its flag. The
    SC09 blocks' shape only: layer norm, no projection biases, a conv of width 4 with bias, D, dt bias, softplus."""
    k = tl.program_id(0)
    prev = (k + n_blocks - 1) % n_blocks
    o = offsets_ptr + k * N_TENSORS
    offs_h = tl.arange(0, H)
    offs_e = tl.arange(0, E)
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, R)
    if not NOP:  # weights and states into registers, once
        normw = tl.load(normw_ptr + _offset(o, 0, OM) + offs_h)
        normb = tl.load(normb_ptr + _offset(o, 1, OM) + offs_h)
        win = win_ptr + _offset(o, 2, OM)
        w_in = tl.load(win + offs_e[:, None] * H + offs_h[None, :])
        w_z = tl.load(win + (E + offs_e[:, None]) * H + offs_h[None, :])
        w_out = tl.load(wout_ptr + _offset(o, 4, OM) + offs_h[:, None] * E + offs_e[None, :])
        convw = convw_ptr + _offset(o, 8, OM) + offs_e * 4
        cw0, cw1, cw2, cw3 = tl.load(convw), tl.load(convw + 1), tl.load(convw + 2), tl.load(convw + 3)
        cb = tl.load(convb_ptr + _offset(o, 9, OM) + offs_e)
        A = tl.load(A_ptr + _offset(o, 10, OM) + offs_e[:, None] * N + offs_n[None, :])
        D = tl.load(D_ptr + _offset(o, 11, OM) + offs_e)
        dtb = tl.load(dtb_ptr + _offset(o, 12, OM) + offs_e)
        xproj = xproj_ptr + _offset(o, 13, OM) + offs_e[None, :]
        w_dt = tl.load(xproj + offs_r[:, None] * E)
        w_B = tl.load(xproj + (R + offs_n[:, None]) * E)
        w_C = tl.load(xproj + (R + N + offs_n[:, None]) * E)
        w_delta = tl.load(dtproj_ptr + _offset(o, 14, OM) + offs_e[:, None] * R + offs_r[None, :])
        conv = conv_ptr + _offset(o, 6, OM) + offs_e * 4
        c0, c1, c2, c3 = tl.load(conv), tl.load(conv + 1), tl.load(conv + 2), tl.load(conv + 3)
        ssm = ssm_ptr + _offset(o, 7, OM) + offs_e[:, None] * N + offs_n[None, :]
        h = tl.load(ssm)
    for s in range(n_steps):
        _wait(flag_ptr + prev * FLAG_STRIDE, s + (k > 0).to(tl.int32), THREAD0)
        residual = tl.load(buf_ptr + prev * H + offs_h, cache_modifier=".cg")
        if NOP:
            new = residual + 1.0
        else:
            centred = residual - tl.sum(residual, axis=0) / H
            normed = centred * tl.rsqrt(tl.sum(centred * centred, axis=0) / H + eps) * normw + normb
            u = tl.sum(w_in * normed[None, :], axis=1)
            z = tl.sum(w_z * normed[None, :], axis=1)
            c0, c1, c2, c3 = c1, c2, c3, u
            acc = c0 * cw0 + c1 * cw1 + c2 * cw2 + c3 * cw3 + cb
            xc = acc * tl.sigmoid(acc)
            dt_low = tl.sum(w_dt * xc[None, :], axis=1)
            B_t = tl.sum(w_B * xc[None, :], axis=1)
            C_t = tl.sum(w_C * xc[None, :], axis=1)
            delta = _softplus(tl.sum(w_delta * dt_low[None, :], axis=1) + dtb)
            h = tl.exp(delta[:, None] * A) * h + (delta * xc)[:, None] * B_t[None, :]
            y = tl.sum(h * C_t[None, :], axis=1) + D * xc
            new = residual + tl.sum(w_out * (y * z * tl.sigmoid(z))[None, :], axis=1)
        tl.store(buf_ptr + k * H + offs_h, new)
        tl.debug_barrier()  # every thread's part of the row is written before the flag goes up
        _fence_gpu()
        tl.atomic_xchg(flag_ptr + k * FLAG_STRIDE, s + 1, sem="release", scope="gpu")
    if not NOP:
        tl.store(conv, c0)
        tl.store(conv + 1, c1)
        tl.store(conv + 2, c2)
        tl.store(conv + 3, c3)
        tl.store(ssm, h)


@triton.jit
def _stream_kernel(x_ptr, out_ptr, n, reps, TILE: tl.constexpr):
    acc = tl.zeros([TILE], tl.float32)
    for _ in range(reps):
        for i in range(0, n, TILE):
            acc += tl.load(x_ptr + i + tl.arange(0, TILE))
    tl.store(out_ptr + tl.arange(0, TILE), acc)


def sc09_outer_blocks(device: torch.device) -> tuple[list, torch.nn.Module]:
    """The SC09 6.1M model's 16 outer residual blocks (down then up; float32, random weights) and its stage."""
    stage = build_model("sc09-6m", device, torch.float32).backbone.stage
    return list(stage.down_blocks) + list(stage.up_blocks), stage


def block_dicts(blocks, batch: int = 1) -> tuple[list[dict], float, bool]:
    """The blocks' tensors for ``batch`` streams (float32, states filled at random) as step_ref.BLOCK_TENSORS
    mappings, with the first block's norm eps and whether its norm is an RMSNorm."""
    names = ("norm_weight", "norm_bias", "norm_eps", "rms_norm", "in_proj_weight", "in_proj_bias", "out_proj_weight",
             "out_proj_bias", "conv_state", "ssm_state", "conv_weight", "conv_bias", "A", "D", "dt_bias")
    dicts, norms = [], []
    for block in blocks:
        args, ssm = block_args(block, batch)
        entry = dict(zip(names, args[1:]), **ssm, B=None, C=None)
        norms.append((entry.pop("norm_eps"), entry.pop("rms_norm")))
        dicts.append({name: value.detach().float().contiguous() if value is not None else None
                      for name, value in entry.items()})
    return dicts, *norms[0]


def stage_blocks(blocks) -> tuple[list[dict], BlockStack, float]:
    """The blocks' tensors for one stream (``block_dicts``) whose every tensor is one slice of a stacked tensor,
    and their BlockStack."""
    dicts, eps, rms_norm = block_dicts(blocks)
    for block, entry in zip(blocks, dicts):  # the ring kernel applies the layer norm's bias itself (the model's
        # step folds it into in_proj's bias, block_step_tensors): the blocks' own tensors
        entry["norm_bias"] = block.norm.bias.detach().float().contiguous() if block.norm.bias is not None else None
        entry["in_proj_bias"] = block.mixer.in_proj.bias
    first = dicts[0]
    if rms_norm or first["norm_bias"] is None or first["in_proj_bias"] is not None \
            or first["out_proj_bias"] is not None or first["conv_bias"] is None or first["conv_weight"].shape[1] != 4:
        raise ValueError("the ring kernel takes the SC09 blocks' shape: layer norm, no projection biases, a conv of "
                         "width 4 with bias")
    for name, value in first.items():
        if value is not None:  # one stacked tensor per name, so that the offsets are small and aligned
            stacked = torch.stack([block[name] for block in dicts])
            for i, block in enumerate(dicts):
                block[name] = stacked[i]
    return dicts, BlockStack(dicts, eps, rms_norm=False, dt_softplus=True), eps


def chain_step(x, dicts, eps):
    for block in dicts:
        x = mamba_block_step_triton(x, norm_eps=eps, rms_norm=False, dt_softplus=True, **block)
    return x


def ring(stack, dicts, eps, x0, n_steps, nop, thread0, warps):
    n = len(dicts)
    hidden = x0.shape[-1]
    dim, n_state = dicts[0]["A"].shape
    buf = torch.zeros(n, hidden, device=x0.device)
    buf[n - 1] = x0[0]
    flag_stride = 32  # a flag per 128-byte line
    flags = torch.zeros(n * flag_stride, dtype=torch.int32, device=x0.device)
    first = dicts[0]
    _ring_kernel[(n,)](buf, flags, *(first[name] for name in (
        "norm_weight", "norm_bias", "in_proj_weight", "out_proj_weight", "conv_state", "ssm_state", "conv_weight",
        "conv_bias", "A", "D", "dt_bias", "x_proj_weight", "dt_proj_weight")), stack.offsets, n_steps, n, eps,
        N_TENSORS=len(BLOCK_TENSORS), OM=stack.offset_multiple, H=hidden, E=dim, N=n_state,
        R=first["dt_proj_weight"].shape[1], FLAG_STRIDE=flag_stride, NOP=nop, THREAD0=thread0, num_warps=warps)
    return buf[n - 1]


def wall_us(fn) -> float:
    """Microseconds of one call of fn (after an untimed one), from launch to synchronisation."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/handoff_probe_<gpu>.json)")
    parser.add_argument("--samples", type=int, default=4000, help="samples a timed ring runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("handoff_probe.py measures GPU hand-offs; no CUDA device here")
    device = torch.device("cuda")
    outer, stage = sc09_outer_blocks(device)
    dicts, stack, eps = stage_blocks(outer)
    saved = {name: [block[name].clone() for block in dicts] for name in ("conv_state", "ssm_state")}

    def restore():
        for name, values in saved.items():
            for block, value in zip(dicts, values):
                block[name].copy_(value)

    result = dict(device=torch.cuda.get_device_name(), command="python " + shlex.join(sys.argv),
                  torch=torch.__version__, triton=triton.__version__, preset="sc09-6m", ring=[], stream=[],
                  stacked=[])
    x0 = torch.randn(1, outer[0].mixer.d_model, device=device)

    print("ring of the 16 outer blocks, one stream: us per block (hand-off and body)")
    checked = 40
    expected = x0
    for _ in range(checked):
        expected = chain_step(expected, dicts, eps)
    expected_states = [[block[name].clone() for block in dicts] for name in ("conv_state", "ssm_state")]
    chain = graph_time_us(lambda: chain_step(x0, dicts, eps)) / len(dicts)
    result["chain_us_per_block"] = chain
    print(f"  a launch per block (today's path), CUDA graph: {chain:6.2f}")
    for nop, thread0, warps in ((True, False, 4), (True, True, 4), (True, False, 1), (True, True, 1),
                                (False, False, 16), (False, True, 16), (False, True, 8)):
        row = dict(body="add 1" if nop else "block step", poll="thread 0" if thread0 else "every thread",
                   warps=warps)
        if not nop:
            restore()
            out = ring(stack, dicts, eps, x0, checked, nop, thread0, warps)
            torch.cuda.synchronize()
            row["rel_error_vs_launches"] = max(
                [float((out - expected[0]).norm() / expected[0].norm())]
                + [float((block[name] - ref).norm() / ref.norm()) for name, refs in
                   zip(("conv_state", "ssm_state"), expected_states) for block, ref in zip(dicts, refs)])
        ring(stack, dicts, eps, x0, 100, nop, thread0, warps)
        row["us_per_block"] = wall_us(lambda: ring(stack, dicts, eps, x0, args.samples, nop, thread0, warps)) / (
            args.samples * len(dicts))
        result["ring"].append(row)
        print(f"  ring, body {row['body']:10s} poll {row['poll']:12s} warps {warps:2d}: {row['us_per_block']:6.2f}"
              + (f" (rel. error {row['rel_error_vs_launches']:.1e})" if not nop else ""))
    restore()

    print("one program reading float32 from L2 / L1: GB/s")
    out = torch.empty(8192, device=device)
    for kib in (128, 2048):
        n = kib * 256
        x = torch.randn(n, device=device)
        reps = max(1, 65536 // kib)
        for warps, tile in ((8, 8192), (16, 8192), (32, 8192)):
            us = wall_us(lambda: _stream_kernel[(1,)](x, out, n, reps, TILE=tile, num_warps=warps))
            gbps = n * 4 * reps / us / 1e3
            result["stream"].append(dict(KiB=kib, warps=warps, tile=tile, GBps=gbps, us_per_120KB=120 / gbps))
            print(f"  {kib:5d} KiB, {warps:2d} warps, tiles of {tile}: {gbps:6.1f} GB/s "
                  f"({120 / gbps:.2f} us per 120 KB)")

    print("8 blocks: a launch per block against one stacked launch, us per block")
    for label, blocks in (("outer 64x128", stage.down_blocks), ("middle 128x256", stage.inner.down_blocks)):
        dicts8, stack8, eps8 = stage_blocks(list(blocks))
        x = torch.randn(1, blocks[0].mixer.d_model, device=device)
        rows = [dict(blocks=label, path="a launch per block",
                     us_per_block=graph_time_us(lambda: chain_step(x, dicts8, eps8)) / len(dicts8))]
        for warps in (8, 16):
            rows.append(dict(blocks=label, path="stacked", warps=warps, us_per_block=graph_time_us(
                lambda: mamba_blocks_step_triton(x, stack8, num_warps=warps)) / len(dicts8)))
        for row in rows:
            print(f"  {label:15s} {row['path']:20s} warps {row.get('warps', '-')!s:3s}: {row['us_per_block']:6.2f}")
        result["stacked"] += rows
    path = save_result(result, "handoff_probe", file_label(result["device"]), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
