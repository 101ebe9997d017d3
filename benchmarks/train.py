"""Training throughput of the SC09 6.1M model: our Triton scan beside mamba_ssm's CUDA kernel.

One training step is forward + backward + AdamW on a batch of 16 clips of 16000
mu-law samples under bf16 autocast, exactly as ``mamba_audio.training`` runs it.
The same model (same weights, same batch) is timed twice in one run: with every
mixer's scan on our kernels (the dispatch's CUDA default), and with the scan
swapped for mamba_ssm's ``selective_scan_fn``; everything else is the same
PyTorch code. Reports samples per second (batch x length / step time, median
of the timed steps), peak memory of a step, and the loss of the first step of
each (a check that both compute the same function), then writes
``benchmarks/results/train_<gpu>.json``.

    python benchmarks/train.py --mamba-sdist .device/mamba_ssm-2.3.2.post1.tar.gz
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from mamba_audio.models import LMConfig, SaShiMiLM, backbone_preset
from mamba_audio.models import mixer as mixer_module

sys.path.insert(0, str(Path(__file__).parent))
from scan import build_mamba_ssm, import_mamba_selective_scan  # noqa: E402
from results_io import file_label, save_result  # noqa: E402


@contextlib.contextmanager
def mamba_ssm_scan(selective_scan_fn):
    """Mixers scan through mamba_ssm's kernel (which takes B and C contiguous in L, as its Mamba layer passes them)."""
    original = mixer_module.selective_scan

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **unsupported):
        if unsupported:
            raise ValueError(f"mamba_ssm's selective_scan_fn has no {sorted(unsupported)}")
        return selective_scan_fn(u, delta, A, B.contiguous(), C.contiguous(), D, z, delta_bias, delta_softplus)

    mixer_module.selective_scan = scan
    try:
        yield
    finally:
        mixer_module.selective_scan = original


def time_training(model: SaShiMiLM, tokens: torch.Tensor, steps: int, warmup: int) -> dict:
    """Median step time, samples per second and peak memory of forward + backward + AdamW under bf16 autocast."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, first_loss = [], None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.nll_bits(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        if i == 0:
            first_loss = loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"step_ms": 1e3 * step, "samples_per_s": tokens.numel() / step,
            "peak_MiB": torch.cuda.max_memory_allocated() / 2**20, "first_loss_bits": first_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sc09-6m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=16000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--mamba-sdist", type=Path, default=None, help="build mamba_ssm from this sdist if needed")
    ap.add_argument("--build-root", type=Path, default=Path("/tmp/mamba_ssm_build"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/train.py needs a CUDA GPU")

    try:
        selective_scan_fn = import_mamba_selective_scan(None)
    except ImportError:
        if args.mamba_sdist is None:
            raise SystemExit("mamba_ssm is not importable: pass --mamba-sdist")
        selective_scan_fn = import_mamba_selective_scan(build_mamba_ssm(args.mamba_sdist, args.build_root))

    name = torch.cuda.get_device_name()
    torch.manual_seed(0)
    model = SaShiMiLM(LMConfig(backbone=backbone_preset(args.preset))).cuda()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 256, (args.batch, args.length), device="cuda")
    print(f"{name}: {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
          f"batch {args.batch} x {args.length} samples, bf16 autocast", flush=True)

    ours = time_training(model, tokens, args.steps, args.warmup)
    print(f"ours:      {ours}", flush=True)
    model.load_state_dict(initial)
    with mamba_ssm_scan(selective_scan_fn):
        theirs = time_training(model, tokens, args.steps, args.warmup)
    print(f"mamba_ssm: {theirs}", flush=True)

    result = {
        "device": name, "command": "python " + " ".join(sys.argv), "preset": args.preset,
        "batch": args.batch, "length": args.length, "timed_steps": args.steps, "torch": torch.__version__,
        "ours_samples_per_s": ours["samples_per_s"], "mamba_ssm_samples_per_s": theirs["samples_per_s"],
        "speedup": ours["samples_per_s"] / theirs["samples_per_s"],
        "ours_peak_MiB": ours["peak_MiB"], "mamba_ssm_peak_MiB": theirs["peak_MiB"],
        "ours_step_ms": ours["step_ms"], "mamba_ssm_step_ms": theirs["step_ms"],
        "first_step_loss_bits": {"ours": ours["first_loss_bits"], "mamba_ssm": theirs["first_loss_bits"]},
    }
    print(f"\n{'':10} {'step ms':>9} {'samples/s':>12} {'peak MiB':>9}")
    for label, r in (("ours", ours), ("mamba_ssm", theirs)):
        print(f"{label:10} {r['step_ms']:>9.1f} {r['samples_per_s']:>12.0f} {r['peak_MiB']:>9.0f}")
    print(f"speedup (ours / mamba_ssm): {result['speedup']:.2f}x")
    out = save_result(result, "train", file_label(name), args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
