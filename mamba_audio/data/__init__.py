"""Datasets and corpora: folders of audio in the Speech Commands layout, and offline corpus builders."""

from mamba_audio.data.corpus import DIGITS, CorpusError, available_espeak_voices, build_spoken_digits
from mamba_audio.data.folder import AudioFolder, DataLayoutError, collate_audio

__all__ = [
    "DIGITS",
    "AudioFolder",
    "CorpusError",
    "DataLayoutError",
    "available_espeak_voices",
    "build_spoken_digits",
    "collate_audio",
]
