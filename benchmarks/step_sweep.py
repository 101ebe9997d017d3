"""Where a streamed sample's time goes, and which launch parameters the fused block step should use.

On CUDA, for the preset's model (default ``sc09-6m``, random weights, float32):

1. the kernels of one pooling period of the streaming loop, stepped eagerly under torch.profiler:
   GPU time and launches per sample, grouped by kernel (what the CUDA graph replays);
2. for every distinct block shape (hidden, channels) of the model and 1, 16 and 256 streams (``--streams``),
   the fused block step (``mamba_block_step_triton``) at each channel tile and warp count, up to 16 streams
   split (a program per stream and slice of channels) at each slice and warp count, and from 16 streams
   split with tiles of 16 or 32 streams a program, timed as 64 consecutive launches in a CUDA graph (the
   way the streaming loop runs them), each configuration first checked against the PyTorch reference;
3. the sampler: the one-launch Triton kernel against the PyTorch rule, 1 and 256 rows, in a graph.

Prints the tables and writes ``benchmarks/results/step_sweep_<gpu>.json``.

    python benchmarks/step_sweep.py
    python benchmarks/step_sweep.py --streams 16,256,1024 --paths rows --no-profile --out <file>  # one path
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict
from pathlib import Path

import torch

from mamba_audio.kernels import mamba_block_step
from mamba_audio.kernels.sampling import sample_tokens_ref
from mamba_audio.kernels.sampling.triton_sample import sample_tokens_triton
from mamba_audio.kernels.selective_scan.triton_step import block_step_config, mamba_block_step_triton
from mamba_audio.models.blocks import ResidualBlock
from mamba_audio.models.mixer import block_step_rms_norm
from mamba_audio.models.sampling import sampling_tensors
from mamba_audio.streaming import StreamingGenerator

from results_io import file_label, save_result  # benchmarks/results_io.py
from streaming import build_model  # benchmarks/streaming.py

LAUNCHES_PER_GRAPH = 64


def graph_time_us(fn, replays: int = 20) -> float:
    """Microseconds per call of ``fn``, captured LAUNCHES_PER_GRAPH times in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAUNCHES_PER_GRAPH):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / (replays * LAUNCHES_PER_GRAPH)


def profile_period(model, streams: int) -> dict:
    """GPU time and launch count per sample of each kernel in one eager pooling period."""
    generator = StreamingGenerator(model, max_streams=streams, cuda_graph=False)
    for seed in range(streams):
        generator.start(seed=seed)
    generator.advance()  # compiles everything
    period = generator.period
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        generator._run_period()
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name.split("(")[0][:60]
            per_kernel[name][0] += event.time_range.elapsed_us() / period
            per_kernel[name][1] += 1 / period
    rows = sorted(([name, us, n] for name, (us, n) in per_kernel.items()), key=lambda r: -r[1])
    return dict(streams=streams, gpu_us_per_sample=sum(r[1] for r in rows),
                launches_per_sample=sum(r[2] for r in rows),
                kernels=[dict(name=n, us_per_sample=us, launches_per_sample=c) for n, us, c in rows])


def block_args(block: ResidualBlock, batch: int):
    """The positional arguments of ``mamba_block_step`` for ``block`` with fresh random states, as the model's step
    passes them (``MambaMixer.block_step_tensors``), and the SSM's keyword tensors."""
    mixer, norm = block.mixer, block.norm
    state = mixer.allocate_inference_cache(batch)
    torch.nn.init.normal_(state.conv)
    torch.nn.init.normal_(state.ssm)
    with torch.no_grad():
        tensors = mixer.block_step_tensors(norm, state)
    x = torch.randn(batch, mixer.d_model, device=state.conv.device)
    positional = [tensors.pop(name) for name in ("norm_weight", "norm_bias", "in_proj_weight", "in_proj_bias",
                                                  "out_proj_weight", "out_proj_bias", "conv_state", "ssm_state",
                                                  "conv_weight", "conv_bias", "A", "D", "dt_bias")]
    return (x, *positional[:2], norm.eps, block_step_rms_norm(norm), *positional[2:]), tensors


def sweep_block(block: ResidualBlock, batch: int, paths: tuple[str, ...]) -> list[dict]:
    """Time each configuration (split, block_e, warps, block_m) of ``paths``: "single" (a program per stream),
    "split" (a program per stream and slice, up to 16 streams), "rows" (the split step with block_m streams a
    program, from 16 streams)."""
    hidden, dim = block.mixer.d_model, block.mixer.d_inner
    args, ssm = block_args(block, batch)
    rows = []
    configs = []
    if "single" in paths:  # tiles up to 16K weights (more spills whatever the warps)
        tiles = [e for e in (16, 32, 64, 128, 256, 512) if e <= triton_next_pow2(dim) and e * hidden <= 16384]
        configs += [(False, e, w, 1) for e, w in itertools.product(tiles, (2, 4, 8))]
    if "split" in paths and batch <= 16:  # a program per stream and slice of channels: for a few streams only
        slices = [e for e in (8, 16, 32, 64, 128) if e < dim and e * hidden <= 16384]
        configs += [(True, e, w, 1) for e, w in itertools.product(slices, (1, 2, 4))]
    if "rows" in paths and batch >= 16:
        configs += [(True, e, w, m) for m, e, w in itertools.product((16, 32), (16, 32, 64), (4, 8))
                    if m <= triton_next_pow2(batch) and e < dim]
        if "single" not in paths:  # what tiles of streams replace: a program per stream, its default tile
            block_e, warps, _, _ = block_step_config(hidden, dim, batch, split=False)
            configs.append((False, block_e, warps, 1))
    for split, block_e, warps, block_m in configs:
        options = dict(block_e=block_e, num_warps=warps, split=split, block_m=block_m)
        states = [t.clone() for t in args[9:11]]
        ref = mamba_block_step(*args[:9], *[t.clone() for t in states], *args[11:], **ssm, backend="reference")
        mine = mamba_block_step_triton(*args[:9], *[t.clone() for t in states], *args[11:], **ssm, **options)
        error = float((mine - ref).norm() / ref.norm())
        us = graph_time_us(lambda: mamba_block_step_triton(*args, **ssm, **options))
        rows.append(dict(hidden=hidden, channels=dim, streams=batch, **options, us_per_step=us, rel_error=error))
        path = "single" if not split else "split" if block_m == 1 else f"rows {block_m:2d}"
        print(f"  hidden {hidden:4d} channels {dim:4d} streams {batch:4d} {path:8s} "
              f"block_e {block_e:4d} warps {warps}: {us:8.2f} us (rel. error {error:.1e})", flush=True)
    return rows


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def sweep_sampler(vocab: int) -> list[dict]:
    rows = []
    for batch in (1, 256):
        logits = torch.randn(batch, vocab, device="cuda")
        uniforms = torch.rand(batch, device="cuda")
        for top_k, top_p in ((None, None), (50, 0.9)):
            settings = sampling_tensors(batch, 1.0, top_k, top_p, "cuda")
            same = torch.equal(sample_tokens_triton(logits, uniforms, *settings),
                               sample_tokens_ref(logits, uniforms, *settings))
            ours = graph_time_us(lambda: sample_tokens_triton(logits, uniforms, *settings))
            ref = graph_time_us(lambda: sample_tokens_ref(logits, uniforms, *settings))
            rows.append(dict(rows=batch, vocab=vocab, top_k=top_k, top_p=top_p, triton_us=ours, pytorch_us=ref,
                             same_tokens=same))
            print(f"  sampler rows {batch:4d} top_k {top_k} top_p {top_p}: triton {ours:.2f} us, "
                  f"PyTorch {ref:.2f} us, same tokens {same}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sc09-6m")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--streams", default="1,16,256", help="comma-separated stream counts of the block-step sweep")
    ap.add_argument("--paths", default="single,split,rows",
                    help="block-step paths to sweep: single, split (a program per stream), rows (tiles of streams)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of one pooling period")
    args = ap.parse_args()
    streams = tuple(int(n) for n in args.streams.split(","))
    paths = tuple(args.paths.split(","))
    if not set(paths) <= {"single", "split", "rows"}:
        raise SystemExit(f"--paths takes single, split and rows; got {args.paths}")
    if not torch.cuda.is_available():
        raise SystemExit("step_sweep.py measures CUDA kernels; no CUDA device here")
    name = torch.cuda.get_device_name()
    model = build_model(args.preset, torch.device("cuda"), torch.float32)
    print(f"{name}: preset {args.preset}", flush=True)

    profiles = []
    with torch.no_grad():
        for n in () if args.no_profile else (1, 256):
            profiles.append(profile_period(model, n))
            p = profiles[-1]
            print(f"\none period eagerly, {n} streams: {p['gpu_us_per_sample']:.1f} us of GPU time and "
                  f"{p['launches_per_sample']:.1f} launches per sample", flush=True)
            for k in p["kernels"][:12]:
                print(f"  {k['us_per_sample']:8.2f} us {k['launches_per_sample']:6.2f} x  {k['name']}")

        shapes, sweeps = {}, []
        for block in model.modules():
            if isinstance(block, ResidualBlock):
                shapes.setdefault((block.mixer.d_model, block.mixer.d_inner), block)
        print(f"\nblock shapes (hidden, channels): {list(shapes)}", flush=True)
        for (hidden, dim), block in shapes.items():
            for batch in streams:
                sweeps += sweep_block(block, batch, paths)
        print("\nfastest per shape (current default in brackets: channels per tile or slice, warps, split, block_m):")
        best = []
        for (hidden, dim) in shapes:
            for batch in streams:
                rows = [r for r in sweeps if (r["hidden"], r["channels"], r["streams"]) == (hidden, dim, batch)]
                if not rows:
                    continue
                fastest = min(rows, key=lambda r: r["us_per_step"])
                default = block_step_config(hidden, dim, batch)
                key = ("block_e", "num_warps", "split", "block_m")
                now = next((r for r in rows if tuple(r[k] for k in key) == default), None)
                now_us = now["us_per_step"] if now else float("nan")  # a default outside the sweep: not timed
                best.append(dict(fastest, default_us=now_us, default=list(default)))
                print(f"  hidden {hidden} channels {dim} streams {batch}: {'split, ' if fastest['split'] else ''}"
                      f"block_e {fastest['block_e']}, {fastest['num_warps']} warps, block_m {fastest['block_m']}, "
                      f"{fastest['us_per_step']:.2f} us [{default}: {now_us:.2f} us]")
        print()
        sampler = sweep_sampler(model.tokenizer.vocab_size)

    result = dict(device=name, command="python " + " ".join(sys.argv), preset=args.preset, dtype="float32",
                  torch=torch.__version__, launches_per_graph=LAUNCHES_PER_GRAPH, profiles=profiles,
                  block_step_sweep=sweeps, block_step_fastest=best, sampler=sampler)
    print(f"wrote {save_result(result, 'step_sweep', file_label(name), args.out)}")


if __name__ == "__main__":
    main()
