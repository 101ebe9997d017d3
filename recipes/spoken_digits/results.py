"""Gather a run of run.sh into OUT/results.json: test NLL, classifier accuracy, generation scores, time, device.

Usage: python3 recipes/spoken_digits/results.py OUT
"""

import json
import sys
from pathlib import Path

import torch


def last_eval(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    if not evals:
        raise SystemExit(f"{run}/metrics.jsonl has no evaluation: was the run given a test split?")
    return evals[-1]


def train_minutes(run: Path) -> float:
    return json.loads((run / "trainer_state" / "state.json").read_text())["train_seconds"] / 60


def main(out: Path) -> None:
    lm, classifier = last_eval(out / "lm"), last_eval(out / "classifier")
    scores = json.loads((out / "scores.json").read_text())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {
        "test_nll_bits_per_sample": round(lm["nll_bits"], 4),
        "lm_steps": lm["step"],
        "classifier_test_accuracy": round(classifier["accuracy"], 4),
        "classifier_steps": classifier["step"],
        "fid": scores["fid"], "is": scores["is"], "mis": scores["mis"], "am": scores["am"],
        "generated_clips": scores["generated_clips"], "real_is": scores["real_is"],
        "train_minutes": round(train_minutes(out / "lm") + train_minutes(out / "classifier"), 2),
        "device": device,
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
