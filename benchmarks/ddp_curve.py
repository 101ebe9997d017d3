"""Does `torchrun --nproc_per_node N` train like one GPU? The same recipe, the same global batch, both curves.

Trains the spoken-digits generator (recipes/spoken_digits/lm_gpu.yaml) for a fixed number of steps
twice: on one GPU with batch B, and under torchrun on N GPUs with batch B / N each (DDP, NCCL).
Both start from the same seed, so the model initialisations are identical; the batches differ in
which process holds which clip, and bf16 reductions differ in order, so the curves agree closely
but not bit for bit. Reports the largest step-wise difference of the logged training loss (the
mean over every process's share), the difference of the smoothed curves, the final test NLL of
both, and the time per step of each, and writes ``benchmarks/results/ddp_<gpu>.json``.

    python benchmarks/ddp_curve.py --corpus DIR [--gpus 2] [--steps 300] [--batch-size 16]

DIR is a spoken-digits corpus (``mamba-audio corpus spoken-digits --sample-rate 8000``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from results_io import file_label, save_result  # benchmarks/results_io.py

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "spoken_digits" / "lm_gpu.yaml"


def train(corpus: str, out: Path, gpus: int, batch_size: int, steps: int) -> tuple[list[dict], float]:
    """Run the recipe; returns the records of metrics.jsonl and the wall time of the whole command."""
    args = ["--quiet", "train", "--task", "lm", "--conditional", "--data", corpus, "--out", str(out), "--config", str(RECIPE),
            "--segment-seconds", "1.0", "--steps", str(steps), "--batch-size", str(batch_size),
            "--eval-every", str(steps), "--save-every", str(steps), "--seed", "0", "--set", "train.max_minutes=null",
            "--set", "train.log_every=1"]
    if gpus == 1:
        command = [sys.executable, "-m", "mamba_audio.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "mamba_audio.cli", *args]
    print("$", shlex.join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    seconds = time.time() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, seconds


def smooth(values: list[float], width: int = 20) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch; each of N processes takes B / N")
    parser.add_argument("--work", default="runs/ddp_curve", help="where the two runs write")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"needs {args.gpus} CUDA GPUs, found {torch.cuda.device_count()}")
    if args.batch_size % args.gpus:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of --gpus {args.gpus}")

    work = Path(args.work)
    one, one_seconds = train(args.corpus, work / "one", 1, args.batch_size, args.steps)
    many, many_seconds = train(args.corpus, work / f"ddp{args.gpus}", args.gpus, args.batch_size // args.gpus,
                               args.steps)

    def curve(records):
        return [r["nll_bits"] for r in records if r["split"] == "train"]

    def train_seconds(records):
        return [r["seconds"] for r in records if r["split"] == "train"][-1]

    def test_nll(records):
        return [r["nll_bits"] for r in records if r["split"] == "eval"][-1]

    a, b = curve(one), curve(many)
    if len(a) != len(b) or len(a) != args.steps:
        raise SystemExit(f"curves of {len(a)} and {len(b)} steps, expected {args.steps}")
    step_diff = [abs(x - y) for x, y in zip(a, b)]
    smooth_diff = [abs(x - y) for x, y in zip(smooth(a), smooth(b))]
    name = torch.cuda.get_device_name()
    result = {
        "device": f"{args.gpus} x {name}",
        "command": shlex.join([sys.executable, *sys.argv]),
        "recipe": str(RECIPE.relative_to(RECIPE.parents[2])),
        "steps": args.steps,
        "global_batch": args.batch_size,
        "one_gpu": {"batch": args.batch_size, "first_loss": a[0], "last_loss": a[-1],
                    "test_nll_bits": test_nll(one), "wall_seconds": round(one_seconds, 1),
                    "train_seconds": train_seconds(one)},
        "torchrun": {"processes": args.gpus, "batch_per_process": args.batch_size // args.gpus,
                     "first_loss": b[0], "last_loss": b[-1], "test_nll_bits": test_nll(many),
                     "wall_seconds": round(many_seconds, 1), "train_seconds": train_seconds(many)},
        "first_step_loss_diff": step_diff[0],
        "max_step_loss_diff": max(step_diff),
        "mean_step_loss_diff": statistics.fmean(step_diff),
        "max_smoothed_loss_diff": max(smooth_diff),
        "test_nll_diff": abs(test_nll(one) - test_nll(many)),
        "curves": {"one_gpu": a, "torchrun": b},
    }
    print(f"{'':12}{'first loss':>12}{'last loss':>12}{'test NLL':>10}{'train s':>9}")
    for label, key in (("1 GPU", "one_gpu"), (f"{args.gpus} GPUs", "torchrun")):
        r = result[key]
        print(f"{label:12}{r['first_loss']:12.4f}{r['last_loss']:12.4f}{r['test_nll_bits']:10.4f}{r['train_seconds']:9.1f}")
    print(f"step-wise loss difference: first {step_diff[0]:.2e}, mean {result['mean_step_loss_diff']:.4f}, "
          f"max {result['max_step_loss_diff']:.4f}; smoothed (20 steps) max {result['max_smoothed_loss_diff']:.4f}; "
          f"test NLL difference {result['test_nll_diff']:.4f} bits")
    path = save_result(result, "ddp", file_label(name), Path(args.results) / f"ddp_{file_label(name)}.json", indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
