"""A sentence corpus as codec tokens: tokenized once to disk, so TTS training never runs the codec.

    tokenize_corpus(corpus, codec, "tokens.safetensors")     # {clip id: Tensor[K x F] int16}
    dataset = SpeechTokens(corpus_root, "tokens.safetensors", text_tokenizer, voices, split="train")

Items: ``text`` (T,) symbol ids, ``voice`` (index in ``voices``), ``tokens`` (K, F) long, ``frames`` F.
:func:`collate_speech_tokens` pads a batch: text on the left to whole pooling periods (as the model
wants it), tokens on the right.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mamba_audio.codecs import AudioCodec
from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.sentences import SentenceCorpus
from mamba_audio.text import TextTokenizer

Tensor = torch.Tensor


@torch.no_grad()
def tokenize_corpus(corpus: SentenceCorpus, codec: AudioCodec, out_path: str | os.PathLike,
                    progress: bool = True) -> Path:
    """Encode every clip of ``corpus`` (read at the codec's rate) with ``codec`` into ``out_path``
    (safetensors: clip id -> Tensor[K x F] int16; the codec's description in the metadata)."""
    if corpus.sample_rate != codec.sample_rate:
        raise ValueError(f"corpus read at {corpus.sample_rate} Hz but the codec runs at {codec.sample_rate} Hz")
    device = next(codec.parameters()).device if isinstance(codec, torch.nn.Module) else torch.device("cpu")
    tensors = {}
    for index in tqdm(range(len(corpus)), desc="tokenizing", unit="clip", disable=not progress):
        item = corpus[index]
        tokens = codec.encode(item["audio"][None].to(device), codec.sample_rate)[0]
        tensors[item["id"]] = tokens.to(torch.int16 if codec.codebook_size <= 2**15 else torch.int32).cpu().contiguous()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_path, metadata={"codec": json.dumps({
        "description": repr(codec), "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size,
        "sample_rate": codec.sample_rate, "hop_length": codec.hop_length})})
    return out_path


def read_token_metadata(path: str | os.PathLike) -> dict:
    """The codec description stored by :func:`tokenize_corpus`."""
    with safe_open(str(path), "pt") as handle:
        return json.loads((handle.metadata() or {}).get("codec", "{}"))


class SpeechTokens(Dataset):
    """Text, voice and codec tokens of a sentence corpus's clips (see the module docstring).

    Args:
        corpus_root: the corpus folder (read for metadata, voices, phonemes and the split; no audio).
        tokens_path: the file :func:`tokenize_corpus` wrote for it.
        text: the model's text tokenizer ("phonemes" reads the corpus's phonemes.csv, "chars" the text).
        voices: the model's voice names; a clip's voice is its index here.
        split: None, "train" or "heldout".
        max_frames: crop longer token sequences to this many frames (None: keep them whole).
    """

    def __init__(self, corpus_root: str | os.PathLike, tokens_path: str | os.PathLike, text: TextTokenizer,
                 voices: list[str], split: str | None = "train", max_frames: int | None = None):
        self.corpus = SentenceCorpus(corpus_root, split=split)
        tokens_path = Path(tokens_path)
        if not tokens_path.is_file():
            raise DataLayoutError(f"{tokens_path} does not exist; write it with tokenize_corpus "
                                  "(`mamba-audio tokenize-corpus`)")
        with safe_open(str(tokens_path), "pt") as handle:
            self.tokens = {key: handle.get_tensor(key) for key in handle.keys()}
        missing = [clip_id for clip_id, _, _ in self.corpus.entries if clip_id not in self.tokens]
        if missing:
            raise DataLayoutError(f"{tokens_path} has no tokens for {len(missing)} clips of {corpus_root} "
                                  f"(first: {missing[0]}); tokenize this corpus again")
        unknown = sorted(set(self.corpus.voice_of[c] for c, _, _ in self.corpus.entries) - set(voices))
        if unknown:
            raise ValueError(f"corpus voices {unknown} are not among the model's voices {voices}")
        self.text, self.voices, self.max_frames = text, list(voices), max_frames
        self._text_ids = {}
        for clip_id, _, normalized in self.corpus.entries:  # symbol errors surface here, not mid-training
            symbols = (self.corpus.phonemes_of.get(clip_id) if text.front_end == "phonemes"
                       else text.to_symbols(normalized))
            if not symbols:
                raise DataLayoutError(f"{corpus_root}: clip {clip_id} has no phonemes in phonemes.csv")
            self._text_ids[clip_id] = text.encode_symbols(symbols)

    def __len__(self) -> int:
        return len(self.corpus.entries)

    def __getitem__(self, index: int) -> dict:
        clip_id = self.corpus.entries[index][0]
        tokens = self.tokens[clip_id].long()
        if self.max_frames is not None:
            tokens = tokens[:, : self.max_frames]
        return {"text": self._text_ids[clip_id], "voice": self.voices.index(self.corpus.voice_of[clip_id]),
                "tokens": tokens, "frames": tokens.shape[1], "id": clip_id}


def collate_speech_tokens(items: list[dict], pad_text) -> dict:
    """A batch: ``text`` (B, T) through ``pad_text`` (the model's), ``voice`` (B,), ``tokens`` (B, K, F)
    zero-padded on the right, ``frames`` (B,)."""
    frames = torch.tensor([item["frames"] for item in items])
    tokens = torch.zeros(len(items), items[0]["tokens"].shape[0], int(frames.max()), dtype=torch.long)
    for row, item in enumerate(items):
        tokens[row, :, : item["frames"]] = item["tokens"]
    return {"text": pad_text([item["text"] for item in items]), "voice": torch.tensor([i["voice"] for i in items]),
            "tokens": tokens, "frames": frames}
