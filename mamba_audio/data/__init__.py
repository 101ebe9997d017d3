"""Datasets and corpora: folders of audio, public speech and music datasets, offline corpus builders."""

from mamba_audio.data.clips import ClipDataset, fit_to_length, normalize_loudness
from mamba_audio.data.corpus import CorpusError
from mamba_audio.data.datasets import SC09, LibriSpeech, LJSpeech, SpeechCommands
from mamba_audio.data.folder import AudioFolder, DataLayoutError, collate_audio
from mamba_audio.data.long_audio import LongAudioCrops
from mamba_audio.data.piano import build_piano_corpus
from mamba_audio.data.spoken_words import DIGITS, SPEECH_COMMANDS_WORDS, build_spoken_digits

__all__ = [
    "DIGITS",
    "SC09",
    "SPEECH_COMMANDS_WORDS",
    "AudioFolder",
    "ClipDataset",
    "CorpusError",
    "DataLayoutError",
    "LJSpeech",
    "LibriSpeech",
    "LongAudioCrops",
    "SpeechCommands",
    "build_piano_corpus",
    "build_spoken_digits",
    "collate_audio",
    "fit_to_length",
    "normalize_loudness",
]
