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
from collections.abc import Sequence
from pathlib import Path

import torch

from mamba_audio.audio import AUDIO_SUFFIXES, list_audio_files, load_audio
from mamba_audio.data.clips import Augment, ClipDataset
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


def unlabelled_audio_files(root: Path) -> list[Path]:
    """Every audio file under ``root`` at any depth, sorted, except in folders starting with "_" or "."."""
    return [f for f in list_audio_files(root)
            if not any(part.startswith(("_", ".")) for part in f.relative_to(root).parts[:-1])]


class AudioFolder(ClipDataset):
    """Audio files under ``root``, optionally labelled by sub-folder and tokenized.

    Args:
        root: the dataset folder (layout in the module docstring).
        sample_rate: Hz; files at other rates are resampled.
        split: None for every file, or "train" / "validation" / "test" from the split lists.
            Without lists, "train" is every file and the others are errors.
        labels: labels from the first folder level under root; without, every audio file under
            root is an item, at any depth.
        classes: with labels, the label folders to use, in this order (label i is
            ``classes[i]``); files in other folders are ignored. Default: every folder, sorted.
        segment_samples, tokenizer, mix_to_mono, random_crop, generator, max_seconds,
            loudness, loudness_db, augment: see :class:`mamba_audio.data.clips.ClipDataset`.

    Attributes:
        classes: label names; ``classes[item["label"]]`` is an item's folder. Empty without
            labels.
        files: the audio files of this split, sorted.

    Items are dicts: ``audio`` Tensor[L] float32, ``length`` int (samples of real audio
    before padding), ``path`` str, ``sample_rate`` int, ``tokens`` Tensor[L] long with a
    tokenizer, ``label`` int with labels.
    """

    expected_layout = EXPECTED_LAYOUT

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int,
        *,
        split: str | None = None,
        labels: bool = True,
        classes: Sequence[str] | None = None,
        segment_samples: int | None = None,
        tokenizer: Tokenizer | None = None,
        mix_to_mono: bool = False,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
        max_seconds: float | None = None,
        loudness: str | None = None,
        loudness_db: float | None = None,
        augment: Augment | None = None,
    ):
        super().__init__(sample_rate, segment_samples=segment_samples, tokenizer=tokenizer,
                         mix_to_mono=mix_to_mono, random_crop=random_crop, generator=generator,
                         max_seconds=max_seconds, loudness=loudness, loudness_db=loudness_db, augment=augment)
        self.root = Path(root)
        self.split = split
        self.labels = labels
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
        if classes is not None and not labels:
            raise ValueError("classes needs labels=True")
        if not self.root.is_dir():
            raise DataLayoutError(f"{self.root}: no such folder; {self.expected_layout}")

        if labels:
            if classes is None:
                self.classes = sorted(
                    d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))
                    and list_audio_files(d)
                )
            else:
                self.classes = list(classes)
                missing = [name for name in self.classes if not list_audio_files(self.root / name)]
                if missing:
                    raise DataLayoutError(f"{self.root}: no audio files in the folders of {len(missing)} of the "
                                          f"{len(self.classes)} classes: {missing}; {self.expected_layout}")
            files = [f for label in self.classes for f in list_audio_files(self.root / label)]
        else:
            self.classes = []
            files = unlabelled_audio_files(self.root)
        if not files:
            loose = [f.name for f in self.root.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES]
            hint = f" ({len(loose)} audio files lie directly in root: give them label folders)" if labels and loose else ""
            raise DataLayoutError(f"{self.root}: no audio files found{hint}; {self.expected_layout}")
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
                                  f"which is missing; {self.expected_layout}")
        relative = [f.relative_to(self.root).as_posix() for f in files]
        if self.split == "train":
            excluded = set().union(*(names for names in held_out.values() if names is not None))
            chosen = [f for f, name in zip(files, relative) if name not in excluded]
        else:
            chosen = [f for f, name in zip(files, relative) if name in held_out[self.split]]
        if not chosen:
            raise DataLayoutError(f"{self.root}: split={self.split!r} holds none of the {len(files)} audio files "
                                  f"(do the paths in the split lists match the files?); {self.expected_layout}")
        return chosen

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
        fields = {"label": self._class_index[path.relative_to(self.root).parts[0]]} if self.labels else {}
        return self.make_item(audio, path, **fields)


BATCHED_KEYS = ("audio", "length", "path", "tokens", "label")


def collate_audio(batch: list[dict]) -> dict:
    """Batch items of different lengths by zero-padding at the end.

    Args:
        batch: items of the datasets in this package (``audio``, optional ``length``,
            ``tokens``, ``label``, ``path``, and other fields such as ``transcript``).

    Returns:
        ``audio`` Tensor[B x L] float32 with L the longest item, ``lengths`` Tensor[B] long
        (samples of real audio: an item's ``length`` when it has one), ``mask`` Tensor[B x L]
        bool (True on real audio), ``path`` list of B str, and when the items have them
        ``tokens`` Tensor[B x L] long (padded with 0: use the mask) and ``label`` Tensor[B] long.
        Any other field the items share is gathered under its own name: Tensor[B] long when
        every value is an int (``sample_rate``, ``speaker_id``), else a list of B values
        (``transcript``).
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
    out.update(gather_fields(batch, BATCHED_KEYS))
    return out


def gather_fields(batch: list[dict], skip) -> dict:
    """Every field the items share, except those in ``skip``: Tensor[B] long when every value is an
    int, else a list of B values."""
    out = {}
    shared = set(batch[0]).difference(skip).intersection(*(item.keys() for item in batch[1:]))
    for key in sorted(shared):
        values = [item[key] for item in batch]
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        out[key] = torch.tensor(values, dtype=torch.long) if integers else values
    return out
