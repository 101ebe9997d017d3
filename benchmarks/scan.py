"""Selective scan benchmark: our Triton scan beside mamba_ssm's CUDA kernel and the PyTorch references.

Runs on a CUDA GPU. At the shapes of issue 3 (bf16 u, delta, z, B, C; fp32 A,
D, delta_bias; delta_softplus; z gating) it

* checks ours against mamba_ssm's ``selective_scan_fn`` (output and every gradient);
* times forward and forward+backward (median of ``triton.testing.do_bench``), ours with its default
  forward (the walk or the tiles, as ``choose_config`` picks) and with the tiled forward beside it
  (``tiled_ms``), and the chunked PyTorch scan's
  forward (the sequential oracle on the first shape only);
* with ``--candidate walk_refine=4`` (config keys of ``choose_config``), also ours with those keys
  (``candidate_ms``), timed in the same run as the defaults it may replace;
* measures the host time of one call (``ours_host_us``: Python and launches, the GPU left to run behind);
* measures the peak memory of one forward+backward above the inputs;
* prints a table and writes ``benchmarks/results/scan_<gpu>.json``.

Effective GB/s counts the fewest bytes: forward reads u, delta, z, B, C and writes y;
forward+backward adds reading them and dy again and writing du, d delta, dz, dB, dC.

mamba_ssm is built from its PyPI source distribution when it is not importable:

    python benchmarks/scan.py --mamba-sdist .device/mamba_ssm-2.3.2.post1.tar.gz
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import torch

from results_io import file_label, save_result  # benchmarks/results_io.py

SHAPES = [  # (B, D, L, N)
    (16, 128, 16384, 16),
    (16, 256, 4096, 16),
    (16, 512, 1024, 16),
    (1, 128, 262144, 16),
    (8, 128, 131072, 16),
    (8, 2048, 2048, 16),
]
# with --sweep --sweep-fwd, launch parameters tried beside the defaults of choose_config (logged; the rows time the
# defaults). Forward alone, then forward+backward (T is shared; BD/num_warps are the forward's tiles,
# bwd_BD/bwd_num_warps the backward's); unset keys keep choose_config's value.
SWEEP = [
    dict(T=256, BD=4, num_warps=4),
    dict(T=256, BD=2, num_warps=1),
    dict(T=256, BD=4, num_warps=2),
    dict(T=128, BD=4, num_warps=1),
    dict(T=128, BD=8, num_warps=4),
    dict(T=512, BD=2, num_warps=4),
]
# the backward's switches (version 8; choose_config's bwd_*), at each shape's default T and tiles unless named.
# The first entry is the path timed before version 8; each candidate's gradients are checked against the
# defaults' (max relative error logged; over 1e-2 it counts as failed).
SWEEP_BWD = [
    dict(bwd_flip=False, bwd_reload=False, bwd_early_dbc=True, bwd_scan2=False),  # versions 5-7
    dict(bwd_flip=True, bwd_reload=False),
    dict(bwd_flip=True, bwd_reload=True),  # choose_config reloads at T=256 only (version 8 sweep)
    dict(bwd_flip=True, bwd_reload=True, bwd_early_dbc=False),
    dict(bwd_flip=True, bwd_reload=True, bwd_scan2=True),
    dict(bwd_flip=True, bwd_reload=True, bwd_maxnreg=168),
    dict(T=128, bwd_flip=True, bwd_reload=True),
    dict(T=256, bwd_flip=True, bwd_reload=True),
]
SEQ_CHECK_SHAPE = (2, 64, 4096, 16)  # packed sequences: ours against the chunked scan in float32, with gradients


# ----------------------------------------------------------------------------- mamba_ssm


def build_mamba_ssm(sdist: Path, build_root: Path) -> Path:
    """Unpack mamba_ssm's sdist, keep only this GPU's architecture, build its CUDA extension in place."""
    done = list(build_root.glob("mamba_ssm-*/selective_scan_cuda*.so"))
    if done:  # built earlier on this machine
        return done[0].parent
    build_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(build_root)
    src = next(p for p in build_root.iterdir() if p.name.startswith("mamba_ssm-"))
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    setup = (src / "setup.py").read_text()
    lines = setup.splitlines()
    keep = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        drop = ('"-gencode"' in line and "arch=compute_" in nxt and f"compute_{arch}," not in nxt) or (
            "arch=compute_" in line and f"compute_{arch}," not in line)
        # a dropped flag becomes `pass`, so the if-blocks around it stay valid Python
        keep.append(line[: len(line) - len(line.lstrip())] + "pass" if drop else line)
    (src / "setup.py").write_text("\n".join(keep) + "\n")
    env = dict(os.environ, MAMBA_FORCE_BUILD="TRUE", MAX_JOBS="16", NVCC_THREADS="4")
    t0 = time.time()
    log = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                         capture_output=True, text=True)
    if log.returncode != 0:
        print(log.stdout[-3000:], log.stderr[-5000:])
        raise RuntimeError("mamba_ssm build failed")
    print(f"built mamba_ssm for sm_{arch} in {time.time() - t0:.0f} s")
    return src


def import_mamba_selective_scan(src: Path | None):
    """mamba_ssm's selective_scan_fn without importing the rest of its package (its models need more)."""
    if src is not None:
        sys.path.insert(0, str(src))
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = [str(src / "mamba_ssm")]
        sys.modules["mamba_ssm"] = pkg
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


# ----------------------------------------------------------------------------- measuring


def bench_ms(fn, warmup=25, rep=100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def copy_bandwidth_GBps() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e6


def make_inputs(batch, dim, length, n_state, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = torch.bfloat16

    def randn(*shape):
        return torch.randn(*shape, generator=g, device="cuda")

    dt = torch.exp(torch.rand(dim, generator=g, device="cuda") * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=randn(batch, dim, length).to(bf),
        delta=(0.5 * randn(batch, dim, length)).to(bf),
        A=-torch.arange(1, n_state + 1, device="cuda", dtype=torch.float32).repeat(dim, 1)
        * (1 + 0.1 * torch.rand(dim, n_state, generator=g, device="cuda")),
        B=randn(batch, n_state, length).to(bf),
        C=randn(batch, n_state, length).to(bf),
        D=randn(dim),
        z=randn(batch, dim, length).to(bf),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # inverse softplus of dt in [1e-3, 0.1]
    )


GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def ours_fn(config=None, seq_idx=None):
    from mamba_audio.kernels.selective_scan.triton_scan import selective_scan_triton

    def fn(x):
        return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                     True, seq_idx=seq_idx, config=config)
    return fn


def theirs_fn(selective_scan_fn):
    def fn(x):
        return selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                 delta_softplus=True)
    return fn


def fwd_bwd(fn, x, dout):
    leaves = [x[k] for k in GRAD_NAMES]
    y = fn(x)
    return torch.autograd.grad(y, leaves, dout)


def host_us(fn, n=50) -> float:
    """Host time of one call (us): n calls queued without waiting for the GPU."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def with_grad(x):
    return {k: v.detach().requires_grad_(True) for k, v in x.items()}


def peak_MiB(thunk) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = thunk()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def kernel_breakdown(thunk) -> dict:
    """GPU time per kernel name (ms) over one call of thunk, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    thunk()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        thunk()
        torch.cuda.synchronize()
    times = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t:
            times[ev.key[:60]] = round(t / 1e3, 4)
    return dict(sorted(times.items(), key=lambda kv: -kv[1])[:8])


def packed_sequences_check() -> dict:
    """seq_idx on the GPU: ours (float32) against the chunked scan, output, final state and every gradient."""
    from mamba_audio.kernels.selective_scan import selective_scan_chunked
    from mamba_audio.kernels.selective_scan.triton_scan import selective_scan_triton

    Bn, Dn, Ln, Nn = SEQ_CHECK_SHAPE
    x = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs(Bn, Dn, Ln, Nn, seed=99).items()}
    x["initial_state"] = torch.randn(Bn, Dn, Nn, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(5)
    lengths = torch.randint(1, Ln // 3, (Bn, 16), generator=g, device="cuda").cumsum(1)
    seq_idx = (torch.arange(Ln, device="cuda")[None, :, None] >= lengths[:, None, :]).sum(-1).to(torch.int32)
    dout = torch.randn(Bn, Dn, Ln, device="cuda")
    dfinal = torch.randn(Bn, Dn, Nn, device="cuda")
    names = GRAD_NAMES + ["initial_state"]
    outs = []
    for fn in (selective_scan_triton, selective_scan_chunked):
        xg = with_grad(x)
        y, final = fn(xg["u"], xg["delta"], xg["A"], xg["B"], xg["C"], xg["D"], xg["z"], xg["delta_bias"], True,
                      xg["initial_state"], True, seq_idx=seq_idx)
        grads = torch.autograd.grad((y * dout).sum() + (final * dfinal).sum(), [xg[k] for k in names])
        outs.append([y, final, *grads])
    errs = {k: rel_err(a, b) for k, a, b in zip(["y", "final"] + ["d" + n for n in names], *outs)}
    return dict(shape=list(SEQ_CHECK_SHAPE), sequences_per_row=int(seq_idx[:, -1].min()) + 1,
                rel_err_vs_chunked_fp32=errs)


# ----------------------------------------------------------------------------- main


def parse_config(text: str) -> dict:
    """"walk_refine=4,walk=true" -> {"walk_refine": 4, "walk": True} (the values choose_config takes)."""
    config = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        value, words = value.strip().lower(), {"true": True, "false": False, "none": None}
        config[key.strip()] = words[value] if value in words else int(value)
    return config


def run_header(name, copy_GBps, sms) -> dict:
    """What every result file of this script starts with: the machine, the versions, the command."""
    return dict(device=name, copy_GBps=copy_GBps, sms=sms, torch=torch.__version__,
                triton=__import__("triton").__version__, command="python " + " ".join(sys.argv))


def write_result(args, name, gpu, copy_GBps, sms, rows, checks, log) -> Path:
    """The JSON result (rewritten after every shape, so a run cut short still leaves one)."""
    result = dict(run_header(name, copy_GBps, sms), **({"candidate": args.candidate} if args.candidate else {}),
                  rows=rows, checks=checks, log=log)
    return save_result(result, "scan", gpu, args.out)


def write_sweep(name, gpu, copy_GBps, sms, sweep_rows) -> Path:
    """The backward sweep's timings, one row per shape and candidate: benchmarks/results/scan_sweep_<gpu>.json."""
    return save_result(dict(run_header(name, copy_GBps, sms), rows=sweep_rows), "scan_sweep", gpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mamba-sdist", type=Path, default=None, help="build mamba_ssm from this sdist if needed")
    ap.add_argument("--build-root", type=Path, default=Path("/tmp/mamba_ssm_build"))
    ap.add_argument("--shapes", type=str, default="all", help="'all' or indices like 0,3")
    ap.add_argument("--sweep", action="store_true", help="try the candidate launch parameters per shape")
    ap.add_argument("--sweep-only", action="store_true", help="only the sweep (no mamba_ssm, no rows); log to $OUT")
    ap.add_argument("--sweep-fwd", action="store_true", help="with --sweep, also the forward candidates (SWEEP)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-reference", action="store_true", help="skip the PyTorch references")
    ap.add_argument("--candidate", type=parse_config, default=None,
                    help="config keys to time beside the defaults, as walk_refine=4,walk_BD=32")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name()
    gpu = file_label(name)
    src = None
    args.sweep = args.sweep or args.sweep_only
    try:
        import selective_scan_cuda  # noqa: F401
    except ImportError:
        if args.mamba_sdist is None and not args.sweep_only:
            raise SystemExit("mamba_ssm is not importable: pass --mamba-sdist")
        if not args.sweep_only:
            src = build_mamba_ssm(args.mamba_sdist, args.build_root)
    their_scan = None if args.sweep_only else theirs_fn(import_mamba_selective_scan(src))

    from mamba_audio.kernels.selective_scan import selective_scan_chunked, selective_scan_ref
    from mamba_audio.kernels.selective_scan.triton_scan import choose_config

    copy_GBps = copy_bandwidth_GBps()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{name}: {sms} SMs, device-to-device copy {copy_GBps:.0f} GB/s (read + write)")
    shapes = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
    rows, checks, log, sweep_rows = [], [], [], []
    if not args.sweep_only:
        packed = packed_sequences_check()
        checks.append(packed)
        log.append(f"packed sequences {packed}")
        print(log[-1], flush=True)
    for si, (Bn, Dn, Ln, Nn) in enumerate(shapes):
        x = make_inputs(Bn, Dn, Ln, Nn, seed=si)
        xg = with_grad(x)
        dout = torch.randn(Bn, Dn, Ln, device="cuda").to(torch.bfloat16)
        fwd_bytes = (4 * Bn * Dn * Ln + 2 * Bn * Nn * Ln) * 2
        fb_bytes = fwd_bytes + (4 * Bn * Dn * Ln + 2 * Bn * Nn * Ln) * 2 + (3 * Bn * Dn * Ln + 2 * Bn * Nn * Ln) * 2
        default_fwd = choose_config(Bn, Dn, Ln, Nn, 1, sms, training=False)
        default_fb = choose_config(Bn, Dn, Ln, Nn, 1, sms, training=True)

        # the rows time choose_config's defaults; a sweep is logged beside them
        sweep_fwd = sweep_fb = None
        if args.sweep and args.sweep_fwd:
            timings = []
            for c in SWEEP:
                try:
                    ms = bench_ms(lambda: ours_fn(c)(x), warmup=5, rep=30)
                except Exception as e:  # a candidate that does not compile is skipped, and said so
                    ms = float("inf")
                    log.append(f"{(Bn, Dn, Ln, Nn)} fwd {c}: {type(e).__name__}: {str(e)[:200]}")
                timings.append((ms, c))
            log.append(f"{(Bn, Dn, Ln, Nn)} fwd sweep: " + ", ".join(f"{c}: {ms:.3f}" for ms, c in timings))
            print(log[-1], flush=True)
            sweep_fwd = min(timings, key=lambda p: p[0])
        if args.sweep:
            t_sweep = time.time()
            g_default = fwd_bwd(ours_fn(None), xg, dout)
            timings = []
            for c in SWEEP_BWD:
                try:
                    g_c = fwd_bwd(ours_fn(c), xg, dout)
                    err = max(rel_err(a, b) for a, b in zip(g_c, g_default))
                    del g_c
                    ms = bench_ms(lambda: fwd_bwd(ours_fn(c), xg, dout), warmup=5, rep=30)
                    if not err < 1e-2:
                        log.append(f"{(Bn, Dn, Ln, Nn)} bwd {c}: gradients differ from the defaults' (max rel err "
                                   f"{err:.1e}, {ms:.3f} ms): failed")
                        ms = float("inf")
                except Exception as e:
                    ms, err = float("inf"), float("nan")
                    log.append(f"{(Bn, Dn, Ln, Nn)} bwd {c}: {type(e).__name__}: {str(e)[:200]}")
                timings.append((ms, c, err))
                sweep_rows.append(dict(shape=[Bn, Dn, Ln, Nn], candidate=c,
                                       fwd_bwd_ms=ms if ms < float("inf") else None,  # None: failed
                                       max_rel_err_vs_defaults=err if err == err else None))
            del g_default
            write_sweep(name, gpu, copy_GBps, sms, sweep_rows)
            log.append(f"{(Bn, Dn, Ln, Nn)} fwd+bwd sweep ({time.time() - t_sweep:.0f} s): "
                       + ", ".join(f"{c}: {ms:.3f} (err {err:.0e})" for ms, c, err in timings))
            print(log[-1], flush=True)
            sweep_fb = min(timings, key=lambda p: p[0])[:2]
        if args.sweep_only:
            if os.environ.get("OUT"):
                (Path(os.environ["OUT"]) / "sweep.log").write_text("\n".join(log) + "\n")
            continue
        ours_fwd = ours_fb = ours_fn(None)
        tiled = ours_fn(dict(walk=False))
        candidate = ours_fn(args.candidate) if args.candidate else None

        # correctness against mamba_ssm at this shape
        y_ours = ours_fwd(x)
        y_theirs = their_scan(x)
        g_ours = fwd_bwd(ours_fb, xg, dout)
        g_theirs = fwd_bwd(their_scan, xg, dout)
        g_again = fwd_bwd(ours_fb, xg, dout)
        errs = {"y": rel_err(y_ours, y_theirs)}
        errs.update({"d" + k: rel_err(a, b) for k, a, b in zip(GRAD_NAMES, g_ours, g_theirs)})
        deterministic = all(torch.equal(a, b) for a, b in zip(g_ours, g_again))
        checks.append(dict(shape=[Bn, Dn, Ln, Nn], rel_err_vs_mamba_ssm=errs, deterministic=deterministic))
        del y_ours, y_theirs, g_ours, g_theirs, g_again

        t_ours = bench_ms(lambda: ours_fwd(x))
        t_theirs = bench_ms(lambda: their_scan(x))
        tb_ours = bench_ms(lambda: fwd_bwd(ours_fb, xg, dout))
        tb_theirs = bench_ms(lambda: fwd_bwd(their_scan, xg, dout))
        t_tiled = bench_ms(lambda: tiled(x))
        tb_tiled = bench_ms(lambda: fwd_bwd(tiled, xg, dout))
        if candidate:
            cand = dict(candidate_ms=bench_ms(lambda: candidate(x)))
            cand_b = dict(candidate_ms=bench_ms(lambda: fwd_bwd(candidate, xg, dout)))
        else:
            cand = cand_b = {}
        h_ours, hb_ours = host_us(lambda: ours_fwd(x)), host_us(lambda: fwd_bwd(ours_fb, xg, dout), n=20)
        m_ours = peak_MiB(lambda: fwd_bwd(ours_fb, xg, dout))
        m_theirs = peak_MiB(lambda: fwd_bwd(their_scan, xg, dout))

        ref = {}
        if not args.no_reference:
            try:
                with torch.no_grad():
                    ref["chunked_fwd_ms"] = bench_ms(lambda: selective_scan_chunked(
                        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True),
                        warmup=1, rep=5)
            except torch.OutOfMemoryError:
                ref["chunked_fwd_ms"] = None
            torch.cuda.empty_cache()
            if si == 0:
                with torch.no_grad():
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                       x["delta_bias"], True)
                    end.record()
                    torch.cuda.synchronize()
                    ref["sequential_fwd_ms"] = start.elapsed_time(end)
                torch.cuda.empty_cache()

        try:
            breakdown = kernel_breakdown(lambda: fwd_bwd(ours_fb, xg, dout))
        except Exception as e:  # the profiler is a convenience: never lose the run to it
            breakdown = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        checks[-1]["fwd_bwd_kernels_ms"] = breakdown
        log.append(f"{(Bn, Dn, Ln, Nn)} fwd+bwd kernels (ms): {breakdown}")
        print(log[-1], flush=True)
        if si == 0:  # what packed sequences cost: 64 sequences per row, same shape
            seq_idx = (torch.arange(Ln, device="cuda") * 64 // Ln).to(torch.int32).expand(Bn, Ln).contiguous()
            ours_seq = ours_fn(None, seq_idx)
            checks[-1]["fwd_bwd_ms_with_64_sequences_per_row"] = bench_ms(lambda: fwd_bwd(ours_seq, xg, dout))

        if sweep_fwd:
            ref.update(sweep_best_ms=sweep_fwd[0], sweep_best_config=sweep_fwd[1])
        rows.append(dict(shape=[Bn, Dn, Ln, Nn], **{"pass": "fwd"}, ours_ms=t_ours, mamba_ssm_ms=t_theirs,
                         speedup=t_theirs / t_ours, ours_GBps=fwd_bytes / t_ours / 1e6,
                         mamba_ssm_GBps=fwd_bytes / t_theirs / 1e6, tiled_ms=t_tiled, ours_host_us=h_ours,
                         config=default_fwd, **cand, **ref))
        rows.append(dict(shape=[Bn, Dn, Ln, Nn], **{"pass": "fwd_bwd"}, ours_ms=tb_ours, mamba_ssm_ms=tb_theirs,
                         speedup=tb_theirs / tb_ours, ours_GBps=fb_bytes / tb_ours / 1e6,
                         mamba_ssm_GBps=fb_bytes / tb_theirs / 1e6, ours_peak_MiB=m_ours, mamba_ssm_peak_MiB=m_theirs,
                         tiled_ms=tb_tiled, ours_host_us=hb_ours, config=default_fb, **cand_b,
                         **(dict(sweep_best_ms=sweep_fb[0], sweep_best_config=sweep_fb[1]) if sweep_fb else {})))
        print(f"{(Bn, Dn, Ln, Nn)} fwd {t_ours:.3f} vs {t_theirs:.3f} ms; fwd+bwd {tb_ours:.3f} vs {tb_theirs:.3f} ms; "
              f"max rel err {max(errs.values()):.2e}; deterministic {deterministic}", flush=True)
        del x, xg, dout
        torch.cuda.empty_cache()
        write_result(args, name, gpu, copy_GBps, sms, rows, checks, log)

    if args.sweep_only:
        return
    out = write_result(args, name, gpu, copy_GBps, sms, rows, checks, log)
    print("\n".join(log[-40:]))
    print(f"\ncopy {copy_GBps:.0f} GB/s; eff. GB/s = fewest bytes / time; speedup = mamba_ssm ms / ours ms; "
          "tiled = ours with the tiled forward; host = one call's host time")
    hdr = (f"{'shape (B,D,L,N)':>24} {'pass':>8} {'ours ms':>9} {'mamba ms':>9} {'speedup':>8} {'ours GB/s':>9} "
           f"{'%copy':>6} {'ours MiB':>9} {'mamba MiB':>9} {'tiled ms':>9} {'host us':>8} {'chunked ms':>10} "
           f"{'sweep ms':>9}")
    print(hdr)
    for r in rows:
        print(f"{str(tuple(r['shape'])):>24} {r['pass']:>8} {r['ours_ms']:9.3f} {r['mamba_ssm_ms']:9.3f} "
              f"{r['speedup']:8.2f} {r['ours_GBps']:9.0f} {100 * r['ours_GBps'] / copy_GBps:6.1f} "
              f"{r.get('ours_peak_MiB', float('nan')):9.0f} {r.get('mamba_ssm_peak_MiB', float('nan')):9.0f} "
              f"{r['tiled_ms']:9.3f} {r['ours_host_us']:8.0f} "
              f"{(r.get('chunked_fwd_ms') or float('nan')):10.2f} {r.get('sweep_best_ms', float('nan')):9.3f}")
    for c in checks:
        if "rel_err_vs_chunked_fp32" in c:
            print(tuple(c["shape"]), f"packed ({c['sequences_per_row']}+ sequences per row) vs chunked fp32:",
                  " ".join(f"{k}={v:.1e}" for k, v in c["rel_err_vs_chunked_fp32"].items()))
            continue
        print(tuple(c["shape"]), "deterministic" if c["deterministic"] else "NOT deterministic",
              " ".join(f"{k}={v:.1e}" for k, v in c["rel_err_vs_mamba_ssm"].items()))
    if args.candidate:
        print(f"candidate {args.candidate}: " + "; ".join(
            f"{tuple(r['shape'])} {r['pass']} {r['candidate_ms']:.3f} ms ({r['ours_ms'] / r['candidate_ms']:.2f}x "
            "the defaults)" for r in rows))
    seq = [r for r in rows if r.get("sequential_fwd_ms")]
    if seq:
        print(f"sequential reference fwd at {tuple(seq[0]['shape'])}: {seq[0]['sequential_fwd_ms']:.0f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
