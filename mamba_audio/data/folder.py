"""A folder of audio files as a dataset, labels from sub-folder names (the Speech Commands layout).

Layout::

    root/
        <label>/*.wav          (also .flac and .ogg, in nested folders too)
        validation_list.txt    optional: paths relative to root, one per line
        testing_list.txt       optional: likewise
        _background_noise_/    folders starting with "_" are not classes and are skipped

The training split is every file in neither list, as in Speech Commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mamba_audio.audio import AUDIO_SUFFIXES, list_audio_files, load_audio
from mamba_audio.tokenizers import Tokenizer

SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "validation", "test")

EXPECTED_LAYOUT = (
    "expected root/<label>/*.wav (also .flac, .ogg), with optional validation_list.txt and "
    "testing_list.txt listing paths relative to root (the Speech Commands layout); "
    "mamba_audio.data.build_spoken_digits(root) synthesizes such a corpus offline"
)


class DataLayoutError(ValueError):
    """A dataset root that is missing or not laid out as expected; the message says what was expected."""


def _read_list(path: Path) -> set[str]:
    return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}


class AudioFolder(Dataset):
    """Audio files under ``root``, optionally labelled by sub-folder and tokenized.

    Args:
        root: the dataset folder (layout in the module docstring).
        sample_rate: Hz; files at other rates are resampled.
        split: None for every file, or "train" / "validation" / "test" from the split lists.
            Without lists, "train" is every file and the others are errors.
        labels: labels from the first folder level under root; without, every audio file under
            root is an item, at any depth.
        segment_samples: crop longer clips and zero-pad shorter ones to this many samples.
        tokenizer: also return ``tokens``, the tokenized (cropped, padded) audio.
        mix_to_mono: average the channels of multichannel files (otherwise they are errors).
        random_crop: crop at a random start drawn from ``generator`` (training); otherwise from
            the start of the clip, so evaluation is deterministic.
        generator: torch.Generator for the random crops.
        max_seconds: refuse files longer than this (see :func:`mamba_audio.audio.load_audio`).

    Attributes:
        classes: sorted label names; ``classes[item["label"]]`` is an item's folder. Empty
            without labels.
        files: the audio files of this split, sorted.

    Items are dicts: ``audio`` Tensor[L] float32, ``length`` int (samples of real audio
    before padding), ``path`` str, ``tokens`` Tensor[L] long with a tokenizer, ``label`` int
    with labels.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int,
        *,
        split: str | None = None,
        labels: bool = True,
        segment_samples: int | None = None,
        tokenizer: Tokenizer | None = None,
        mix_to_mono: bool = False,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
        max_seconds: float | None = None,
    ):
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.split = split
        self.labels = labels
        self.segment_samples = segment_samples
        self.tokenizer = tokenizer
        self.mix_to_mono = mix_to_mono
        self.random_crop = random_crop
        self.generator = generator
        self.max_seconds = max_seconds
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
        if segment_samples is not None and segment_samples < 1:
            raise ValueError(f"segment_samples must be positive, got {segment_samples}")
        if not self.root.is_dir():
            raise DataLayoutError(f"{self.root}: no such folder; {EXPECTED_LAYOUT}")

        if labels:
            self.classes = sorted(
                d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))
                and list_audio_files(d)
            )
            files = [f for label in self.classes for f in list_audio_files(self.root / label)]
        else:
            self.classes = []
            files = [f for f in list_audio_files(self.root)
                     if not any(part.startswith(("_", ".")) for part in f.relative_to(self.root).parts[:-1])]
        if not files:
            loose = [f.name for f in self.root.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES]
            hint = f" ({len(loose)} audio files lie directly in root: give them label folders)" if labels and loose else ""
            raise DataLayoutError(f"{self.root}: no audio files found{hint}; {EXPECTED_LAYOUT}")
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.files = self._select_split(files)

    def _select_split(self, files: list[Path]) -> list[Path]:
        if self.split is None:
            return files
        held_out = {}
        for split, list_name in SPLIT_LISTS.items():
            list_path = self.root / list_name
            held_out[split] = _read_list(list_path) if list_path.exists() else None
        if self.split != "train" and held_out[self.split] is None:
            raise DataLayoutError(f"{self.root}: split={self.split!r} needs {SPLIT_LISTS[self.split]}, "
                                  f"which is missing; {EXPECTED_LAYOUT}")
        relative = [f.relative_to(self.root).as_posix() for f in files]
        if self.split == "train":
            excluded = set().union(*(names for names in held_out.values() if names is not None))
            chosen = [f for f, name in zip(files, relative) if name not in excluded]
        else:
            chosen = [f for f, name in zip(files, relative) if name in held_out[self.split]]
        if not chosen:
            raise DataLayoutError(f"{self.root}: split={self.split!r} holds none of the {len(files)} audio files "
                                  f"(do the paths in the split lists match the files?); {EXPECTED_LAYOUT}")
        return chosen

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
        length = audio.shape[0]
        if self.segment_samples is not None:
            audio, length = self._fit_to_segment(audio)
        item = {"audio": audio, "length": length, "path": str(path)}
        if self.tokenizer is not None:
            item["tokens"] = self.tokenizer.encode(audio)
        if self.labels:
            item["label"] = self._class_index[path.relative_to(self.root).parts[0]]
        return item

    def _fit_to_segment(self, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Crop or zero-pad Tensor[L] to Tensor[segment_samples]; returns it and the real length."""
        segment, length = self.segment_samples, audio.shape[0]
        if length > segment:
            start = 0
            if self.random_crop:
                start = int(torch.randint(0, length - segment + 1, (1,), generator=self.generator))
            return audio[start:start + segment], segment
        return torch.nn.functional.pad(audio, (0, segment - length)), length


def collate_audio(batch: list[dict]) -> dict:
    """Batch items of different lengths by zero-padding at the end.

    Args:
        batch: items of :class:`AudioFolder` (``audio``, optional ``length``, ``tokens``,
            ``label``, ``path``).

    Returns:
        ``audio`` Tensor[B x L] float32 with L the longest item, ``lengths`` Tensor[B] long
        (samples of real audio: an item's ``length`` when it has one), ``mask`` Tensor[B x L]
        bool (True on real audio), ``path`` list of B str, and when the items have them
        ``tokens`` Tensor[B x L] long (padded with 0: use the mask) and ``label`` Tensor[B] long.
    """
    if not batch:
        raise ValueError("collate_audio: empty batch")
    longest = max(item["audio"].shape[-1] for item in batch)
    audio = torch.zeros(len(batch), longest)
    lengths = torch.tensor([item.get("length", item["audio"].shape[-1]) for item in batch], dtype=torch.long)
    for row, item in enumerate(batch):
        audio[row, : item["audio"].shape[-1]] = item["audio"]
    out = {
        "audio": audio,
        "lengths": lengths,
        "mask": torch.arange(longest)[None, :] < lengths[:, None],
        "path": [item["path"] for item in batch],
    }
    if "tokens" in batch[0]:
        tokens = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, item in enumerate(batch):
            tokens[row, : item["tokens"].shape[-1]] = item["tokens"]
        out["tokens"] = tokens
    if "label" in batch[0]:
        out["label"] = torch.tensor([item["label"] for item in batch], dtype=torch.long)
    return out
