"""Datasets and corpora: folders of audio, public speech and music datasets, offline corpus builders."""

from mamba_audio.data.clips import ClipDataset, fit_to_length, normalize_loudness
from mamba_audio.data.corpus import DIGITS, CorpusError, available_espeak_voices, build_spoken_digits
from mamba_audio.data.datasets import SC09, SPEECH_COMMANDS_WORDS, LibriSpeech, LJSpeech, SpeechCommands
from mamba_audio.data.folder import AudioFolder, DataLayoutError, collate_audio
from mamba_audio.data.long_audio import LongAudioCrops

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
    "available_espeak_voices",
    "build_spoken_digits",
    "collate_audio",
    "fit_to_length",
    "normalize_loudness",
]
