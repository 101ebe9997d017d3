"""Long recordings cut into fixed-length crops: YouTubeMix and other music corpora.

Layout: a folder of long audio files (``root/*.wav``, also .flac and .ogg, nested folders too;
folders starting with "_" or "." are skipped), e.g. YouTubeMix's 4 hours of solo piano
(https://huggingface.co/datasets/krandiash/youtubemix) or the piano corpus that
:func:`mamba_audio.data.build_piano_corpus` renders offline.

The split is by file, as in SaShiMi: the sorted files are cut into a leading training part, then
validation, then test (88% / 6% / 6% by default), so no recording is in two splits.

Training crops are random: crop ``i`` of epoch ``e`` is drawn from a generator seeded by
(seed, e, i), uniformly over every position in the split's audio, so the crops depend on neither
worker order nor batch size and a resumed run sees the same crops. Evaluation crops are a
fixed tiling: each file cut into consecutive non-overlapping crops (the tail shorter than a crop
is dropped; a file shorter than one crop is one zero-padded item).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mamba_audio.audio import load_audio
from mamba_audio.data.clips import ClipDataset
from mamba_audio.data.folder import SPLITS, DataLayoutError, unlabelled_audio_files

YOUTUBEMIX_URL = "https://huggingface.co/datasets/krandiash/youtubemix"
DEFAULT_SPLIT_FRACTIONS = (0.88, 0.06, 0.06)  # train, validation, test: SaShiMi's YouTubeMix split

EXPECTED_LAYOUT = (
    "expected a folder of long recordings, root/*.wav (also .flac, .ogg), split by file in sorted order; "
    f"YouTubeMix is at {YOUTUBEMIX_URL}, and mamba_audio.data.build_piano_corpus(root) renders a "
    "piano stand-in offline"
)


def split_files(files: list[Path], fractions: tuple[float, float, float]) -> dict[str, list[Path]]:
    """Cut sorted files into train, validation and test by ``fractions`` (train gets the rest).

    With 3 or more files, a split with a positive fraction gets at least one file.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    count = len(files)

    def held_out(fraction: float) -> int:
        n = round(fraction * count)
        return max(n, 1) if fraction > 0 and count >= 3 else n

    n_validation, n_test = held_out(fractions[1]), held_out(fractions[2])
    n_train = count - n_validation - n_test
    return {"train": files[:n_train], "validation": files[n_train:n_train + n_validation],
            "test": files[n_train + n_validation:]}


class LongAudioCrops(ClipDataset):
    """Fixed-length crops of long recordings (module docstring: layout, split, crops).

    Args:
        root: the folder of recordings.
        segment_samples: samples per crop, at ``sample_rate``.
        sample_rate: Hz; files at other rates are resampled.
        split: None (every file), "train", "validation" or "test".
        split_fractions: (train, validation, test) shares of the files.
        random_crops: random crops (default for "train") or the fixed tiling (default otherwise).
        crops_per_epoch: items of an epoch with random crops; default: the split's audio
            divided by ``segment_samples``, so an epoch hears about every sample once.
        seed: seeds the random crops together with the epoch (see :meth:`set_epoch`).
        **options: the other options of :class:`mamba_audio.data.clips.ClipDataset`
            (tokenizer, mix_to_mono, max_seconds, loudness, loudness_db, augment).

    Attributes:
        files: the recordings of this split, sorted.
        file_samples: their lengths in samples at ``sample_rate``.

    Items: ``audio`` Tensor[segment_samples] float32, ``length``, ``path``, ``sample_rate``,
    ``start`` (the crop's first sample in the file, at ``sample_rate``), ``tokens`` with a
    tokenizer.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        segment_samples: int,
        *,
        sample_rate: int = 16_000,
        split: str | None = None,
        split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
        random_crops: bool | None = None,
        crops_per_epoch: int | None = None,
        seed: int = 0,
        **options,
    ):
        for name in ("random_crop", "generator"):
            if name in options:
                raise TypeError(f"LongAudioCrops chooses its crops itself (random_crops, seed): {name} is not an option")
        super().__init__(sample_rate, segment_samples=segment_samples, **options)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataLayoutError(f"{self.root}: no such folder; {EXPECTED_LAYOUT}")
        files = unlabelled_audio_files(self.root)
        if not files:
            raise DataLayoutError(f"{self.root}: no audio files found; {EXPECTED_LAYOUT}")
        self.split = split
        self.files = files if split is None else split_files(files, tuple(split_fractions))[split]
        if not self.files:
            raise DataLayoutError(f"{self.root}: split={split!r} gets none of the {len(files)} files with "
                                  f"split_fractions={tuple(split_fractions)}; add recordings or change the fractions")
        self.file_samples = [self._samples_at_rate(path) for path in self.files]
        self.random_crops = split == "train" if random_crops is None else random_crops
        self.seed = seed
        self.epoch = 0
        if crops_per_epoch is not None and crops_per_epoch < 1:
            raise ValueError(f"crops_per_epoch must be positive, got {crops_per_epoch}")
        self.crops_per_epoch = crops_per_epoch or max(1, sum(self.file_samples) // segment_samples)
        # Random crops: every start position in the split, numbered file after file.
        self._starts_per_file = np.array([max(1, n - segment_samples + 1) for n in self.file_samples])
        self._first_start = np.concatenate([[0], np.cumsum(self._starts_per_file)])
        self._tiling = [(f, start) for f, n in enumerate(self.file_samples)
                        for start in range(0, max(n - segment_samples, 0) + 1, segment_samples)]
        self._cached: tuple[int, torch.Tensor] | None = None

    def _samples_at_rate(self, path: Path) -> int:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DataLayoutError(f"{path}: cannot read as audio ({err}); {EXPECTED_LAYOUT}") from err
        if info.frames == 0:
            raise DataLayoutError(f"{path}: empty audio (0 frames)")
        # The length torchaudio's resampling gives (what load_audio returns).
        return info.frames if info.samplerate == self.sample_rate else math.ceil(info.frames * self.sample_rate / info.samplerate)

    def set_epoch(self, epoch: int) -> None:
        """Draw the random crops of ``epoch`` (call it before each epoch, as with DistributedSampler).

        DataLoader worker processes hold copies of the dataset: with ``persistent_workers`` the
        call does not reach them, so use fresh workers per epoch.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.crops_per_epoch if self.random_crops else len(self._tiling)

    def crop_position(self, index: int) -> tuple[int, int]:
        """(file index, start sample) of item ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        if not self.random_crops:
            return self._tiling[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        position = int(rng.integers(self._first_start[-1]))
        file_index = int(np.searchsorted(self._first_start, position, side="right")) - 1
        return file_index, position - int(self._first_start[file_index])

    def _read(self, file_index: int) -> torch.Tensor:
        # One file is kept: the evaluation tiling reads each file's crops one after another.
        if self._cached is None or self._cached[0] != file_index:
            path = self.files[file_index]
            audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
            self._cached = (file_index, audio)
        return self._cached[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cached": None}  # workers need not receive a decoded file

    def __getitem__(self, index: int) -> dict:
        file_index, start = self.crop_position(index)
        crop = self._read(file_index)[start:start + self.segment_samples]
        return self.make_item(crop, self.files[file_index], start=start)
