"""One training loop for the autoregressive model and the classifier.

AdamW with linear warmup and cosine decay, gradient clipping, bf16 autocast on
CUDA, periodic evaluation and checkpoints (``save_pretrained`` directories), a
progress bar, and a ``metrics.jsonl`` log. The task object says how a batch
becomes a loss and how to evaluate; the loop knows nothing of audio.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_batches: int | None = None  # None: the whole evaluation split
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


class LMTask:
    """Next-sample prediction; the loss and metric are the NLL in bits per sample."""

    metric = "nll_bits"
    higher_is_better = False

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        labels = batch.get("label") if getattr(model, "class_embedding", None) is not None else None
        loss = model.nll_bits(batch["tokens"], labels, batch.get("mask"))
        return loss, {"nll_bits": loss.item()}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], autocast) -> dict:
        total, count = 0.0, 0
        for batch in batches:
            with autocast():
                loss, _ = self.loss(model, batch)
            n = batch["tokens"].numel() if batch.get("mask") is None else int(batch["mask"].sum())
            total, count = total + loss.item() * n, count + n
        return {"nll_bits": total / max(count, 1)}


class ClassificationTask:
    """Cross-entropy over class labels; the metric is accuracy."""

    metric = "accuracy"
    higher_is_better = True

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = model(batch["tokens"], batch.get("lengths"))
        loss = F.cross_entropy(logits.float(), batch["label"])
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(-1) == batch["label"]).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], autocast) -> dict:
        correct, total, loss_sum = 0, 0, 0.0
        for batch in batches:
            with autocast():
                logits = model(batch["tokens"], batch.get("lengths"))
            loss_sum += F.cross_entropy(logits.float(), batch["label"], reduction="sum").item()
            correct += int((logits.argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
        return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def cosine_schedule(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine from 1 to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _forever(loader) -> Iterator[dict]:
    for epoch in itertools.count():
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader


class Trainer:
    def __init__(self, model, task, config: TrainConfig, out_dir: str | Path, progress: bool = True):
        self.config = config
        self.task = task
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            # norms, biases and SSM parameters (A, D, dt_bias) are not weight-decayed
            (decay if param.dim() >= 2 and "A_" not in name else no_decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine_schedule(s, config))
        self.step = 0

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, loader) -> dict:
        self.model.eval()
        batches = (_to_device(b, self.device) for b in loader)
        if self.config.eval_batches is not None:
            batches = itertools.islice(batches, self.config.eval_batches)
        metrics = self.task.evaluate(self.model, batches, self.autocast)
        self.model.train()
        return metrics

    def _log(self, record: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, name: str = "checkpoint") -> Path:
        return self.model.save_pretrained(self.out_dir / name, step=self.step)

    def fit(self, train_loader, eval_loader=None) -> dict:
        """Train for ``config.steps`` optimizer steps; returns the last evaluation's metrics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        data = _forever(train_loader)
        last_eval: dict = {}
        bar = tqdm(total=self.config.steps, desc="training", unit="step", disable=not self.progress)
        started = time.time()
        while self.step < self.config.steps:
            batch = _to_device(next(data), self.device)
            with self.autocast():
                loss, metrics = self.task.loss(self.model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower the lr or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                self._log({"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm), "seconds": round(time.time() - started, 2), **metrics})
            if eval_loader is not None and (self.step % self.config.eval_every == 0 or self.step == self.config.steps):
                last_eval = self.evaluate(eval_loader)
                self._log({"step": self.step, "split": "eval", **last_eval})
                bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            if self.step % self.config.save_every == 0 or self.step == self.config.steps:
                self.save()
        bar.close()
        return last_eval
