"""Offline corpus of spoken words, synthesized with espeak-ng and flite, in the Speech Commands layout.

The Mamba paper's SC09 experiment uses one-second clips of the ten digits at 16 kHz. We cannot
download SC09 here, so :func:`build_spoken_digits` synthesizes a stand-in with the same shape:
``root/<word>/<voice>_nohash_<index>.wav`` plus ``validation_list.txt`` and
``testing_list.txt``, which :class:`mamba_audio.data.AudioFolder` reads like the real thing.
Other words work the same way (``SPEECH_COMMANDS_WORDS``: the 35 keywords of Speech Commands).

Each clip varies the synthesizer and voice, pitch, speaking rate, loudness, position in the clip
and a little background noise. Every random choice comes from a generator seeded by
(seed, word, index), so the same arguments give byte-identical files whatever the thread
scheduling.
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from mamba_audio.audio import save_audio
from mamba_audio.data import speech_synthesis
from mamba_audio.data.corpus import CorpusError, corpus_is_built, staged_build

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# The 35 words of Speech Commands v0.02, in label order (sorted): keywords to synthesize, and the classes
# of mamba_audio.data.SpeechCommands.
SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off",
    "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two",
    "up", "visual", "wow", "yes", "zero",
)
SYNTHESIZERS = speech_synthesis.SYNTHESIZERS
DEFAULT_VOICES = {speech_synthesis.ESPEAK_NG: speech_synthesis.ESPEAK_VOICES,
                  speech_synthesis.FLITE: speech_synthesis.FLITE_VOICES}

BUILDER = "spoken_words"
BUILDER_VERSION = 2  # 2: flite voices beside espeak-ng's
HOLDOUT_FRACTION = 0.1  # of each word's clips, for validation and again for test

# Ranges of the per-clip random choices.
PITCH_RANGE = (20, 80)  # espeak-ng -p, 0..99 (flite: a factor on its pitch)
WORDS_PER_MINUTE_RANGE = (120, 200)  # espeak-ng -s
AMPLITUDE_RANGE = (70, 130)  # espeak-ng -a, default 100 (flite has no such option)
PEAK_DBFS_RANGE = (-18.0, -1.0)  # level of the clip's peak after synthesis
SNR_DB_RANGE = (20.0, 40.0)  # speech RMS over white noise RMS
SILENCE_THRESHOLD = 0.02  # of the peak: quieter leading and trailing samples are trimmed
EDGE_MARGIN_SECONDS = 0.01  # kept around the trimmed word
FADE_SECONDS = 0.02  # fade-out when a word is longer than the clip and has to be cut


@dataclass(frozen=True)
class ClipRecipe:
    """The random choices behind one clip; the file is a pure function of these."""

    word: str
    index: int
    voice: str
    pitch: int
    words_per_minute: int
    amplitude: int
    peak_dbfs: float
    snr_db: float
    offset_fraction: float  # where in the free space of the clip the word starts, 0..1
    noise_seed: int

    @property
    def relative_path(self) -> str:
        return f"{self.word}/{speech_synthesis.voice_file_name(self.voice)}_nohash_{self.index:04d}.wav"


def _word_seed(word: str) -> int:
    # A stable per-word seed (Python's hash() is salted per process).
    return zlib.crc32(word.encode("utf-8"))


def plan_clips(words: tuple[str, ...], per_word: int, voices: list[str], seed: int,
               snr_db: tuple[float, float] = SNR_DB_RANGE) -> list[ClipRecipe]:
    """The recipe of every clip, word by word; the voices take turns so each word hears them all."""
    recipes = []
    for word in words:
        for index in range(per_word):
            rng = np.random.default_rng([seed, _word_seed(word), index])
            recipes.append(ClipRecipe(
                word=word,
                index=index,
                voice=voices[(index + _word_seed(word)) % len(voices)],
                pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                words_per_minute=int(rng.integers(WORDS_PER_MINUTE_RANGE[0], WORDS_PER_MINUTE_RANGE[1] + 1)),
                amplitude=int(rng.integers(AMPLITUDE_RANGE[0], AMPLITUDE_RANGE[1] + 1)),
                peak_dbfs=float(rng.uniform(*PEAK_DBFS_RANGE)),
                snr_db=float(rng.uniform(*snr_db)),
                offset_fraction=float(rng.uniform()),
                noise_seed=int(rng.integers(2**31)),
            ))
    return recipes


def split_clips(recipes: list[ClipRecipe], seed: int) -> dict[str, list[str]]:
    """Relative paths of the validation and test clips: about 10% of each word's clips for each.

    The split is by clip, not by voice: with a handful of voices a held-out voice would be a
    different task rather than a fair test. Words with 3 or more clips give at least one each.
    """
    by_word: dict[str, list[ClipRecipe]] = {}
    for recipe in recipes:
        by_word.setdefault(recipe.word, []).append(recipe)
    validation, testing = [], []
    for word, clips in by_word.items():
        held_out = max(1, round(HOLDOUT_FRACTION * len(clips))) if len(clips) >= 3 else 0
        order = np.random.default_rng([seed, _word_seed(word), 2**32 - 1]).permutation(len(clips))
        validation += [clips[i].relative_path for i in order[:held_out]]
        testing += [clips[i].relative_path for i in order[held_out:2 * held_out]]
    return {"validation_list.txt": sorted(validation), "testing_list.txt": sorted(testing)}


def synthesize_clip(recipe: ClipRecipe, sample_rate: int, num_samples: int, scratch: Path,
                    programs: dict[str, str]) -> torch.Tensor:
    """Speak ``recipe.word`` with its voice's synthesizer and shape it into a clip.

    Args:
        programs: synthesizer name -> executable path (:func:`speech_synthesis.executable`).

    Returns:
        Tensor[num_samples] float32 at ``sample_rate`` Hz: the word trimmed of silence, scaled to
        its peak level, placed at its offset, with white noise at its SNR.
    """
    raw_path = scratch / f"{recipe.word}_{recipe.index}.wav"
    synthesizer = speech_synthesis.split_voice(recipe.voice)[0]
    speech_synthesis.synthesize(recipe.voice, recipe.word, raw_path, pitch=recipe.pitch,
                                words_per_minute=recipe.words_per_minute, amplitude=recipe.amplitude,
                                program=programs[synthesizer])
    samples, synthesis_rate = sf.read(str(raw_path), dtype="float32", always_2d=True)
    raw_path.unlink()
    speech = torch.from_numpy(samples).mean(dim=1)
    if synthesis_rate != sample_rate:
        speech = AF.resample(speech, orig_freq=synthesis_rate, new_freq=sample_rate)

    loud = (speech.abs() > SILENCE_THRESHOLD * speech.abs().max()).nonzero().flatten()
    if loud.numel() == 0:
        raise CorpusError(f"{synthesizer} produced silence for {recipe.word!r} with voice {recipe.voice!r}")
    margin = int(EDGE_MARGIN_SECONDS * sample_rate)
    speech = speech[max(0, int(loud[0]) - margin): int(loud[-1]) + 1 + margin]
    if speech.numel() > num_samples:  # a slow voice: cut the tail with a short fade rather than a click
        speech = speech[:num_samples].clone()
        fade = min(int(FADE_SECONDS * sample_rate), num_samples)
        speech[-fade:] *= torch.linspace(1.0, 0.0, fade)
    speech = speech * (10 ** (recipe.peak_dbfs / 20) / speech.abs().max())

    clip = torch.zeros(num_samples)
    start = int(recipe.offset_fraction * (num_samples - speech.numel()))
    clip[start:start + speech.numel()] = speech
    speech_rms = speech.pow(2).mean().sqrt().item()
    noise = np.random.default_rng(recipe.noise_seed).standard_normal(num_samples)
    clip += torch.from_numpy(noise).float() * (speech_rms / 10 ** (recipe.snr_db / 20))
    return clip.clamp(-1.0, 1.0)


def _check_arguments(words, per_word, sample_rate, seconds, snr_db) -> None:
    if not words or len(set(words)) != len(words):
        raise CorpusError(f"words must be a non-empty list without repeats, got {list(words)}")
    for word in words:
        if not isinstance(word, str) or not re.fullmatch(r"[A-Za-z][A-Za-z'-]*", word):
            raise CorpusError(f"word {word!r} must be letters (apostrophes and hyphens allowed): it names a folder")
    if not isinstance(per_word, int) or per_word < 1:
        raise CorpusError(f"per_word must be a positive integer, got {per_word!r}")
    if not 1_000 <= sample_rate <= 192_000:
        raise CorpusError(f"sample_rate {sample_rate} Hz is implausible")
    if not 0.1 <= seconds <= 60:
        raise CorpusError(f"seconds must be between 0.1 and 60, got {seconds}")
    if len(snr_db) != 2 or snr_db[0] > snr_db[1]:
        raise CorpusError(f"snr_db must be a (low, high) range in dB, got {snr_db!r}")


def build_spoken_digits(
    root: str | os.PathLike,
    *,
    words: tuple[str, ...] = DIGITS,
    per_word: int = 30,
    sample_rate: int = 16_000,
    seconds: float = 1.0,
    seed: int = 0,
    synthesizers: tuple[str, ...] = SYNTHESIZERS,
    voices: tuple[str, ...] | None = None,
    snr_db: tuple[float, float] = SNR_DB_RANGE,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Synthesize ``per_word`` clips of each word into ``root`` in the Speech Commands layout.

    Layout: ``root/<word>/<voice>_nohash_<index>.wav`` (mono, 16-bit PCM, exactly
    ``round(seconds * sample_rate)`` samples), ``root/validation_list.txt`` and
    ``root/testing_list.txt`` (paths relative to root, about 10% of the clips each), and a
    completion marker ``root/.corpus_complete.json`` with the arguments.

    The build is idempotent: when the marker records the same arguments, nothing is done. The
    clips are written to a staging folder beside ``root`` and moved into place at the end, so
    an interrupted build leaves no half-corpus (:mod:`mamba_audio.data.corpus`).

    Args:
        root: the corpus folder; must be new, empty, or hold a corpus from this function.
        words: what to say; each becomes a class folder (``DIGITS``, ``SPEECH_COMMANDS_WORDS``
            or any words).
        per_word: clips per word.
        sample_rate: in Hz.
        seconds: length of every clip.
        seed: the same seed (and arguments and synthesizer versions) gives byte-identical files.
        synthesizers: "espeak-ng" and/or "flite"; the default voices are those of
            ``DEFAULT_VOICES`` of these synthesizers that are installed.
        voices: instead, these voices ("en-us", "en+f3", "flite:slt", ...; see
            :mod:`mamba_audio.data.speech_synthesis`); each must be installed.
        snr_db: (low, high) range of the speech-to-white-noise ratio in dB, drawn per clip.
        workers: threads running the synthesizers.
        overwrite: replace a corpus in ``root`` that was built with other arguments.
        progress: show a progress bar.

    Returns:
        ``root``, as a Path.

    Raises:
        CorpusError: a synthesizer missing (names its Debian package), bad arguments, a voice
            that is not installed, or ``root`` holding something else.
    """
    root = Path(root)
    words, synthesizers = tuple(words), tuple(synthesizers)
    _check_arguments(words, per_word, sample_rate, seconds, snr_db)
    unknown = sorted(set(synthesizers) - set(SYNTHESIZERS))
    if not synthesizers or unknown:
        raise CorpusError(f"synthesizers must be some of {list(SYNTHESIZERS)}, got {list(synthesizers)}")
    arguments = {"words": list(words), "per_word": per_word, "sample_rate": sample_rate, "seconds": seconds,
                 "seed": seed, "synthesizers": None if voices is not None else list(synthesizers),
                 "voices": None if voices is None else list(voices), "snr_db": list(snr_db)}
    if corpus_is_built(root, BUILDER, arguments, overwrite):
        return root

    if voices is None:
        candidates = tuple(v for synthesizer in synthesizers for v in DEFAULT_VOICES[synthesizer])
    else:
        candidates = tuple(voices)
    installed = speech_synthesis.available_voices(candidates)  # raises when a synthesizer is missing
    if voices is not None and len(installed) != len(voices):
        missing = sorted(set(voices) - set(installed))
        raise CorpusError(f"voices not installed: {missing}; `espeak-ng --voices=en` and `flite -lv` list "
                          "those available (flite voices are named flite:<voice>)")
    for synthesizer in dict.fromkeys(speech_synthesis.split_voice(v)[0] for v in candidates):
        own = [v for v in candidates if speech_synthesis.split_voice(v)[0] == synthesizer]
        if not set(own) & set(installed):
            package = speech_synthesis.DEBIAN_PACKAGES[synthesizer]
            raise CorpusError(f"none of the voices {own} is installed in {synthesizer}; reinstall it with "
                              f"`sudo apt-get install --reinstall {package}`")
    used = sorted({speech_synthesis.split_voice(v)[0] for v in installed})
    programs = {synthesizer: speech_synthesis.executable(synthesizer) for synthesizer in used}

    recipes = plan_clips(words, per_word, installed, seed, snr_db)
    num_samples = round(seconds * sample_rate)
    record = {"builder": BUILDER, "version": BUILDER_VERSION, "arguments": arguments, "voices_used": installed,
              "clips": len(recipes), "synthesizer_versions": {s: speech_synthesis.version(s) for s in used},
              "recipes": [asdict(recipe) for recipe in recipes]}
    with staged_build(root, record) as staging, tempfile.TemporaryDirectory(prefix="speech-") as scratch:

        def make(recipe: ClipRecipe) -> None:
            clip = synthesize_clip(recipe, sample_rate, num_samples, Path(scratch), programs)
            save_audio(staging / recipe.relative_path, clip, sample_rate)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            bar = tqdm(total=len(recipes), desc=f"synthesizing {root.name}", unit="clip", disable=not progress)
            with bar:
                for _ in pool.map(make, recipes):
                    bar.update()
        for name, paths in split_clips(recipes, seed).items():
            (staging / name).write_text("".join(f"{path}\n" for path in paths))
    return root
