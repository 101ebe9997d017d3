"""Streaming synthesis benchmark: samples per second per stream and real-time factor.

Runs on whichever device it is given (default: CUDA when there is one). For a
preset (default ``sc09-6m``, randomly initialised: speed does not depend on the
weights) and each number of concurrent streams it

* starts that many unconditional streams in one ``StreamingGenerator`` (CUDA
  graph on CUDA, eager elsewhere), runs one untimed block (graph capture,
  Triton compilation), then times ``--blocks`` blocks of ``--block-samples``;
* reports samples per second per stream, the real-time factor (per-stream
  samples per second / sample rate; >= 1 keeps up with real time), aggregate
  samples per second, and the p50/p99 latency of a block (a chunk of audio);
* with one stream: the time to first audio of a stream started in a warm
  generator (its first chunk of ``--block-samples``), and plain eager stepping
  (``SaShiMiLM.generate`` with the PyTorch references for the block steps, the
  head and the sampling: no Triton, no graph) beside it;
* on CUDA, with 1 and 256 streams, the same generator with each run of a stage's
  residual blocks stepped in one ``mamba_blocks_step`` launch (``STACKED_STEP = True``)
  beside the default, where every block is its own launch (the ablation of the stacked step);
  with 1 and 16 streams, without programmatic dependent launches; past 16 streams, with tiles
  of streams a program instead of a program per stream (``triton_step.STREAM_TILES``, off by default);
* on CUDA, with 1, 16 and 256 streams, with every pooled stage's inner step in line on one CUDA stream
  (``sashimi.OVERLAP_INNER_STEP = False``) instead of beside the stage's up blocks on a second one;
* the smallest preset (``tiny``) on the CPU, one stream;

then prints a table and writes ``benchmarks/results/streaming_<device>.json``.
* on CUDA, the same network with every block stepped through mamba_ssm's
  ``Mamba.step`` (weights copied in) inside the same CUDA-graph generator (whose
  pooling, embedding, head and sampling stay ours): the baseline of issue 4 (needs
  mamba_ssm importable; ``--no-mamba-ssm`` skips it);

    python benchmarks/streaming.py                                   # GPU: 1, 16, 256, 1024 streams
    python benchmarks/streaming.py --device cpu --streams 1,4 --blocks 2 --block-samples 160
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import sys
import time
from pathlib import Path

import torch

from mamba_audio.kernels import head_sample_or_force, mamba_block_step, mamba_step
from mamba_audio.models import LMConfig, SaShiMiLM, backbone_preset
from mamba_audio.models import blocks as blocks_module
from mamba_audio.models import mixer as mixer_module
from mamba_audio.models import sashimi as sashimi_module
from mamba_audio.models import sampling as sampling_module
from mamba_audio.kernels.selective_scan import triton_step
from mamba_audio.streaming import StreamingGenerator

from results_io import file_label, save_result  # benchmarks/results_io.py


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> SaShiMiLM:
    torch.manual_seed(0)
    return SaShiMiLM(LMConfig(backbone=backbone_preset(preset))).to(device=device, dtype=dtype).eval()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def check_against_generate(model: SaShiMiLM, samples: int, cuda_graph: bool) -> dict:
    """Before timing: two streams (one with a prompt that is not a whole number of pooling periods) against
    ``generate`` with the same seeds, and on CUDA the graph against the eager generator and the stacked
    block step (``STACKED_STEP = True``) and the inner steps in line (``OVERLAP_INNER_STEP = False``) against
    the default.

    The generator must equal itself with and without its graph exactly (same kernels, same batch).
    Against ``generate`` (batch of 1, the prompt prefilled whole) logits differ in the last bits on a
    GPU, where a different batch size picks different GEMM kernels, and a rare token can flip; the
    check reports how many tokens agree before the first difference.
    """
    period = model.config.backbone.total_pool
    prompt = torch.randint(0, 256, (period + 5,), generator=torch.Generator().manual_seed(0))

    def streamed(graph: bool) -> list[torch.Tensor]:
        generator = StreamingGenerator(model, max_streams=3, block_samples=period * 4, cuda_graph=graph)
        a = generator.start(seed=1, chunk_samples=samples, max_samples=samples)
        b = generator.start(seed=2, prompt_tokens=prompt, top_p=0.95, chunk_samples=samples, max_samples=samples)
        return [next(a).tokens, next(b).tokens]

    ours = streamed(cuda_graph)
    expected = [model.generate(samples, seed=1)[0].cpu(),
                model.generate(samples, seed=2, prompt=prompt[None].to(model.head.weight.device), top_p=0.95)[0].cpu()]
    agree = [int((o != e).nonzero()[0, 0]) if (o != e).any() else samples for o, e in zip(ours, expected)]
    result = dict(samples=samples, tokens_agreeing_with_generate_before_first_difference=agree)
    if cuda_graph:
        result["cuda_graph_equals_eager"] = all(torch.equal(g, e) for g, e in zip(ours, streamed(False)))
        with stacked_step(True):
            stacked = streamed(True)
        agree = [int((o != e).nonzero()[0, 0]) if (o != e).any() else samples for o, e in zip(ours, stacked)]
        result["tokens_agreeing_with_stacked_step_before_first_difference"] = agree
        with module_switch(sashimi_module, "OVERLAP_INNER_STEP", not sashimi_module.OVERLAP_INNER_STEP):
            other = streamed(True)
        # the same kernels on the same inputs, only on two streams or one: equal, or the streams raced
        result["inner_step_overlap_equals_in_line"] = all(torch.equal(o, e) for o, e in zip(ours, other))
    return result


@contextlib.contextmanager
def module_switch(module, name: str, value):
    """Within: ``module.name`` is ``value`` (None: left as it is); restored after."""
    saved = getattr(module, name)
    setattr(module, name, saved if value is None else value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def stacked_step(enabled: bool | str):
    """Within: ``step_blocks`` stacks a stage's blocks into one launch (True), never (False), or on CUDA ("auto")."""
    return module_switch(blocks_module, "STACKED_STEP", enabled)


def time_generator(model: SaShiMiLM, streams: int, block_samples: int, blocks: int, cuda_graph: bool,
                   stacked: bool | str | None = None, dependent: bool | None = None,
                   stream_tiles: bool | None = None, overlap: bool | None = None) -> dict:
    """Per-stream and aggregate rates of ``streams`` concurrent streams, and block latencies. ``stacked`` as
    ``stacked_step``'s; ``dependent``: the block steps go as programmatic dependent launches where the GPU has
    them (True) or never (``triton_step.DEPENDENT_LAUNCHES``); ``stream_tiles``: past 16 streams, tiles of streams
    a program (True) or a program per stream (``triton_step.STREAM_TILES``); ``overlap``: the pooled stages'
    inner steps on a second CUDA stream (``sashimi.OVERLAP_INNER_STEP``); None for the library's defaults (the
    generator captures its graph, and so the choice, on its first block)."""
    device = model.head.weight.device
    with stacked_step(stacked), module_switch(triton_step, "DEPENDENT_LAUNCHES", dependent), \
            module_switch(triton_step, "STREAM_TILES", stream_tiles), \
            module_switch(sashimi_module, "OVERLAP_INNER_STEP", overlap):
        row = _time_generator(model, streams, block_samples, blocks, cuda_graph, device)
        row["dependent_launches"] = triton_step.dependent_launches(device)
        row["stream_tiles"] = device.type == "cuda" and triton_step.STREAM_TILES and streams > 16
        row["inner_step_overlap"] = device.type == "cuda" and sashimi_module.OVERLAP_INNER_STEP
        return row


def _time_generator(model, streams, block_samples, blocks, cuda_graph, device) -> dict:
    generator = StreamingGenerator(model, max_streams=streams, block_samples=block_samples, cuda_graph=cuda_graph)
    for seed in range(streams):
        generator.start(seed=seed, chunk_samples=block_samples)
    generator.advance()  # untimed: graph capture, kernel compilation, allocator warm-up
    latencies = []
    for _ in range(blocks):
        sync(device)
        start = time.perf_counter()
        generator.advance()  # ends with the block's tokens on the host: a full synchronisation
        latencies.append(time.perf_counter() - start)
    per_stream = blocks * block_samples / sum(latencies)
    row = dict(streams=streams, per_stream_samples_per_s=per_stream, aggregate_samples_per_s=per_stream * streams,
               slowest_stream_realtime_factor=per_stream / model.config.sample_rate,
               chunk_latency_ms=dict(p50=1e3 * percentile(latencies, 50), p99=1e3 * percentile(latencies, 99)),
               cuda_graph=cuda_graph, stacked_blocks=blocks_module.stacks_blocks(device))
    if streams == 1:  # a new stream in the warm generator: from start() to its first chunk in hand
        generator.active_streams[0].stop()
        sync(device)
        start = time.perf_counter()
        next(generator.start(seed=streams, chunk_samples=block_samples))
        row["time_to_first_audio_ms"] = 1e3 * (time.perf_counter() - start)
    return row


@contextlib.contextmanager
def reference_step():
    """Blocks, mixers, the head and the sampler step through the PyTorch references (plain eager PyTorch, no
    Triton)."""
    originals = mixer_module.mamba_step, mixer_module.mamba_block_step, sampling_module.head_sample_or_force
    mixer_module.mamba_step = functools.partial(mamba_step, backend="reference")
    mixer_module.mamba_block_step = functools.partial(mamba_block_step, backend="reference")
    sampling_module.head_sample_or_force = functools.partial(head_sample_or_force, backend="reference")
    try:
        with stacked_step(False):
            yield
    finally:
        mixer_module.mamba_step, mixer_module.mamba_block_step, sampling_module.head_sample_or_force = originals


def make_mamba_ssm_importable(sdist: Path | None, build_root: Path) -> None:
    """Import mamba_ssm as installed, or build it from its sdist (as benchmarks/scan.py does) and put it on the path."""
    try:
        import mamba_ssm.modules.mamba_simple  # noqa: F401
        return
    except ImportError:
        if sdist is None:
            raise SystemExit("mamba_ssm is not importable: pass --mamba-sdist (or --no-mamba-ssm)")
    sys.path.insert(0, str(Path(__file__).parent))
    from scan import build_mamba_ssm, import_mamba_selective_scan

    import_mamba_selective_scan(build_mamba_ssm(sdist, build_root))  # the package, without its model zoo


@contextlib.contextmanager
def mamba_ssm_step(model: SaShiMiLM):
    """Every residual block steps through mamba_ssm's ``Mamba.step`` (its Triton ``selective_state_update``)
    with this block's weights copied in: the same network, stepped the way mamba_ssm steps it."""
    from mamba_ssm.modules.mamba_simple import Mamba

    from mamba_audio.models.blocks import ResidualBlock

    patched = []
    for block in model.modules():
        if not isinstance(block, ResidualBlock) or block.mlp is not None:
            continue
        ours = block.mixer
        theirs = Mamba(ours.d_model, d_state=ours.d_state, d_conv=ours.config.d_conv, expand=ours.config.expand,
                       dt_rank=ours.dt_rank, conv_bias=ours.conv1d.bias is not None, bias=ours.config.bias,
                       layer_idx=0, device=ours.in_proj.weight.device, dtype=ours.in_proj.weight.dtype)
        with torch.no_grad():
            for name in ("in_proj", "conv1d", "x_proj", "out_proj"):
                getattr(theirs, name).load_state_dict(getattr(ours, name).state_dict())
            theirs.dt_proj.weight.copy_(ours.dt_proj.weight)
            theirs.dt_proj.bias.copy_(ours.dt_bias)
            theirs.A_log.copy_(ours.A_log)
            theirs.D.copy_(ours.D)

        def step(x, state, norm=block.norm, theirs=theirs):
            out, _, _ = theirs.step(norm(x)[:, None], state.mixer.conv, state.mixer.ssm)
            return x + out[:, 0]

        block.step = step
        patched.append(block)
    try:
        yield
    finally:
        for block in patched:
            del block.step


def time_mamba_ssm_baseline(model: SaShiMiLM, block_samples: int, blocks: int) -> dict:
    """One stream through mamba_ssm's Mamba.step in a CUDA graph, and whether its first tokens match ours.
    Every block steps through its own (patched) ``step``: a stacked step would bypass them."""
    with mamba_ssm_step(model), stacked_step(False):
        row = time_generator(model, 1, block_samples, blocks, cuda_graph=True, stacked=False)
        generator = StreamingGenerator(model, max_streams=1, block_samples=block_samples, cuda_graph=True)
        theirs = next(generator.start(seed=7, chunk_samples=128, max_samples=128)).tokens
    generator = StreamingGenerator(model, max_streams=1, block_samples=block_samples, cuda_graph=True)
    ours = next(generator.start(seed=7, chunk_samples=128, max_samples=128)).tokens
    differ = (ours != theirs).nonzero()
    row["tokens_agreeing_with_ours_before_first_difference"] = int(differ[0, 0]) if len(differ) else 128
    row["dependent_launches"] = None  # its blocks step through mamba_ssm, not our kernels
    return row


def time_eager_generate(model: SaShiMiLM, samples: int) -> float:
    """Samples per second of one stream through ``generate`` with the reference step: the plain eager baseline."""
    device = model.head.weight.device
    with reference_step():
        model.generate(8, seed=0)  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(samples, seed=0)
        sync(device)
    return samples / (time.perf_counter() - start)


def device_label(device: torch.device) -> tuple[str, str]:
    """(human-readable name, file-name label) of the device."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    label = "cpu" if device.type == "cpu" else file_label(name)
    return name, label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sc09-6m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--streams", default=None, help="comma-separated stream counts (default 1,16,256,1024 on "
                                                    "CUDA, 1,4 on the CPU)")
    ap.add_argument("--blocks", type=int, default=None, help="timed blocks per configuration (default 20 CUDA, 2 CPU)")
    ap.add_argument("--block-samples", type=int, default=320, help="samples per block: a chunk (320 = 20 ms)")
    ap.add_argument("--eager-samples", type=int, default=None, help="samples of the eager baseline")
    ap.add_argument("--no-eager-graph-comparison", action="store_true",
                    help="on CUDA, skip timing the generator without its CUDA graph")
    ap.add_argument("--no-mamba-ssm", action="store_true",
                    help="on CUDA, skip the baseline through mamba_ssm's Mamba.step (needs mamba_ssm importable)")
    ap.add_argument("--mamba-sdist", type=Path, default=None, help="build mamba_ssm from this sdist if needed")
    ap.add_argument("--build-root", type=Path, default=Path("/tmp/mamba_ssm_build"))
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default 1 on the CPU: a step's operations are too small to share)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    on_cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    streams = [int(s) for s in (args.streams or ("1,16,256,1024" if on_cuda else "1,4")).split(",")]
    blocks = args.blocks or (20 if on_cuda else 2)
    name, label = device_label(device)
    model = build_model(args.preset, device, dtype)
    rate = model.config.sample_rate
    print(f"{name}: preset {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
          f"{args.dtype}, {rate} Hz, blocks of {args.block_samples} samples", flush=True)

    checks = check_against_generate(model, 128, cuda_graph=on_cuda)
    print(f"checks: {checks}", flush=True)
    rows = []
    for n in streams:
        rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=on_cuda))
        if on_cuda and n == 1 and not args.no_eager_graph_comparison:
            rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=False))
        if on_cuda and n in (1, 256):  # the ablation: each stage's blocks in one launch
            rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=True, stacked=True))
        if on_cuda and n in (1, 16) and triton_step.dependent_launches(device):  # the ablation: no dependent launches
            rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=True, dependent=False))
        if on_cuda and n > 16:  # the ablation: tiles of streams a program, or a program per stream
            rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=True,
                                       stream_tiles=not triton_step.STREAM_TILES))
        if on_cuda and n in (1, 16, 256):  # the ablation: the inner steps in line, or beside the up blocks
            rows.append(time_generator(model, n, args.block_samples, blocks, cuda_graph=True,
                                       overlap=not sashimi_module.OVERLAP_INNER_STEP))
        for row in rows[-5:]:
            if row["streams"] == n:
                print(row, flush=True)
    baseline = None
    if on_cuda and not args.no_mamba_ssm:
        make_mamba_ssm_importable(args.mamba_sdist, args.build_root)
        baseline = time_mamba_ssm_baseline(model, args.block_samples, blocks)
        print(f"mamba_ssm Mamba.step baseline: {baseline}", flush=True)
    eager = time_eager_generate(model, args.eager_samples or (2000 if on_cuda else args.block_samples))
    tiny = time_generator(build_model("tiny", torch.device("cpu"), torch.float32), 1, args.block_samples, blocks,
                          cuda_graph=False)

    ours = [r for r in rows if r["cuda_graph"] == on_cuda and r["stacked_blocks"] == blocks_module.stacks_blocks(device)
            and r["dependent_launches"] == triton_step.dependent_launches(device)
            and r["stream_tiles"] == (on_cuda and triton_step.STREAM_TILES and r["streams"] > 16)
            and r["inner_step_overlap"] == (on_cuda and sashimi_module.OVERLAP_INNER_STEP)]
    single = next(r for r in ours if r["streams"] == 1) if any(r["streams"] == 1 for r in ours) else None
    realtime = [r["streams"] for r in ours if r["slowest_stream_realtime_factor"] >= 1]
    result = dict(
        device=name, command="python " + " ".join(sys.argv), preset=args.preset, dtype=args.dtype, sample_rate=rate,
        block_samples=args.block_samples, timed_blocks=blocks, torch=torch.__version__,
        cpu_threads=torch.get_num_threads(),
        cpu_only=not on_cuda, load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        ours_single_stream_samples_per_s=single and single["per_stream_samples_per_s"],
        mamba_ssm_step_single_stream_samples_per_s=baseline and baseline["per_stream_samples_per_s"],
        mamba_ssm_baseline=baseline,
        eager_single_stream_samples_per_s=eager,
        time_to_first_audio_ms=single and single["time_to_first_audio_ms"],
        chunk_latency_ms=single and single["chunk_latency_ms"],
        concurrency=[dict(streams=r["streams"], aggregate_samples_per_s=r["aggregate_samples_per_s"],
                          slowest_stream_realtime_factor=r["slowest_stream_realtime_factor"]) for r in ours],
        max_realtime_streams=max(realtime) if realtime else 0,  # among the counts measured
        cpu_smallest_preset_samples_per_s=tiny["per_stream_samples_per_s"],
        checks=checks,
        rows=rows,
    )

    print(f"\n{'streams':>8} {'graph':>6} {'stack':>6} {'PDL':>6} {'tiles':>6} {'fork':>6} {'samples/s/stream':>17} "
          f"{'RTF':>8} {'aggregate/s':>12} {'chunk p50 ms':>13} {'p99 ms':>9}")
    for r in rows:
        print(f"{r['streams']:>8} {str(r['cuda_graph']):>6} {str(r['stacked_blocks']):>6} "
              f"{str(r['dependent_launches']):>6} {str(r['stream_tiles']):>6} {str(r['inner_step_overlap']):>6} "
              f"{r['per_stream_samples_per_s']:>17.1f} "
              f"{r['slowest_stream_realtime_factor']:>8.4f} {r['aggregate_samples_per_s']:>12.1f} "
              f"{r['chunk_latency_ms']['p50']:>13.1f} {r['chunk_latency_ms']['p99']:>9.1f}")
    first_audio = result["time_to_first_audio_ms"]
    print(f"eager generate (reference step), 1 stream: {eager:.1f} samples/s; time to first audio: "
          + ("not measured" if first_audio is None else f"{first_audio:.1f} ms")
          + f"; tiny preset on the CPU, 1 stream: {result['cpu_smallest_preset_samples_per_s']:.1f} samples/s")

    out = save_result(result, "streaming", label, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
