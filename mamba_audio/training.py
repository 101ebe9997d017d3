"""One training loop for the autoregressive model, the classifier, the codec and text-to-speech.

AdamW with linear warmup and cosine decay, gradient clipping and accumulation,
optional EMA of the weights, bf16 autocast on CUDA, periodic evaluation,
progress bars, ``metrics.jsonl`` and TensorBoard logs, and checkpoints that
resume exactly: model, EMA, optimizer, scheduler, step, data position and RNG
states, written atomically as safetensors plus JSON.

The same loop runs on one CPU and under ``torchrun`` on several GPUs or hosts
(DistributedDataParallel; each process reads its own shard of every epoch).
A task object says how a batch becomes a loss and what to measure; the loop
knows nothing of audio.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mamba_audio.metrics import MRSTFT_FFT_SIZES, mrstft_distance

CHECKPOINT_DIR = "checkpoint"  # inference weights (EMA when enabled): load with from_pretrained
STATE_DIR = "trainer_state"  # everything else an exact resume needs


class ResumeError(ValueError):
    """A trainer state that cannot be resumed exactly with the current settings."""


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # 0 disables; e.g. 0.999 keeps an exponential moving average of the weights
    eval_every: int = 500
    eval_batches: int | None = None  # None: the whole evaluation split
    save_every: int = 500
    log_every: int = 10
    num_workers: int = 0  # DataLoader worker processes
    tensorboard: bool = True  # also log to out_dir/tensorboard
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    # Stop after this many minutes of training (None: run all ``steps``). The cosine schedule then
    # follows whichever of steps and time is further along, so the learning rate has decayed when
    # time runs out. A time-bounded run is not bit-reproducible: its length depends on the machine.
    max_minutes: float | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("steps, batch_size and grad_accum_steps must be positive")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.eval_every, self.save_every, self.log_every) < 1:
            raise ValueError("eval_every, save_every and log_every must be positive")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive (or None for no time limit), got {self.max_minutes}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


# -- tasks -----------------------------------------------------------------------------------------
class LMTask:
    """Next-sample prediction; the loss and metric are the NLL in bits per sample."""

    metric = "nll_bits"
    higher_is_better = False

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        labels = batch.get("label") if getattr(model, "class_embedding", None) is not None else None
        loss = model.nll_bits(batch["tokens"], labels, batch.get("mask"))
        return loss, {"nll_bits": loss.detach()}

    def eval_sums(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Additive statistics of one batch (summed over batches and processes)."""
        loss, _ = self.loss(model, batch)
        mask = batch.get("mask")
        count = batch["tokens"].numel() if mask is None else mask.sum()
        return {"nll_bits": loss.float() * count,
                "count": torch.as_tensor(count, dtype=torch.float32, device=loss.device)}

    def finalize(self, sums: dict[str, torch.Tensor]) -> dict:
        return {"nll_bits": float(sums["nll_bits"] / sums["count"].clamp_min(1))}


class ClassificationTask:
    """Cross-entropy over class labels; metrics are accuracy, mean loss and the confusion matrix."""

    metric = "accuracy"
    higher_is_better = True

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = model(batch["tokens"], batch.get("lengths"))
        loss = F.cross_entropy(logits.float(), batch["label"])
        return loss, {"loss": loss.detach(), "accuracy": (logits.argmax(-1) == batch["label"]).float().mean()}

    def eval_sums(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["tokens"], batch.get("lengths")).float()
        classes = logits.shape[-1]
        pairs = batch["label"] * classes + logits.argmax(-1)  # row: true class, column: predicted
        return {"loss": F.cross_entropy(logits, batch["label"], reduction="sum"),
                "count": torch.tensor(float(len(batch["label"])), device=logits.device),
                "confusion": torch.bincount(pairs, minlength=classes * classes).view(classes, classes).float()}

    def finalize(self, sums: dict[str, torch.Tensor]) -> dict:
        confusion = sums["confusion"].long()
        count = max(float(sums["count"]), 1.0)
        return {"accuracy": float(confusion.diag().sum()) / count, "loss": float(sums["loss"]) / count,
                "confusion": confusion.tolist()}


@dataclass
class CodecLossConfig:
    """Weights of the codec's training loss: mrstft + waveform_l1 * L1 + commitment * commitment loss."""

    fft_sizes: list[int] = field(default_factory=lambda: list(MRSTFT_FFT_SIZES))  # STFT windows, samples
    waveform_l1: float = 1.0
    commitment: float = 1.0

    def __post_init__(self):
        if not self.fft_sizes or min(self.fft_sizes) < 4:
            raise ValueError(f"fft_sizes must be window lengths of at least 4 samples, got {self.fft_sizes}")
        if self.waveform_l1 < 0 or self.commitment < 0:
            raise ValueError("loss weights must be >= 0")


class CodecTask:
    """Reconstruction through a codec (``ConvCodec``): multi-resolution STFT distance, waveform L1 and the
    quantiser's commitment; the metric is the evaluation clips' mean ``mrstft_distance``."""

    metric = "mrstft_distance"
    higher_is_better = False

    def __init__(self, loss: CodecLossConfig | None = None):
        self.weights = loss or CodecLossConfig()

    def _reconstruct(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        audio = batch["audio"]
        pad = (-audio.shape[1]) % model.hop_length  # whole frames, as AudioCodec.encode pads
        audio = F.pad(audio, (0, pad)) if pad else audio
        return audio, model(audio)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        audio, out = self._reconstruct(model, batch)
        estimate = out["audio"].float()
        spectral = mrstft_distance(estimate, audio, tuple(self.weights.fft_sizes))
        waveform = (estimate - audio).abs().mean()
        loss = spectral + self.weights.waveform_l1 * waveform + self.weights.commitment * out["commitment"]
        return loss, {"loss": loss.detach(), "mrstft": spectral.detach(), "l1": waveform.detach(),
                      "commitment": out["commitment"].detach(), "codebook_usage": out["codebook_usage"]}

    def eval_sums(self, model, batch: dict) -> dict[str, torch.Tensor]:
        audio, out = self._reconstruct(model, batch)
        distances = mrstft_distance(out["audio"].float(), audio, tuple(self.weights.fft_sizes), reduction="none")
        return {"mrstft_distance": distances.sum(),
                "count": torch.tensor(float(len(distances)), device=distances.device)}

    def finalize(self, sums: dict[str, torch.Tensor]) -> dict:
        return {"mrstft_distance": float(sums["mrstft_distance"] / sums["count"].clamp_min(1))}


class TTSTask:
    """Text-to-speech (``TTSModel``) on batches of :func:`mamba_audio.data.speech_tokens.collate_speech_tokens`:
    the loss is the codec-token NLL (nats) plus the stop BCE (plus, with ``guide_durations``, the duration
    predictor's squared error); the metric is the NLL in bits per codec token. A guided model
    (``text_guide``) spreads each clip's text over the whole clip's frames (``clip_frames``), or places it
    by the symbols' ``durations``."""

    metric = "nll_bits"
    higher_is_better = False

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        losses = model.losses(batch["text"], batch["voice"], batch["tokens"], batch["frames"],
                              batch.get("clip_frames"), batch.get("durations"))
        total = losses["nll_bits"] * math.log(2) + losses["stop_bce"] + losses.get("duration_mse", 0.0)
        return total, {key: value.detach() for key, value in losses.items()}

    def eval_sums(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Sums over the batch's clips (each clip's batch mean weighted by its frame count)."""
        _, metrics = self.loss(model, batch)
        frames = batch["frames"].sum().float()
        return {**{key: value.float() * frames for key, value in metrics.items()}, "count": frames}

    def finalize(self, sums: dict[str, torch.Tensor]) -> dict:
        count = sums["count"].clamp_min(1)
        return {key: float(value / count) for key, value in sums.items() if key != "count"}


class _TaskLoss(nn.Module):
    """The model and its task as one module, so DistributedDataParallel sees the whole loss in forward."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict):
        return self.task.loss(self.model, batch)


# -- data order ------------------------------------------------------------------------------------
class ResumableSampler(Sampler[int]):
    """This process's indices for one epoch, reproducible from (seed, epoch) and resumable mid-epoch.

    Every process draws the same permutation and takes every ``world_size``-th index from
    position ``rank`` (padded by wrapping so all processes take as many). ``skip`` items of the
    next epoch's share are left out once: what an exact resume needs.
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        if length < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        padded = len(self) * self.world_size
        order = torch.cat([order, order[: padded - self.length]])
        start, self.skip = self.skip, 0
        return iter(order[self.rank::self.world_size][start:].tolist())


class _ShardSampler(Sampler[int]):
    """Evaluation: indices rank, rank + world_size, ...; no padding, so every item counts once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


# -- distributed set-up ----------------------------------------------------------------------------
def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL with one GPU per local rank, or gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def cosine_schedule(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine from 1 to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# -- the loop --------------------------------------------------------------------------------------
class Trainer:
    """Trains ``model`` (a PretrainedMixin module) on datasets of dict items with ``task``.

    Writes into ``out_dir``: ``checkpoint/`` (config.json + model.safetensors, the EMA weights
    when EMA is on), ``trainer_state/`` (what an exact resume needs), ``metrics.jsonl`` and
    ``tensorboard/``. Only rank 0 writes.
    """

    def __init__(self, model, task, config: TrainConfig, out_dir: str | Path, progress: bool = True,
                 collate_fn: Callable | None = None):
        self.config = config
        self.task = task
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.collate_fn = collate_fn
        self.rank, self.world_size, self.device = init_distributed(config.device)
        self.is_main = self.rank == 0
        self.model = model.to(self.device)
        self.loss_module: nn.Module = _TaskLoss(self.model, task)
        if self.world_size > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            # norms, biases and SSM parameters (A, D, dt_bias) are not weight-decayed
            (decay if param.dim() >= 2 and "A_" not in name else no_decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
            fused=self.device.type == "cuda" or None,  # one launch for every parameter instead of a dozen each
        )
        self._time_step = 0  # with max_minutes: the step the elapsed time corresponds to
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            # warmup counts steps; after it, the schedule follows steps or the clock, whichever is further
            self.optimizer,
            lambda s: cosine_schedule(s if s < config.warmup_steps else max(s, self._time_step), config))
        self.ema = ({k: v.detach().float().clone() for k, v in self.model.state_dict().items()}
                    if config.ema_decay > 0 else None)
        self._ema_pairs: tuple | None = None  # (the ema dict it was made for, its float and other tensor pairs)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.train_seconds = 0.0  # time spent in fit's steps, resumed runs included
        self.paused = False  # the last fit stopped at its stop_after_minutes, to be resumed
        self._writer = None
        torch.manual_seed(config.seed + self.rank)
        random.seed(config.seed + self.rank)
        np.random.seed(config.seed + self.rank)

    # -- helpers ---------------------------------------------------------------------------------
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loader(self, dataset: Dataset, sampler: Sampler, drop_last: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=self.collate_fn, num_workers=self.config.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _batches(self, loader: DataLoader, sampler: ResumableSampler) -> Iterator[dict]:
        """Training batches forever, counting the epoch and the position inside it.

        Worker processes are started afresh for every epoch (no persistent workers), so they
        receive the dataset after its ``set_epoch``.
        """
        while True:
            sampler.set_epoch(self.epoch)
            sampler.skip = self.batches_in_epoch * self.config.batch_size
            if hasattr(loader.dataset, "set_epoch"):  # datasets that draw per epoch (LongAudioCrops' random crops)
                loader.dataset.set_epoch(self.epoch)
            for batch in loader:
                self.batches_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batches_in_epoch = 0

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.config.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
            self._writer.flush()

    @contextlib.contextmanager
    def _ema_weights(self):
        """Inside: the model holds the EMA weights (when EMA is on)."""
        if self.ema is None:
            yield
            return
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict({k: v.to(raw[k].dtype) for k, v in self.ema.items()})
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- ema + (1 - decay) * (model - ema) for the floating tensors, a copy of the others: a few
        foreach launches, where one launch per tensor made the update a tenth of a small model's step."""
        if self._ema_pairs is None or self._ema_pairs[0] is not self.ema:  # made again after resume() loads one
            state = self.model.state_dict()  # detached views of the live tensors: valid for the whole run
            floats = [(self.ema[k], v) for k, v in state.items() if v.is_floating_point()]
            others = [(self.ema[k], v) for k, v in state.items() if not v.is_floating_point()]
            self._ema_pairs = (self.ema, floats, others)
        _, floats, others = self._ema_pairs
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [v if v.dtype == e.dtype else v.to(e.dtype)
                                                         for e, v in floats], 1 - self.config.ema_decay)
        for ema, value in others:
            ema.copy_(value)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> dict:
        """The task's metrics over ``dataset`` (every process a shard; sums reduced across them)."""
        loader = self._loader(dataset, _ShardSampler(len(dataset), self.rank, self.world_size), drop_last=False)
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        with self._ema_weights():
            for i, batch in enumerate(loader):
                if self.config.eval_batches is not None and i >= self.config.eval_batches:
                    break
                with self.autocast():
                    stats = self.task.eval_sums(self.model, _to_device(batch, self.device))
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value.detach().float()
        self.model.train()
        if self.world_size > 1:
            for value in sums.values():
                dist.all_reduce(value)
        return self.task.finalize(sums) if sums else {}

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self) -> None:
        """Write checkpoint/ and trainer_state/ atomically (rank 0; the others wait)."""
        if self.is_main:
            with self._ema_weights():
                self.model.save_pretrained(self.out_dir / CHECKPOINT_DIR, step=self.step)
            self._save_state()
        if self.world_size > 1:
            dist.barrier()

    def _save_state(self) -> None:
        final = self.out_dir / STATE_DIR
        staging = self.out_dir / f".{STATE_DIR}.partial"
        previous = self.out_dir / f".{STATE_DIR}.previous"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model_state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(model_state, staging / "model.safetensors")
        if self.ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in self.ema.items()}, staging / "ema.safetensors")
        optimizer = self.optimizer.state_dict()
        tensors, plain = {}, {}
        for index, entry in optimizer["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    plain[f"{index}.{key}"] = value
        save_file(tensors, staging / "optimizer.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        for name, generator in self._dataset_generators().items():
            rng[f"dataset.{name}"] = generator.get_state()
        save_file(rng, staging / "rng.safetensors")
        np_state = np.random.get_state()
        meta = {
            "step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
            "train_seconds": self.train_seconds, "world_size": self.world_size, "train_config": asdict(self.config),
            "scheduler": self.scheduler.state_dict(), "optimizer_param_groups": optimizer["param_groups"],
            "optimizer_plain_state": plain, "python_random": random.getstate(),
            "numpy_random": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
        (staging / "state.json").write_text(json.dumps(meta) + "\n")
        # swap: at every moment either the new, the final or the previous folder is complete
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
        shutil.rmtree(previous, ignore_errors=True)

    def _dataset_generators(self) -> dict[str, torch.Generator]:
        """Random-crop generators of the training dataset, which the data position includes."""
        generator = getattr(getattr(self, "_train_dataset", None), "generator", None)
        return {"train": generator} if isinstance(generator, torch.Generator) else {}

    def resume(self) -> bool:
        """Restore trainer_state/ from out_dir if there is one; True when resumed."""
        final = self.out_dir / STATE_DIR
        if not final.is_dir():
            final = self.out_dir / f".{STATE_DIR}.previous"  # a save was cut off between its two renames
            if not final.is_dir():
                return False
        meta = json.loads((final / "state.json").read_text())
        saved = meta["train_config"]
        for key in ("batch_size", "grad_accum_steps", "seed"):
            if saved[key] != getattr(self.config, key):
                raise ResumeError(f"{final}: saved with {key}={saved[key]}, now {getattr(self.config, key)}; "
                                  "an exact resume needs the same value (or a new --out)")
        if meta["world_size"] != self.world_size:
            raise ResumeError(f"{final}: saved by {meta['world_size']} processes, now {self.world_size}; "
                              "an exact resume needs the same number")
        if meta["step"] > self.config.steps:
            raise ResumeError(f"{final}: already at step {meta['step']}, beyond steps={self.config.steps}")
        self.model.load_state_dict(load_file(final / "model.safetensors", device=str(self.device)))
        if self.ema is not None:
            ema_path = final / "ema.safetensors"
            if not ema_path.is_file():
                raise ResumeError(f"{final}: saved without EMA, now ema_decay={self.config.ema_decay}")
            self.ema = load_file(ema_path, device=str(self.device))
        tensors = load_file(final / "optimizer.safetensors")  # load_state_dict moves them beside the params
        state: dict[int, dict] = {}
        for flat, value in [*tensors.items(), *meta["optimizer_plain_state"].items()]:
            index, key = flat.split(".", 1)
            state.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step, self.epoch, self.batches_in_epoch = meta["step"], meta["epoch"], meta["batches_in_epoch"]
        self.train_seconds = meta.get("train_seconds", 0.0)
        rng = load_file(final / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
        for name, generator in self._dataset_generators().items():
            generator.set_state(rng[f"dataset.{name}"])
        python_state = meta["python_random"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        np_state = meta["numpy_random"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        return True

    # -- training --------------------------------------------------------------------------------
    def _rank0(self, value: float) -> float:
        """Rank 0's ``value`` on every process, so decisions taken from a clock agree (all stop at one step)."""
        if self.world_size == 1:
            return value
        shared = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return float(shared)

    def _follow_time_limit(self) -> bool:
        """With max_minutes: move the schedule's clock to the elapsed time; True when time is up.

        Rank 0's clock decides for every process, so all keep the same learning rate and stop together.
        """
        fraction = self._rank0(self.train_seconds / (60 * self.config.max_minutes))
        self._time_step = int(fraction * self.config.steps)
        return fraction >= 1.0

    def fit(self, train_dataset: Dataset, eval_dataset: Dataset | None = None, resume: bool = False,
            stop_after_minutes: float | None = None) -> dict:
        """Train until ``config.steps`` optimizer steps (or ``max_minutes``); returns the last evaluation's metrics.

        With ``resume``, continues from ``out_dir/trainer_state`` when it exists, exactly
        where it stopped: the same batches and random draws as an uninterrupted run.

        ``stop_after_minutes`` pauses this call after that much time in its own steps: the state is saved
        (no evaluation) and ``self.paused`` is True; the schedule is not shortened, so a later call with
        ``resume`` carries on with the same run (a job split over several time-limited allocations).
        """
        config = self.config
        if stop_after_minutes is not None and not stop_after_minutes > 0:
            raise ValueError(f"stop_after_minutes must be positive, got {stop_after_minutes}")
        self.paused = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._train_dataset = train_dataset
        generator = self._dataset_generators().get("train")
        if generator is not None:  # each process its own crops
            generator.manual_seed(config.seed * 1_000_003 + self.rank)
        if resume and self.resume() and self.is_main:
            print(f"resumed from {self.out_dir / STATE_DIR} at step {self.step}")
        sampler = ResumableSampler(len(train_dataset), shuffle=True, seed=config.seed, rank=self.rank,
                                   world_size=self.world_size)
        drop_last = len(sampler) >= config.batch_size
        batches = self._batches(self._loader(train_dataset, sampler, drop_last), sampler)
        self.model.train()
        last_eval: dict = {}
        bar = tqdm(total=config.steps, initial=self.step, desc="training", unit="step",
                   disable=not (self.progress and self.is_main))
        started, seconds_before = time.time(), self.train_seconds
        out_of_time = False
        while self.step < config.steps and not out_of_time and not self.paused:
            logs: dict[str, float] = {}
            self.optimizer.zero_grad(set_to_none=True)
            for micro in range(config.grad_accum_steps):
                batch = _to_device(next(batches), self.device)
                last_micro = micro == config.grad_accum_steps - 1
                sync = contextlib.nullcontext() if last_micro or self.world_size == 1 else self.loss_module.no_sync()
                with sync:
                    with self.autocast():
                        loss, metrics = self.loss_module(batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss became {loss.item()} at step {self.step}; lower the lr or check the data")
                    (loss / config.grad_accum_steps).backward()
                for key, value in metrics.items():
                    logs[key] = logs.get(key, 0.0) + float(value) / config.grad_accum_steps
            grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                         if config.grad_clip > 0 else None)
            self.optimizer.step()
            self.train_seconds = seconds_before + time.time() - started
            if config.max_minutes is not None:
                out_of_time = self._follow_time_limit()
            if stop_after_minutes is not None and not out_of_time:
                self.paused = self._rank0(time.time() - started) >= 60 * stop_after_minutes
            self.scheduler.step()
            if self.ema is not None:
                self._update_ema()
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            last = self.step == config.steps or out_of_time
            if self.step % config.log_every == 0 or last:
                if self.world_size > 1:  # log the mean over every process's share of the batch
                    values = torch.tensor(list(logs.values()), dtype=torch.float64, device=self.device)
                    dist.all_reduce(values)
                    logs = dict(zip(logs, (values / self.world_size).tolist()))
                record = {"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0],
                          "seconds": round(time.time() - started, 2), **logs}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                self._log(record)
            if eval_dataset is not None and (self.step % config.eval_every == 0 or last):
                last_eval = self.evaluate(eval_dataset)
                self._log({"step": self.step, "split": "eval", **last_eval})
                if self.is_main:
                    bar.write(f"step {self.step}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in last_eval.items() if isinstance(v, float)))
            if self.step % config.save_every == 0 or last or self.paused:
                self.save()
        bar.close()
        if out_of_time and self.is_main:
            print(f"stopped at step {self.step} of {config.steps}: max_minutes={config.max_minutes} reached")
        self.paused = self.paused and self.step < config.steps and not out_of_time
        if self.paused and self.is_main:
            print(f"paused at step {self.step} after {stop_after_minutes} minutes (stop_after_minutes); the state "
                  f"is in {self.out_dir / STATE_DIR}: run again with resume to go on")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return last_eval
