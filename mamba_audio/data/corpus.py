"""Offline corpora: spoken words synthesized with espeak-ng, in the Speech Commands layout.

The Mamba paper's SC09 experiment uses one-second clips of the ten digits at 16 kHz. We cannot
download SC09 here, so :func:`build_spoken_digits` synthesizes a stand-in with the same shape:
``root/<word>/<voice>_nohash_<index>.wav`` plus ``validation_list.txt`` and
``testing_list.txt``, which :class:`mamba_audio.data.AudioFolder` reads like the real thing.

Each clip varies the voice, pitch, speaking rate, loudness, position in the clip and a little
background noise. Every random choice comes from a generator seeded by (seed, word, index), so
the same arguments give byte-identical files whatever the thread scheduling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Accents and variants of the espeak-ng package on Debian; those not installed are skipped.
PREFERRED_VOICES = (
    "en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
    "en-us+f2", "en+f3", "en+f4", "en-gb-x-rp+f5", "en-us+m1", "en+m3", "en+m5", "en-029+m7",
)

COMPLETION_MARKER = ".corpus_complete.json"
BUILDER_VERSION = 1
HOLDOUT_FRACTION = 0.1  # of each word's clips, for validation and again for test

# Ranges of the per-clip random choices.
PITCH_RANGE = (20, 80)  # espeak-ng -p, 0..99
WORDS_PER_MINUTE_RANGE = (120, 200)  # espeak-ng -s
AMPLITUDE_RANGE = (70, 130)  # espeak-ng -a, default 100
PEAK_DBFS_RANGE = (-18.0, -1.0)  # level of the clip's peak after synthesis
SNR_DB_RANGE = (20.0, 40.0)  # speech RMS over white noise RMS
SILENCE_THRESHOLD = 0.02  # of the peak: quieter leading and trailing samples are trimmed
EDGE_MARGIN_SECONDS = 0.01  # kept around the trimmed word
FADE_SECONDS = 0.02  # fade-out when a word is longer than the clip and has to be cut


class CorpusError(ValueError):
    """A corpus that cannot be built: a missing tool, bad arguments, or a folder in the way."""


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
        return f"{self.word}/{self.voice.replace('+', '-')}_nohash_{self.index:04d}.wav"


def espeak_executable() -> str:
    """The path of espeak-ng, or a :class:`CorpusError` that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise CorpusError(
            "espeak-ng was not found on PATH; the spoken-digits corpus is synthesized with it. "
            "Install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu package espeak-ng)."
        )
    return path


def available_espeak_voices(candidates: tuple[str, ...] = PREFERRED_VOICES) -> list[str]:
    """Those of ``candidates`` ("language" or "language+variant") that the installed espeak-ng has."""
    executable = espeak_executable()

    def listing(option: str) -> list[str]:
        output = subprocess.run([executable, option], capture_output=True, text=True, check=True).stdout
        return output.splitlines()[1:]  # below the header "Pty Language Age/Gender VoiceName File ..."

    languages = set()
    for line in listing("--voices"):
        fields = line.split()
        if len(fields) > 1:
            languages.add(fields[1])
        languages.update(re.findall(r"\((\S+) \d+\)", line))  # aliases, e.g. "(en 2)" on the en-gb line
    variants = {line.split()[4].rsplit("/", 1)[-1] for line in listing("--voices=variant") if len(line.split()) > 4}
    available = []
    for voice in candidates:
        language, _, variant = voice.partition("+")
        if language in languages and (not variant or variant in variants):
            available.append(voice)
    return available


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


def synthesize_clip(recipe: ClipRecipe, sample_rate: int, num_samples: int, scratch: Path, executable: str) -> torch.Tensor:
    """Speak ``recipe.word`` with espeak-ng and shape it into a clip.

    Returns:
        Tensor[num_samples] float32 at ``sample_rate`` Hz: the word trimmed of silence, scaled to
        its peak level, placed at its offset, with white noise at its SNR.
    """
    raw_path = scratch / f"{recipe.word}_{recipe.index}.wav"
    command = [executable, "-w", str(raw_path), "-v", recipe.voice, "-p", str(recipe.pitch),
               "-s", str(recipe.words_per_minute), "-a", str(recipe.amplitude), recipe.word]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0 or not raw_path.exists():
        raise CorpusError(f"espeak-ng failed for {recipe.word!r} with voice {recipe.voice!r}: "
                          f"{result.stderr.strip() or f'exit status {result.returncode}'}")
    samples, espeak_rate = sf.read(str(raw_path), dtype="float32", always_2d=True)
    raw_path.unlink()
    speech = torch.from_numpy(samples).mean(dim=1)
    if espeak_rate != sample_rate:
        speech = AF.resample(speech, orig_freq=espeak_rate, new_freq=sample_rate)

    loud = (speech.abs() > SILENCE_THRESHOLD * speech.abs().max()).nonzero().flatten()
    if loud.numel() == 0:
        raise CorpusError(f"espeak-ng produced silence for {recipe.word!r} with voice {recipe.voice!r}")
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
    an interrupted build leaves no half-corpus.

    Args:
        root: the corpus folder; must be new, empty, or hold a corpus from this function.
        words: what to say; each becomes a class folder.
        per_word: clips per word.
        sample_rate: in Hz.
        seconds: length of every clip.
        seed: the same seed (and arguments and espeak-ng version) gives byte-identical files.
        voices: espeak-ng voices ("en-us", "en+f3", ...); default: those of
            ``PREFERRED_VOICES`` that are installed.
        snr_db: (low, high) range of the speech-to-white-noise ratio in dB, drawn per clip.
        workers: threads running espeak-ng.
        overwrite: replace a corpus in ``root`` that was built with other arguments.
        progress: show a progress bar.

    Returns:
        ``root``, as a Path.

    Raises:
        CorpusError: espeak-ng missing (names the Debian package), bad arguments, a voice that
            is not installed, or ``root`` holding something else.
    """
    root = Path(root)
    words = tuple(words)
    _check_arguments(words, per_word, sample_rate, seconds, snr_db)
    arguments = {"words": list(words), "per_word": per_word, "sample_rate": sample_rate, "seconds": seconds,
                 "seed": seed, "voices": None if voices is None else list(voices), "snr_db": list(snr_db)}

    marker = root / COMPLETION_MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text()).get("arguments", {})
        if recorded == arguments:
            return root
        if not overwrite:
            differences = ", ".join(f"{key}: {recorded.get(key)!r} there, {value!r} asked"
                                    for key, value in arguments.items() if recorded.get(key) != value)
            raise CorpusError(f"{root} holds a spoken-digits corpus built with other arguments ({differences}); "
                              "choose another folder or pass overwrite=True to rebuild it")
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise CorpusError(f"{root} is not empty and holds no finished corpus (no {COMPLETION_MARKER}); "
                          "choose a new or empty folder")
    elif root.exists() and not root.is_dir():
        raise CorpusError(f"{root} is a file, not a folder")

    executable = espeak_executable()
    installed = available_espeak_voices(PREFERRED_VOICES if voices is None else tuple(voices))
    if voices is not None and len(installed) != len(voices):
        missing = sorted(set(voices) - set(installed))
        raise CorpusError(f"espeak-ng voices not installed: {missing}; `espeak-ng --voices=en` lists those available")
    if not installed:
        raise CorpusError(f"none of the voices {list(PREFERRED_VOICES)} is installed in espeak-ng; "
                          "reinstall it with `sudo apt-get install --reinstall espeak-ng-data espeak-ng`")

    recipes = plan_clips(words, per_word, installed, seed, snr_db)
    num_samples = round(seconds * sample_rate)
    staging = root.parent / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="espeak-") as scratch:

            def make(recipe: ClipRecipe) -> None:
                clip = synthesize_clip(recipe, sample_rate, num_samples, Path(scratch), executable)
                save_audio(staging / recipe.relative_path, clip, sample_rate)

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                bar = tqdm(total=len(recipes), desc=f"synthesizing {root.name}", unit="clip", disable=not progress)
                with bar:
                    for _ in pool.map(make, recipes):
                        bar.update()

        for name, paths in split_clips(recipes, seed).items():
            (staging / name).write_text("".join(f"{path}\n" for path in paths))
        record = {"builder": "spoken_digits", "version": BUILDER_VERSION, "arguments": arguments,
                  "voices_used": installed, "clips": len(recipes), "espeak_ng": _espeak_version(executable),
                  "recipes": [asdict(recipe) for recipe in recipes]}
        (staging / COMPLETION_MARKER).write_text(json.dumps(record, indent=1) + "\n")
        if root.is_dir():
            root.rmdir()  # empty, checked above
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _espeak_version(executable: str) -> str:
    return subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()
