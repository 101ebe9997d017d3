"""The command-line speech synthesizers behind the spoken-words corpus: espeak-ng and flite.

A voice is named ``"<synthesizer>:<voice>"`` (``"flite:slt"``, ``"espeak-ng:en-us+f3"``); a name
without a prefix is an espeak-ng voice (``"en-us"``). Each synthesizer turns the same per-clip
choices (pitch 0..99, speaking rate in words per minute, amplitude) into its own options, so a
corpus can mix them freely.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mamba_audio.data.corpus import CorpusError, require_executable

ESPEAK_NG = "espeak-ng"
FLITE = "flite"
SYNTHESIZERS = (ESPEAK_NG, FLITE)
DEBIAN_PACKAGES = {ESPEAK_NG: "espeak-ng", FLITE: "flite"}

# Accents and variants of the espeak-ng package on Debian.
ESPEAK_VOICES = (
    "en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
    "en-us+f2", "en+f3", "en+f4", "en-gb-x-rp+f5", "en-us+m1", "en+m3", "en+m5", "en-029+m7",
)
# The US English voices built into Debian's flite: kal16 (diphone, male), awb (Scottish male),
# rms (male) and slt (female), all at 16 kHz. kal is kal16 at 8 kHz and awb_time only tells the time.
FLITE_VOICES = ("flite:kal16", "flite:awb", "flite:rms", "flite:slt")

ESPEAK_DEFAULT_WORDS_PER_MINUTE = 175
# flite has no pitch scale of its own: espeak-ng's 0..99 maps onto f0_shift, a factor on the voice's
# own pitch (0.75..1.3 over 0..99; rms ignores it and varies in rate only).
FLITE_F0_SHIFT_RANGE = (0.75, 1.3)


def split_voice(voice: str) -> tuple[str, str]:
    """("espeak-ng" or "flite", the synthesizer's own voice name) of a corpus voice name."""
    synthesizer, sep, name = voice.partition(":")
    if not sep:
        return ESPEAK_NG, voice
    if synthesizer not in SYNTHESIZERS or not name:
        raise CorpusError(f"voice {voice!r}: expected '<synthesizer>:<voice>' with a synthesizer of "
                          f"{list(SYNTHESIZERS)}, or an espeak-ng voice name")
    return synthesizer, name


def voice_file_name(voice: str) -> str:
    """The voice as the speaker part of a Speech Commands file name (letters, digits, '-')."""
    synthesizer, name = split_voice(voice)
    prefix = "" if synthesizer == ESPEAK_NG else f"{synthesizer}-"
    return prefix + re.sub(r"[^A-Za-z0-9-]", "-", name)


def executable(synthesizer: str) -> str:
    """The path of ``synthesizer``'s program, or a :class:`CorpusError` naming its Debian package."""
    return require_executable(synthesizer, DEBIAN_PACKAGES[synthesizer],
                              "the spoken-words corpus is synthesized with it")


def _installed(synthesizer: str) -> tuple[set[str], set[str]]:
    """(voice or language names, variant names) of the installed ``synthesizer``."""
    program = executable(synthesizer)

    def listing(*options: str) -> str:
        return subprocess.run([program, *options], capture_output=True, text=True, check=True).stdout

    if synthesizer == FLITE:  # "Voices available: kal awb_time kal16 awb rms slt"
        return set(listing("-lv").partition(":")[2].split()), set()
    languages = set()
    for line in listing("--voices").splitlines()[1:]:  # below the header "Pty Language Age/Gender VoiceName ..."
        fields = line.split()
        if len(fields) > 1:
            languages.add(fields[1])
        languages.update(re.findall(r"\((\S+) \d+\)", line))  # aliases, e.g. "(en 2)" on the en-gb line
    variants = {line.split()[4].rsplit("/", 1)[-1]
                for line in listing("--voices=variant").splitlines()[1:] if len(line.split()) > 4}
    return languages, variants


def available_voices(candidates: tuple[str, ...]) -> list[str]:
    """Those of ``candidates`` that are installed, in order (raises if a synthesizer is missing).

    An espeak-ng voice is "language" or "language+variant"; a flite voice is one of ``flite -lv``.
    """
    installed = {synthesizer: _installed(synthesizer)
                 for synthesizer in dict.fromkeys(split_voice(v)[0] for v in candidates)}
    available = []
    for voice in candidates:
        synthesizer, name = split_voice(voice)
        names, variants = installed[synthesizer]
        language, _, variant = name.partition("+")
        if language in names and (not variant or variant in variants):
            available.append(voice)
    return available


def synthesize(voice: str, text: str, out_path: Path, *, pitch: int, words_per_minute: int, amplitude: int,
               program: str, segments: bool = False) -> list[tuple[str, float]] | None:
    """Speak ``text`` into the wav file ``out_path`` (the synthesizer's own rate, mono).

    With ``segments`` (flite voices only: ``flite -psdur``), returns the phones spoken, each with its
    end time in seconds from the start of the file, e.g. [("pau", 0.136), ("s", 0.299), ...]; else None.

    Args:
        voice: a corpus voice name (module docstring).
        pitch: 0..99, espeak-ng's scale (50 is the voice's own).
        words_per_minute: speaking rate; 175 is espeak-ng's default and flite's normal speed.
        amplitude: espeak-ng's -a (100 is the default); flite has no such option and ignores it.
        program: the path from :func:`executable`.
    """
    synthesizer, name = split_voice(voice)
    if synthesizer == ESPEAK_NG:
        command = [program, "-w", str(out_path), "-v", name, "-p", str(pitch), "-s", str(words_per_minute),
                   "-a", str(amplitude), text]
    else:
        low, high = FLITE_F0_SHIFT_RANGE
        f0_shift = low + (high - low) * pitch / 99
        stretch = ESPEAK_DEFAULT_WORDS_PER_MINUTE / words_per_minute
        command = [program, "-voice", name, "--setf", f"f0_shift={f0_shift:.3f}",
                   "--setf", f"duration_stretch={stretch:.3f}", "-t", text, "-o", str(out_path)]
    if segments:
        if synthesizer != FLITE:
            raise CorpusError(f"voice {voice!r}: only flite voices report their segments' timings")
        command.insert(1, "-psdur")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0 or not out_path.exists():
        raise CorpusError(f"{synthesizer} failed for {text!r} with voice {name!r}: "
                          f"{result.stderr.strip() or f'exit status {result.returncode}'}")
    if not segments:
        return None
    timed = []
    for field in result.stdout.split():
        phone, _, end = field.rpartition(":")
        try:
            timed.append((phone, float(end)))
        except ValueError:
            raise CorpusError(f"flite -psdur printed {field!r} for {text!r}; expected <phone>:<end seconds>") from None
    if not timed:
        raise CorpusError(f"flite -psdur printed no segments for {text!r}")
    return timed


def version(synthesizer: str) -> str:
    """The synthesizer's version line, recorded in the corpus marker."""
    output = subprocess.run([executable(synthesizer), "--version"], capture_output=True, text=True).stdout
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "version" in line.lower()), lines[0] if lines else "unknown")
