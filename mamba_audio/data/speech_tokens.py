"""A speech corpus tokenized by `mamba-audio tokenize`, read as text-to-speech examples.

    mamba-audio tokenize --codec CODEC --data CORPUS --out TOKENS    # tokenize_splits: the one writer
    dataset = SpeechTokens(TOKENS, text_tokenizer, voices, split="train")

The corpus is a sentence corpus (:class:`mamba_audio.data.sentences.SentenceCorpus`: transcripts,
phonemes and voices) or the LJSpeech layout (transcripts, one voice). :class:`SpeechTokens` is a thin
layer over :class:`mamba_audio.data.tokenized.TokenizedDataset`: it adds each clip's text ids (the
phonemes column for a "phonemes" front end, the normalised transcript for "chars") and voice index.

Items: ``text`` (T,) symbol ids, ``voice`` (index in ``voices``), ``tokens`` (K, F) long, ``frames`` F,
``clip_frames`` (the whole clip's frames, F before any cropping), ``id``. :func:`collate_speech_tokens`
pads a batch: text on the left to whole pooling periods (as the model wants it), tokens on the right.
:func:`speech_model_fields` gives the TTS model's fields that the tokenized data fixes (codec layout,
voices, symbol table).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.tokenized import TokenizedDataset, collate_codec_tokens, read_manifest
from mamba_audio.text import TextTokenizer

Tensor = torch.Tensor
SINGLE_VOICE = "default"  # the voice of clips without one (the LJSpeech layout: one speaker)


def clip_voice(meta: dict) -> str:
    """The voice of a clip's metadata (SINGLE_VOICE where the corpus names none)."""
    return meta.get("voice") or SINGLE_VOICE


def clip_id(meta: dict) -> str:
    """A clip's id: the sentence corpus's ``id``, else its file's stem."""
    return str(meta.get("id") or Path(meta.get("path", "")).stem)


def _split_metadata(root: Path) -> dict[str, list[dict]]:
    """Every split's per-clip metadata, without loading the tokens."""
    manifest = read_manifest(root)
    lines = {}
    for split in manifest["splits"]:
        path = root / f"{split}.jsonl"
        if not path.is_file():
            raise DataLayoutError(f"{root}: {path.name} is missing")
        lines[split] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def speech_model_fields(root: str | os.PathLike, front_end: str) -> dict:
    """The TTSConfig fields the tokenized corpus at ``root`` fixes: ``num_codebooks``, ``codebook_size``,
    ``frame_rate``, ``sample_rate``, ``codec`` (for the record), ``voices`` (sorted, every split's) and
    ``text_symbols`` (for "phonemes" the inventory of the phonemes column; for "chars" the default table)."""
    root = Path(root)
    codec = read_manifest(root)["codec"]
    metadata = [meta for split in _split_metadata(root).values() for meta in split]
    if not any("transcript" in meta or "normalized_transcript" in meta for meta in metadata):
        raise DataLayoutError(f"{root}: its clips have no transcripts; tokenize a sentence corpus or an "
                              "LJSpeech-layout corpus for text-to-speech")
    symbols = ""
    if front_end == "phonemes":
        phonemes = [meta.get("phonemes") or "" for meta in metadata]
        if not any(phonemes):
            raise DataLayoutError(f"{root}: its clips have no phonemes (a sentence corpus's phonemes.csv); "
                                  "use the chars front end (model.text_front_end: chars)")
        symbols = TextTokenizer.build_symbols(phonemes)
    return {"num_codebooks": codec["num_codebooks"], "codebook_size": codec["codebook_size"],
            "frame_rate": codec["frame_rate"], "sample_rate": codec["sample_rate"],
            "codec": codec.get("spec") or codec["class"], "voices": sorted({clip_voice(m) for m in metadata}),
            "text_symbols": symbols}


class SpeechTokens(Dataset):
    """Text, voice and codec tokens of one split of a tokenized speech corpus (see the module docstring).

    Args:
        root: the folder `mamba-audio tokenize` (:func:`tokenize_splits`) wrote.
        text: the model's text tokenizer ("phonemes" reads each clip's phonemes, "chars" its transcript).
        voices: the model's voice names; a clip's voice is its index here.
        split: a split of the tokenized corpus ("train", "heldout").
        max_frames: crop longer token sequences to their first ``max_frames`` frames (None: keep them whole).
    """

    def __init__(self, root: str | os.PathLike, text: TextTokenizer, voices: list[str], split: str = "train",
                 max_frames: int | None = None):
        self.tokens = TokenizedDataset(root, split, segment_frames=max_frames)
        self.root, self.text, self.voices = Path(root), text, list(voices)
        metadata = self.tokens.metadata
        unknown = sorted({clip_voice(meta) for meta in metadata} - set(voices))
        if unknown:
            raise ValueError(f"corpus voices {unknown} are not among the model's voices {voices}")
        self._text_ids = []
        for meta in metadata:  # symbol errors surface here, not mid-training
            if text.front_end == "phonemes":
                symbols = meta.get("phonemes")
                if not symbols:
                    raise DataLayoutError(f"{self.root}: clip {clip_id(meta)} has no phonemes in phonemes.csv")
            else:
                transcript = meta.get("normalized_transcript") or meta.get("transcript")
                if not transcript:
                    raise DataLayoutError(f"{self.root}: clip {clip_id(meta)} has no transcript; tokenize a "
                                          "sentence corpus or an LJSpeech-layout corpus")
                symbols = text.to_symbols(transcript)
            self._text_ids.append(text.encode_symbols(symbols))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        item = self.tokens[index]
        return {"text": self._text_ids[index], "voice": self.voices.index(clip_voice(item)),
                "tokens": item["tokens"], "frames": item["num_frames"],
                "clip_frames": self.tokens.metadata[index]["num_frames"], "id": clip_id(item)}

    def frames_per_symbol(self) -> float:
        """Codec frames per text symbol over the split (whole clips): sum of frames / sum of symbols."""
        frames = sum(meta["num_frames"] for meta in self.tokens.metadata)
        return frames / max(1, sum(ids.shape[0] for ids in self._text_ids))


def collate_speech_tokens(items: list[dict], pad_text) -> dict:
    """A batch: ``text`` (B, T) through ``pad_text`` (the model's), ``voice`` (B,), ``tokens`` (B, K, F)
    zero-padded on the right (:func:`collate_codec_tokens`), ``frames`` (B,), ``clip_frames`` (B,) (the whole
    clips' frames, before cropping)."""
    padded = collate_codec_tokens([{"tokens": item["tokens"]} for item in items])
    return {"text": pad_text([item["text"] for item in items]), "voice": torch.tensor([i["voice"] for i in items]),
            "tokens": padded["tokens"], "frames": padded["lengths"],
            "clip_frames": torch.tensor([item.get("clip_frames", item["frames"]) for item in items])}
