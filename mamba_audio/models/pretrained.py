"""Checkpoints as a directory: ``config.json`` (model type + config) and ``model.safetensors``.

Used by the models and by the trainable codec (``mamba_audio.codecs.ConvCodec``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mamba_audio.configs import ConfigError, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_MODEL_TYPES: dict[str, type] = {}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, unreadable, or does not match its model and config."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint_config(directory: str | Path) -> dict:
    """The parsed config.json of a checkpoint directory, with errors that say what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a mamba-audio checkpoint?")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
        raise CheckpointError(f"{config_path} must hold 'model_type' and 'config'")
    return meta


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an nn.Module built from one config dataclass."""

    model_type: str
    config_class: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _MODEL_TYPES[cls.model_type] = cls

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None, **metadata) -> Path:
        """Write config.json and model.safetensors into ``directory`` (created if needed), atomically.

        ``dtype`` (e.g. torch.float16, to ship weights at half the size) stores the floating-point tensors
        in that type; ``from_pretrained`` casts them back to the model's own (float32). ValueError when a
        tensor does not fit the type (a value beyond float16's range, say).
        """
        from mamba_audio import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: _stored(k, v.detach().contiguous().cpu(), dtype) for k, v in self.state_dict().items()}
        _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
        meta = {"model_type": self.model_type, "mamba_audio_version": __version__, **metadata,
                "config": to_dict(self.config)}
        _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu"):
        """Load a checkpoint written by ``save_pretrained``; CheckpointError if it does not fit."""
        meta = read_checkpoint_config(directory)
        if meta["model_type"] != cls.model_type:
            raise CheckpointError(
                f"{directory} holds a {meta['model_type']!r} model, not a {cls.model_type!r} "
                f"({cls.__name__}); load it with mamba_audio.load_pretrained"
            )
        try:
            config = from_dict(cls.config_class, meta["config"])
        except ConfigError as err:
            raise CheckpointError(f"{directory}/{CONFIG_NAME}: {err}") from err
        model = cls(config)
        weights_path = Path(directory) / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}")
        try:
            tensors = load_file(weights_path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights_path} is not a readable safetensors file: {err}") from err
        _check_state_dict(model.state_dict(), tensors, directory)
        model.load_state_dict(tensors)
        return model.to(device)


def _stored(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` as saved: floating-point tensors in ``dtype`` (None: as they are), others unchanged."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    stored = tensor.to(dtype)
    if not torch.isfinite(stored).all() and torch.isfinite(tensor).all():
        raise ValueError(f"{name}: values up to {tensor.abs().max().item():.4g} do not fit {dtype}")
    return stored


def _check_state_dict(expected: dict, found: dict, directory) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if found[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"weights in {directory} do not match its config.json; " + "; ".join(parts))


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """Load any mamba-audio checkpoint, choosing the model class from its config.json."""
    import mamba_audio.codecs  # noqa: F401  (registers the model classes and the trainable codec)
    import mamba_audio.models  # noqa: F401

    meta = read_checkpoint_config(directory)
    if meta["model_type"] not in _MODEL_TYPES:
        raise CheckpointError(f"{directory}: unknown model_type {meta['model_type']!r}; known: {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[meta["model_type"]].from_pretrained(directory, device)
