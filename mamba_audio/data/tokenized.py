"""Datasets pre-tokenised by a codec, so that training a token model never runs the codec.

:func:`audio_splits` opens a corpus folder as its named splits (whatever layout it has);
:func:`tokenize_splits` encodes every clip of every split once and writes::

    out/
        manifest.json            the codec (class, spec, rates, K, C), the source folder, the splits and counts
        codec/                   a ConvCodec's checkpoint (config.json + model.safetensors), so tokens decode
        <split>.safetensors      tokens Tensor[K x total frames] (int16 when C <= 32768, else int32) and
                                 offsets Tensor[N + 1] int64: clip i is tokens[:, offsets[i]:offsets[i + 1]]
        <split>.jsonl            one JSON object per clip: num_samples, num_frames, path (relative to the
                                 source) and its metadata (label and class, transcript, phonemes, voice, ...)

:class:`TokenizedDataset` reads a split back: items ``tokens`` Tensor[K x F] long, ``num_frames`` and the
metadata; :func:`collate_codec_tokens` batches them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mamba_audio.data.folder import SPLIT_LISTS, AudioFolder, DataLayoutError, gather_fields, unlabelled_audio_files

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_NOT_METADATA = {"audio", "tokens", "length", "sample_rate"}  # per-item fields that are not written as metadata


# -- reading a corpus as splits -------------------------------------------------------------------
def audio_splits(root: str | os.PathLike, sample_rate: int, *, train_generator: torch.Generator | None = None,
                 **options) -> dict[str, Dataset]:
    """The splits of the corpus at ``root``, by its layout:

    - a sentence corpus (``metadata.csv`` + ``voices.csv``, :class:`SentenceCorpus`): "train" and "heldout";
    - the LJSpeech layout (``metadata.csv`` + ``wavs/``): "train" (every clip);
    - a folder of audio (:class:`AudioFolder`): "train", plus "validation" and "test" where their lists
      exist; labelled by first-level sub-folder when no audio lies directly in ``root``.

    Args:
        root: the corpus folder.
        sample_rate: Hz; files at other rates are resampled.
        train_generator: crop the train split at random starts drawn from it (with ``segment_samples``).
        **options: the options of :class:`mamba_audio.data.clips.ClipDataset` for every split.
    """
    from mamba_audio.data.datasets import LJSpeech

    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root}: no such folder")
    train = dict(options, random_crop=train_generator is not None, generator=train_generator)
    if (root / "metadata.csv").is_file() and (root / "voices.csv").is_file():
        from mamba_audio.data.sentences import SentenceCorpus

        splits = {"train": SentenceCorpus(root, split="train", sample_rate=sample_rate, **train)}
        if (root / "heldout.txt").is_file() and (root / "heldout.txt").read_text().split():
            splits["heldout"] = SentenceCorpus(root, split="heldout", sample_rate=sample_rate, **options)
        return splits
    if (root / "metadata.csv").is_file() or (root / "LJSpeech-1.1" / "metadata.csv").is_file():
        return {"train": LJSpeech(root, sample_rate=sample_rate, **train)}
    labels = not any(f.parent == root for f in unlabelled_audio_files(root))
    splits = {"train": AudioFolder(root, sample_rate, split="train", labels=labels, **train)}
    for name, listing in SPLIT_LISTS.items():
        if (root / listing).is_file():
            splits[name] = AudioFolder(root, sample_rate, split=name, labels=labels, **options)
    return splits


# -- writing ----------------------------------------------------------------------------------------
def _metadata(item: dict, root: Path, classes: list[str]) -> dict:
    """The JSON-serialisable per-clip fields of a dataset item (path relative to the corpus root)."""
    meta = {}
    for key, value in item.items():
        if key in _NOT_METADATA:
            continue
        if key == "path":
            path = Path(value)
            value = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (str, int, float, bool)) or value is None:
            meta[key] = value
    if "label" in meta and classes:
        meta["class_name"] = classes[meta["label"]]
    return meta


def codec_description(codec) -> dict:
    """What a tokenized dataset records about its codec."""
    return {"class": type(codec).__name__, "sample_rate": codec.sample_rate, "num_codebooks": codec.num_codebooks,
            "codebook_size": codec.codebook_size, "hop_length": codec.hop_length, "frame_rate": codec.frame_rate}


@torch.no_grad()
def tokenize_splits(codec, splits: dict[str, Dataset], out: str | os.PathLike, *, source: str | os.PathLike = "",
                    codec_spec: str = "", progress: bool = True) -> Path:
    """Encode every clip of ``splits`` (whole clips, one at a time) with ``codec`` into ``out``.

    Returns ``out``. Writes every file through a temporary name, the manifest last, so a folder with a
    manifest is complete.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted run leaves no manifest behind
    description = codec_description(codec)
    token_dtype = torch.int16 if codec.codebook_size <= 2**15 else torch.int32
    if hasattr(codec, "save_pretrained"):
        codec.save_pretrained(out / "codec")
    counts = {}
    for name, dataset in splits.items():
        if getattr(dataset, "sample_rate", codec.sample_rate) != codec.sample_rate:
            raise ValueError(f"split {name!r} reads audio at {dataset.sample_rate} Hz, the codec runs at "
                             f"{codec.sample_rate} Hz")
        root = Path(getattr(dataset, "root", source or "."))
        classes = list(getattr(dataset, "classes", []) or [])
        chunks, offsets, lines = [], [0], []
        for index in tqdm(range(len(dataset)), desc=f"tokenizing {name}", unit="clip", disable=not progress):
            item = dataset[index]
            audio = item["audio"][: item.get("length", item["audio"].shape[-1])]
            tokens = codec.encode(audio[None], sample_rate=codec.sample_rate)[0].cpu()  # (K, F)
            chunks.append(tokens.to(token_dtype))
            offsets.append(offsets[-1] + tokens.shape[1])
            lines.append(json.dumps({"num_samples": int(audio.shape[0]), "num_frames": int(tokens.shape[1]),
                                     **_metadata(item, root, classes)}))
        tensors = {"tokens": torch.cat(chunks, 1).contiguous(), "offsets": torch.tensor(offsets, dtype=torch.long)}
        _write(out / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp))
        _write(out / f"{name}.jsonl", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
        counts[name] = {"clips": len(lines), "frames": offsets[-1]}
    manifest = {"format_version": FORMAT_VERSION, "codec": {**description, "spec": codec_spec},
                "source": str(source), "splits": counts}
    _write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return out


def _write(path: Path, write) -> None:
    from mamba_audio.models.pretrained import _atomic_write

    _atomic_write(path, write)


# -- reading ----------------------------------------------------------------------------------------
def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a tokenized dataset folder, with errors that say what is wrong."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataLayoutError(f"{root}: no {MANIFEST}; not a tokenized dataset, or its tokenizing did not finish "
                              "(make one with `mamba-audio tokenize --codec CODEC --data ROOT --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataLayoutError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataLayoutError(f"{path}: format_version {manifest.get('format_version')!r}, this reader reads "
                              f"{FORMAT_VERSION}")
    return manifest


class TokenizedDataset(Dataset):
    """One split of a tokenized dataset (see the module docstring).

    Args:
        root: the folder ``tokenize_splits`` wrote.
        split: a split name of its manifest (e.g. "train", "test", "heldout").
        segment_frames: crop longer clips to this many frames (shorter ones are left as they are:
            :func:`collate_codec_tokens` pads).
        random_crop: crop at a random start drawn from ``generator``; otherwise from the first frame.
        generator: torch.Generator for the random crops.

    Attributes:
        codec_info: the manifest's codec entry (class, spec, sample_rate, num_codebooks, codebook_size,
            hop_length, frame_rate). ``metadata``: the per-clip dicts.

    Items: ``tokens`` Tensor[K x F] long, ``num_frames`` (F after cropping), ``index`` and the clip's
    metadata (``num_samples``, ``path``, ``label``, ``transcript``, ...).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, segment_frames: int | None = None,
                 random_crop: bool = False, generator: torch.Generator | None = None):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if split not in manifest["splits"]:
            raise DataLayoutError(f"{self.root}: no split {split!r}; it has {sorted(manifest['splits'])}")
        if segment_frames is not None and segment_frames < 1:
            raise ValueError(f"segment_frames must be positive, got {segment_frames}")
        self.split, self.codec_info = split, manifest["codec"]
        self.segment_frames, self.random_crop, self.generator = segment_frames, random_crop, generator
        try:
            tensors = load_file(self.root / f"{split}.safetensors")
        except (SafetensorError, OSError) as err:
            raise DataLayoutError(f"{self.root / f'{split}.safetensors'} is missing or unreadable: {err}") from err
        self.tokens, self.offsets = tensors.get("tokens"), tensors.get("offsets")
        lines_path = self.root / f"{split}.jsonl"
        if not lines_path.is_file():
            raise DataLayoutError(f"{self.root}: {lines_path.name} is missing")
        self.metadata = [json.loads(line) for line in lines_path.read_text().splitlines() if line.strip()]
        self._check()

    def _check(self) -> None:
        where, info = self.root / f"{self.split}.safetensors", self.codec_info
        if self.tokens is None or self.offsets is None:
            raise DataLayoutError(f"{where} must hold 'tokens' and 'offsets'")
        if self.tokens.dim() != 2 or self.tokens.shape[0] != info["num_codebooks"]:
            raise DataLayoutError(f"{where}: tokens of shape {tuple(self.tokens.shape)}, the manifest's codec has "
                                  f"{info['num_codebooks']} codebooks")
        count = len(self.offsets) - 1
        if count != len(self.metadata) or int(self.offsets[-1]) != self.tokens.shape[1] or count < 1:
            raise DataLayoutError(f"{where}: {count} clips and {self.tokens.shape[1]} frames, but "
                                  f"{self.split}.jsonl lists {len(self.metadata)} clips")
        if self.tokens.numel() and (self.tokens.min() < 0 or self.tokens.max() >= info["codebook_size"]):
            raise DataLayoutError(f"{where}: token ids outside [0, {info['codebook_size']})")

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, index: int) -> dict:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if self.segment_frames is not None and end - start > self.segment_frames:
            shift = 0
            if self.random_crop:
                shift = int(torch.randint(0, end - start - self.segment_frames + 1, (1,), generator=self.generator))
            start, end = start + shift, start + shift + self.segment_frames
        return {**self.metadata[index], "tokens": self.tokens[:, start:end].long(), "num_frames": end - start,
                "index": index}

    def codec(self, device: str | torch.device = "cpu"):
        """The codec that made these tokens (to decode them), from ``codec/`` or the manifest's spec."""
        from mamba_audio.codecs import load_codec

        saved = self.root / "codec"
        return load_codec(str(saved) if saved.is_dir() else self.codec_info["spec"], device=device,
                          sample_rate=self.codec_info["sample_rate"])


def collate_codec_tokens(batch: list[dict]) -> dict:
    """Batch items of :class:`TokenizedDataset`: ``tokens`` Tensor[B x K x F] long (zero-padded at the end,
    F the longest), ``lengths`` Tensor[B] (frames), ``mask`` Tensor[B x F] bool (True on real frames), and
    every other field the items share: Tensor[B] long for ints (``label``, ``speaker_id``), else a list."""
    if not batch:
        raise ValueError("collate_codec_tokens: empty batch")
    lengths = torch.tensor([item["tokens"].shape[1] for item in batch], dtype=torch.long)
    tokens = torch.zeros(len(batch), batch[0]["tokens"].shape[0], int(lengths.max()), dtype=torch.long)
    for row, item in enumerate(batch):
        tokens[row, :, : item["tokens"].shape[1]] = item["tokens"]
    return {"tokens": tokens, "lengths": lengths, "mask": torch.arange(tokens.shape[2])[None] < lengths[:, None],
            **gather_fields(batch, {"tokens"})}
