"""A speech corpus tokenized by `mamba-audio tokenize`, read as text-to-speech examples.

    mamba-audio tokenize --codec CODEC --data CORPUS --out TOKENS    # tokenize_splits: the one writer
    dataset = SpeechTokens(TOKENS, text_tokenizer, voices, split="train")

The corpus is a sentence corpus (:class:`mamba_audio.data.sentences.SentenceCorpus`: transcripts,
phonemes and voices) or the LJSpeech layout (transcripts, one voice). :class:`SpeechTokens` is a thin
layer over :class:`mamba_audio.data.tokenized.TokenizedDataset`: it adds each clip's text ids (the
phonemes column for a "phonemes" front end, the aligned phones for "flite", the normalised transcript
for "chars") and voice index, and for "flite" each symbol's duration in codec frames.

Items: ``text`` (T,) symbol ids, ``voice`` (index in ``voices``), ``tokens`` (K, F) long, ``frames`` F,
``clip_frames`` (the whole clip's frames, F before any cropping), ``id``, and for "flite" ``durations``
(T,) long (:func:`symbol_frames`, summing to ``clip_frames``). :func:`collate_speech_tokens` pads a
batch: text and durations on the left to whole pooling periods (as the model wants them), tokens on
the right.
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


def symbol_frames(phone_ends: str, frame_rate: float, num_frames: int) -> Tensor:
    """Each symbol's codec frames from its end times (seconds, space-separated, as a sentence corpus's
    alignments.csv holds them): the boundaries round(end * frame_rate), kept within [0, F] and
    non-decreasing, the last one at F -> (T,) long summing to F = ``num_frames``."""
    try:
        ends = torch.tensor([float(end) for end in phone_ends.split()], dtype=torch.float64)
    except ValueError:
        raise DataLayoutError(f"phone end times must be numbers, got {phone_ends[:80]!r}") from None
    if ends.numel() == 0:
        raise DataLayoutError("no phone end times")
    bounds = torch.cummax((ends * frame_rate).round().long().clamp(0, num_frames), 0).values
    bounds[-1] = num_frames
    return torch.diff(bounds, prepend=bounds.new_zeros(1))


def speech_model_fields(root: str | os.PathLike, front_end: str) -> dict:
    """The TTSConfig fields the tokenized corpus at ``root`` fixes: ``num_codebooks``, ``codebook_size``,
    ``frame_rate``, ``sample_rate``, ``codec`` (for the record), ``voices`` (sorted, every split's) and
    ``text_symbols`` (for "phonemes" the inventory of the phonemes column; for "chars" and "flite" the
    default table)."""
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
    if front_end == "flite" and not any(meta.get("flite_phones") for meta in metadata):
        raise DataLayoutError(f"{root}: its clips have no flite alignment (a sentence corpus's alignments.csv, "
                              "from flite voices only; align_sentence_corpus adds it to an older corpus, then "
                              "tokenize again)")
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
        frame_rate = read_manifest(root)["codec"]["frame_rate"]
        self._text_ids, self._durations = [], []
        for meta in metadata:  # symbol errors surface here, not mid-training
            if text.front_end == "phonemes":
                symbols = meta.get("phonemes")
                if not symbols:
                    raise DataLayoutError(f"{self.root}: clip {clip_id(meta)} has no phonemes in phonemes.csv")
            elif text.front_end == "flite":
                symbols = meta.get("flite_phones")
                if not symbols or not meta.get("phone_ends"):
                    raise DataLayoutError(f"{self.root}: clip {clip_id(meta)} has no flite alignment (alignments.csv "
                                          "of a sentence corpus spoken by flite voices)")
                durations = symbol_frames(meta["phone_ends"], frame_rate, meta["num_frames"])
                if durations.shape[0] != len(symbols):
                    raise DataLayoutError(f"{self.root}: clip {clip_id(meta)} has {len(symbols)} phones but "
                                          f"{durations.shape[0]} end times")
                self._durations.append(durations)
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
        out = {"text": self._text_ids[index], "voice": self.voices.index(clip_voice(item)),
               "tokens": item["tokens"], "frames": item["num_frames"],
               "clip_frames": self.tokens.metadata[index]["num_frames"], "id": clip_id(item)}
        if self._durations:
            out["durations"] = self._durations[index]
        return out

    def frames_per_symbol(self) -> float:
        """Codec frames per text symbol over the split (whole clips): sum of frames / sum of symbols."""
        frames = sum(meta["num_frames"] for meta in self.tokens.metadata)
        return frames / max(1, sum(ids.shape[0] for ids in self._text_ids))


def collate_speech_tokens(items: list[dict], pad_text) -> dict:
    """A batch: ``text`` (B, T) through ``pad_text`` (the model's), ``voice`` (B,), ``tokens`` (B, K, F)
    zero-padded on the right (:func:`collate_codec_tokens`), ``frames`` (B,), ``clip_frames`` (B,) (the whole
    clips' frames, before cropping), and where the items have them ``durations`` (B, T) padded as the text
    (with zeros)."""
    padded = collate_codec_tokens([{"tokens": item["tokens"]} for item in items])
    batch = {"text": pad_text([item["text"] for item in items]), "voice": torch.tensor([i["voice"] for i in items]),
             "tokens": padded["tokens"], "frames": padded["lengths"],
             "clip_frames": torch.tensor([item.get("clip_frames", item["frames"]) for item in items])}
    if "durations" in items[0]:
        batch["durations"] = pad_text([item["durations"] for item in items])
    return batch
