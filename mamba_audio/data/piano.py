"""Offline piano corpus: keyboard music from music21's bundled scores, rendered with fluidsynth.

A stand-in for YouTubeMix (SaShiMi's 4 hours of solo piano) that needs no download: scores from
the corpus that ships inside the music21 package (Bach's four-part chorales and a handful of
solo keyboard works) are written as MIDI with every part on General MIDI program 0 (acoustic
grand piano) and rendered by fluidsynth with the FluidR3 General MIDI soundfont (Debian package
fluid-soundfont-gm) into mono 16-bit wav files, one per piece:
``root/<nnn>_<composer>-<work>.wav``. :class:`mamba_audio.data.LongAudioCrops` reads the folder and
splits it by file; the numbering follows the seeded draw, so the split is a random one.

The build is deterministic (the same seed, music21, fluidsynth and soundfont give byte-identical
files) and idempotent, as every builder of :mod:`mamba_audio.data.corpus`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from mamba_audio.audio import save_audio
from mamba_audio.data.corpus import CorpusError, corpus_is_built, require_executable, staged_build

BUILDER = "piano"
BUILDER_VERSION = 1
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SOUNDFONT_PACKAGE = "fluid-soundfont-gm"
PIANO_PROGRAM = 0  # General MIDI: acoustic grand piano

# Solo keyboard works of music21's corpus; with the four-part chorales (bach/bwv<n>.<m>, which
# lie under two hands) they make the pool that pieces are drawn from.
KEYBOARD_WORKS = (
    "bach/bwv846",  # The Well-Tempered Clavier I: Prelude in C major
    "chopin/mazurka06-2",
    "joplin/maple_leaf_rag",
    "mozart/k545/movement1_exposition",
    "schoenberg/opus19/movement2",
    "schoenberg/opus19/movement6",
    "schumann_clara/polonaise_op1n1",
    "schumann_clara/polonaise_op1n2",
    "schumann_clara/polonaise_op1n3",
    "schumann_clara/polonaise_op1n4",
)
CHORALE_PATTERN = re.compile(r"bach/bwv\d+\.\d+")

PEAK_DBFS = -3.0  # every piece is scaled to this peak level
SILENCE_THRESHOLD = 1e-3  # of the peak: the quieter tail (the end of the reverb) is trimmed
FADE_SECONDS = 0.5  # fade-out where a piece is cut at max_seconds


def _music21():
    try:
        import music21
    except ImportError as err:  # a dependency of mamba-audio; missing only in a broken install
        raise CorpusError("the piano corpus needs music21 (its bundled scores): pip install music21") from err
    return music21


def piece_pool() -> list[str]:
    """Every piece the corpus can draw from, sorted: music21 corpus names such as "bach/bwv66.6"."""
    music21 = _music21()
    names = set()
    for path in music21.corpus.getCorePaths():
        relative = Path(path).as_posix().split("/corpus/", 1)[-1]
        name = relative.rsplit(".", 1)[0]
        if CHORALE_PATTERN.fullmatch(name):
            names.add(name)
    return sorted(names | set(KEYBOARD_WORKS))


def choose_pieces(count: int, seed: int) -> list[str]:
    """``count`` distinct pieces of :func:`piece_pool`, in a random order fixed by ``seed``."""
    pool = piece_pool()
    if not 1 <= count <= len(pool):
        raise CorpusError(f"pieces must be between 1 and {len(pool)} (the keyboard pieces of music21's corpus), "
                          f"got {count}")
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [pool[i] for i in order]


def write_piano_midi(name: str, path: Path) -> None:
    """Write music21 corpus score ``name`` as a MIDI file with every part on the acoustic grand piano."""
    music21 = _music21()
    try:
        score = music21.corpus.parse(name)
    except Exception as err:  # music21 raises its own exception types for missing and unreadable scores
        raise CorpusError(f"music21 cannot read corpus score {name!r}: {err}") from err
    for part in score.parts:
        for old in list(part.recurse().getElementsByClass(music21.instrument.Instrument)):
            old.activeSite.remove(old)
        piano = music21.instrument.Piano()
        piano.midiProgram = PIANO_PROGRAM
        part.insert(0, piano)
    midi = music21.midi.translate.music21ObjectToMidiFile(score)
    midi.open(str(path), "wb")
    try:
        midi.write()
    finally:
        midi.close()


def render_midi(midi_path: Path, wav_path: Path, sample_rate: int, program: str, soundfont: Path) -> None:
    """Render a MIDI file with fluidsynth into a float wav file (stereo, at ``sample_rate``)."""
    command = [program, "-ni", "-q", "-F", str(wav_path), "-O", "float", "-r", str(sample_rate),
               "-o", "synth.chorus.active=0", str(soundfont), str(midi_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not wav_path.exists():
        raise CorpusError(f"fluidsynth failed on {midi_path.name}: "
                          f"{result.stderr.strip() or f'exit status {result.returncode}'}")


def shape_piece(stereo: np.ndarray, sample_rate: int, max_seconds: float | None) -> torch.Tensor:
    """Mono, trimmed of the silent tail, cut at ``max_seconds`` with a fade, scaled to ``PEAK_DBFS``.

    Args:
        stereo: (L, C) float samples from fluidsynth.

    Returns:
        Tensor[L'] float32.
    """
    audio = torch.from_numpy(np.ascontiguousarray(stereo, dtype=np.float32)).mean(dim=1)
    peak = audio.abs().max()
    if peak <= 0:
        raise CorpusError("fluidsynth rendered silence")
    loud = (audio.abs() > SILENCE_THRESHOLD * peak).nonzero().flatten()
    audio = audio[: int(loud[-1]) + 1]
    if max_seconds is not None and audio.numel() > round(max_seconds * sample_rate):
        audio = audio[: round(max_seconds * sample_rate)].clone()
        fade = min(round(FADE_SECONDS * sample_rate), audio.numel())
        audio[-fade:] *= torch.linspace(1.0, 0.0, fade)
    return audio * (10 ** (PEAK_DBFS / 20) / audio.abs().max())


def file_name(number: int, name: str) -> str:
    """"007_bach-bwv66.6.wav" for piece ``name`` drawn ``number``-th."""
    return f"{number:03d}_{re.sub(r'[^A-Za-z0-9.-]', '-', name)}.wav"


def build_piano_corpus(
    root: str | os.PathLike,
    *,
    pieces: int = 40,
    seed: int = 0,
    works: tuple[str, ...] | None = None,
    sample_rate: int = 16_000,
    max_seconds: float | None = None,
    soundfont: str | os.PathLike = SOUNDFONT,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Render keyboard pieces of music21's corpus on a General MIDI piano into ``root``.

    Layout: ``root/<nnn>_<composer>-<work>.wav`` (mono, 16-bit PCM, ``sample_rate`` Hz, one
    piece each, peak at -3 dBFS) and the completion marker ``root/.corpus_complete.json`` with
    the arguments and the pieces. About 40 pieces make about 15 minutes of audio; the whole pool
    (:func:`piece_pool`, some 200 pieces) a little over an hour.

    Args:
        root: the corpus folder; must be new, empty, or hold a corpus from this function.
        pieces: how many pieces to draw from the pool, without repeats.
        seed: fixes the draw (and so the file order and the split of LongAudioCrops).
        works: instead of a draw, these music21 corpus names (e.g. "bach/bwv66.6"), in order.
        sample_rate: Hz, 8000 to 96000 (fluidsynth renders at this rate).
        max_seconds: cut every piece at this length (with a short fade); None keeps it whole.
        soundfont: the General MIDI soundfont (program 0 is the piano).
        overwrite: replace a corpus in ``root`` that was built with other arguments.
        progress: show a progress bar.

    Returns:
        ``root``, as a Path.

    Raises:
        CorpusError: fluidsynth or the soundfont missing (names the Debian packages), bad
            arguments, a score music21 cannot read, or ``root`` holding something else.
    """
    root = Path(root)
    soundfont = Path(soundfont)
    if not 8_000 <= sample_rate <= 96_000:
        raise CorpusError(f"sample_rate must be between 8000 and 96000 Hz (fluidsynth's range), got {sample_rate}")
    if max_seconds is not None and max_seconds <= FADE_SECONDS:
        raise CorpusError(f"max_seconds must be longer than the {FADE_SECONDS} s fade-out, got {max_seconds}")
    if works is not None and (not works or len(set(works)) != len(works)):
        raise CorpusError(f"works must be a non-empty list without repeats, got {list(works)}")
    arguments = {"pieces": None if works is not None else pieces, "seed": seed,
                 "works": None if works is None else list(works), "sample_rate": sample_rate,
                 "max_seconds": max_seconds, "soundfont": str(soundfont)}
    if corpus_is_built(root, BUILDER, arguments, overwrite):
        return root

    program = require_executable("fluidsynth", "fluidsynth", "the piano corpus is rendered with it")
    if not soundfont.is_file():
        hint = (f"install the General MIDI soundfont with `sudo apt-get install {SOUNDFONT_PACKAGE}`"
                if soundfont == SOUNDFONT else "pass the path of a General MIDI .sf2 soundfont")
        raise CorpusError(f"soundfont {soundfont} not found; {hint}")
    chosen = list(works) if works is not None else choose_pieces(pieces, seed)
    music21 = _music21()
    record = {"builder": BUILDER, "version": BUILDER_VERSION, "arguments": arguments,
              "music21": music21.__version__, "fluidsynth": _fluidsynth_version(program), "pieces": []}
    with staged_build(root, record) as staging, tempfile.TemporaryDirectory(prefix="piano-") as scratch:
        for number, name in enumerate(tqdm(chosen, desc=f"rendering {root.name}", unit="piece",
                                           disable=not progress)):
            midi_path, rendered = Path(scratch) / "piece.mid", Path(scratch) / "piece.wav"
            write_piano_midi(name, midi_path)
            render_midi(midi_path, rendered, sample_rate, program, soundfont)
            stereo, rate = sf.read(str(rendered), dtype="float32", always_2d=True)
            if rate != sample_rate:
                raise CorpusError(f"fluidsynth rendered {name} at {rate} Hz instead of {sample_rate} Hz")
            try:
                audio = shape_piece(stereo, sample_rate, max_seconds)
            except CorpusError as err:
                raise CorpusError(f"{name}: {err}") from err
            save_audio(staging / file_name(number, name), audio, sample_rate)
            record["pieces"].append({"file": file_name(number, name), "work": name,
                                     "seconds": round(audio.numel() / sample_rate, 3)})
        record["total_seconds"] = round(sum(p["seconds"] for p in record["pieces"]), 3)
    return root


def _fluidsynth_version(program: str) -> str:
    output = subprocess.run([program, "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0].strip() if output.strip() else "unknown"
