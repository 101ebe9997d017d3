"""An offline sentence corpus for text-to-speech, in the LJSpeech layout, spoken by flite and espeak-ng voices.

Sentences come from a small grammar (templates filled from word lists below), so the corpus is a
pure function of (count, seed, voices, sample rate) and needs no download. Each sentence is spoken
once, by one voice; a fixed share of the sentences is held out (never in training, for any voice)
to measure intelligibility on text the model has not seen.

Layout (``root``)::

    metadata.csv       <id>|<text>|<normalized text>          what LJSpeech readers expect
    wavs/<id>.wav      mono 16-bit PCM at ``sample_rate``
    voices.csv         <id>|<voice>                           e.g. flite:slt, espeak-ng:en-us
    phonemes.csv       <id>|<IPA from espeak-ng en-us>        so training needs no espeak-ng
    alignments.csv     <id>|<flite phones>|<end times>        flite voices' clips only (see below)
    heldout.txt        ids of the held-out sentences, one per line
    .corpus_complete.json

A clip spoken by a flite voice comes with the phones flite spoke (the ``"flite"`` text front end's
symbols, :data:`mamba_audio.text.FLITE_PHONES`) and when each ends, in seconds from the start of the
trimmed clip (space-separated, the last one the clip's end): the exact alignment of text and audio
that a duration-guided TTS model trains on. :func:`align_sentence_corpus` adds it to a corpus built
before the builder wrote it, re-speaking the flite clips (and checking they come out the same).

:class:`SentenceCorpus` reads it back (an :class:`mamba_audio.data.LJSpeech` with the voice, the
phonemes, the alignment and the split).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from mamba_audio.audio import load_audio, save_audio
from mamba_audio.data.corpus import COMPLETION_MARKER, CorpusError, corpus_is_built, require_executable, staged_build
from mamba_audio.data.datasets import LJSpeech
from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.speech_synthesis import (ESPEAK_DEFAULT_WORDS_PER_MINUTE, FLITE, available_voices,
                                               executable, split_voice, synthesize)
from mamba_audio.text import espeak_phonemes, flite_symbol, normalize_text

BUILDER = "sentences"
BUILDER_VERSION = 2  # 2: alignments.csv for the flite voices' clips
ALIGNMENTS = "alignments.csv"
DEFAULT_VOICES = ("flite:slt", "flite:rms", "flite:awb", "flite:kal16",
                  "espeak-ng:en-us", "espeak-ng:en-gb", "espeak-ng:en-us+f3", "espeak-ng:en-gb-scotland+m3")
NEUTRAL_PITCH = 50  # espeak-ng's 0..99 scale: the voice's own pitch
HELDOUT_FRACTION = 0.05
PEAK_DBFS = -3.0  # every clip's peak level
SILENCE_THRESHOLD = 0.01  # of the peak: quieter leading and trailing samples are trimmed
EDGE_MARGIN_SECONDS = 0.05  # silence kept before and after the speech

# -- the grammar --------------------------------------------------------------------------------------
ADJECTIVES = ("red", "green", "blue", "small", "big", "old", "young", "quiet", "loud", "happy", "tired",
              "bright", "dark", "warm", "cold", "brown", "yellow", "clever", "gentle", "busy")
NOUNS = ("cat", "dog", "bird", "fox", "horse", "child", "farmer", "teacher", "doctor", "sailor", "baker",
         "driver", "rabbit", "king", "queen", "girl", "boy", "man", "woman", "painter")
OBJECTS = ("ball", "book", "letter", "apple", "box", "cup", "key", "coat", "hat", "chair", "lamp", "door",
           "basket", "bottle", "window", "table", "picture", "flower", "bell", "ribbon")
PLACES = ("garden", "river", "market", "station", "kitchen", "forest", "village", "harbor", "bridge", "school",
          "church", "hill", "road", "beach", "library", "castle", "field", "park", "house", "tower")
VERBS_PAST = ("found", "lost", "carried", "opened", "painted", "washed", "dropped", "took", "held", "moved",
              "pushed", "pulled", "liked", "bought", "sold", "kept", "saw", "watched", "cleaned", "fixed")
VERBS_BASE = ("find", "open", "paint", "wash", "carry", "move", "clean", "fix", "take", "bring")
MOTION_PAST = ("walked", "ran", "rode", "hurried", "went", "drove", "sailed", "wandered", "came", "raced")
NAMES = ("Anna", "Peter", "Maria", "John", "Lucy", "David", "Emma", "Thomas", "Sarah", "Robert")
PREPOSITIONS = ("near", "behind", "under", "beside", "across", "inside", "past", "around")
ADVERBS = ("slowly", "quickly", "quietly", "carefully", "happily", "early", "again", "today")
COUNTS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")
TIMES = ("noon", "midnight", "dinner", "sunset", "morning", "winter", "lunch", "dawn")

TEMPLATES = (
    "The {adj} {noun} {verb} the {obj}.",
    "A {noun} {motion} to the {adj} {place}.",
    "{name} {verb} the {adj} {obj} {adverb}.",
    "Did the {noun} {base} the {obj} {prep} the {place}?",
    "We saw {count} {adj} {obj}s {prep} the {place}.",
    "Please {base} the {obj} before {time}.",
    "The {noun} and the {noun2} {motion} {prep} the {place}.",
    "{name} {motion} to the {place} at {time}.",
)
SLOTS = {"adj": ADJECTIVES, "noun": NOUNS, "noun2": NOUNS, "obj": OBJECTS, "place": PLACES, "verb": VERBS_PAST,
         "base": VERBS_BASE, "motion": MOTION_PAST, "name": NAMES, "prep": PREPOSITIONS, "adverb": ADVERBS,
         "count": COUNTS, "time": TIMES}


def make_sentences(count: int, seed: int) -> list[str]:
    """``count`` distinct sentences drawn from the templates, a pure function of (count, seed)."""
    rng = np.random.default_rng([seed, 0x5E57])
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise CorpusError(f"the grammar cannot make {count} distinct sentences")
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        words = {slot: choices[int(rng.integers(len(choices)))] for slot, choices in SLOTS.items()}
        sentence = template.format(**words)
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


# -- voices -------------------------------------------------------------------------------------------
def check_voices(voices: tuple[str, ...]) -> None:
    """CorpusError unless every voice ("flite:slt", "espeak-ng:en-us") is installed."""
    for voice in voices:
        split_voice(voice)  # a malformed name is an error of its own
        if "|" in voice:
            raise CorpusError(f"voice {voice!r}: '|' separates the columns of voices.csv")
    missing = sorted(set(voices) - set(available_voices(voices)))
    if missing:
        raise CorpusError(f"voices not installed: {missing}; `flite -lv` and `espeak-ng --voices=en` list those available")


def speak(text: str, voice: str, sample_rate: int, scratch: Path) -> tuple[torch.Tensor, str | None]:
    """``text`` spoken by ``voice`` at its own pitch and rate: (Tensor[L] float32 at ``sample_rate``,
    leading and trailing silence trimmed to ``EDGE_MARGIN_SECONDS``, peak at ``PEAK_DBFS``; for a flite
    voice its alignment row ``"<phones>|<end times>"`` (module docstring), else None)."""
    synthesizer = split_voice(voice)[0]
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=scratch, delete=False) as handle:
        path = Path(handle.name)
    try:
        segments = synthesize(voice, text, path, pitch=NEUTRAL_PITCH, words_per_minute=ESPEAK_DEFAULT_WORDS_PER_MINUTE,
                              amplitude=100, program=executable(synthesizer), segments=synthesizer == FLITE)
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    finally:
        path.unlink(missing_ok=True)
    speech = torch.from_numpy(samples).mean(1)
    if rate != sample_rate:
        speech = AF.resample(speech, rate, sample_rate)
    loud = (speech.abs() > SILENCE_THRESHOLD * speech.abs().max()).nonzero().flatten()
    if loud.numel() == 0:
        raise CorpusError(f"{voice} produced silence for {text!r}")
    margin = int(EDGE_MARGIN_SECONDS * sample_rate)
    start = max(0, int(loud[0]) - margin)
    speech = speech[start: int(loud[-1]) + 1 + margin]
    alignment = None
    if segments is not None:  # the segments' ends, moved to the trimmed clip (the last one ends it)
        seconds = speech.numel() / sample_rate
        ends = [min(seconds, max(0.0, end - start / sample_rate)) for _, end in segments]
        ends[-1] = seconds
        alignment = "".join(flite_symbol(phone) for phone, _ in segments) + "|" + " ".join(f"{e:.4f}" for e in ends)
    return (speech * (10 ** (PEAK_DBFS / 20) / speech.abs().max())).clamp(-1.0, 1.0), alignment


# -- the builder --------------------------------------------------------------------------------------
def build_sentence_corpus(
    root: str | os.PathLike,
    *,
    count: int = 2000,
    seed: int = 0,
    voices: tuple[str, ...] = DEFAULT_VOICES,
    sample_rate: int = 16_000,
    heldout_fraction: float = HELDOUT_FRACTION,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Speak ``count`` grammar sentences into ``root`` (see the module docstring for the layout).

    Voices take turns (sentence i is spoken by ``voices[i % len(voices)]``); the last
    ``round(heldout_fraction * count)`` sentences (at least one) are held out. Idempotent: a corpus
    built with the same arguments is left as it is; the build is staged and moved into place at the end.

    Raises:
        CorpusError: bad arguments, flite or espeak-ng missing (names the Debian package), a voice
            that is not installed, or ``root`` holding something else.
    """
    root = Path(root)
    voices = tuple(voices)
    if not isinstance(count, int) or count < 2:
        raise CorpusError(f"count must be an integer >= 2 (one held-out sentence at least), got {count!r}")
    if not voices or len(set(voices)) != len(voices):
        raise CorpusError(f"voices must be a non-empty list without repeats, got {list(voices)}")
    if not 0 < heldout_fraction < 1:
        raise CorpusError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not 8_000 <= sample_rate <= 48_000:
        raise CorpusError(f"sample_rate {sample_rate} Hz is outside 8000..48000")
    arguments = {"count": count, "seed": seed, "voices": list(voices), "sample_rate": sample_rate,
                 "heldout_fraction": heldout_fraction}
    if corpus_is_built(root, BUILDER, arguments, overwrite):
        return root
    require_executable("espeak-ng", "espeak-ng", "the sentence corpus's phoneme transcriptions come from it")
    check_voices(voices)

    sentences = make_sentences(count, seed)
    ids = [f"S{i:05d}" for i in range(count)]
    clip_voices = [voices[i % len(voices)] for i in range(count)]
    heldout = ids[count - max(1, round(heldout_fraction * count)):]
    record = {"builder": BUILDER, "version": BUILDER_VERSION, "arguments": arguments, "clips": count}
    with staged_build(root, record) as staging, tempfile.TemporaryDirectory(prefix="sentences-") as scratch:
        (staging / "wavs").mkdir()

        def make(i: int) -> tuple[str, float, str | None]:
            audio, alignment = speak(sentences[i], clip_voices[i], sample_rate, Path(scratch))
            save_audio(staging / "wavs" / f"{ids[i]}.wav", audio, sample_rate)
            return espeak_phonemes(normalize_text(sentences[i])), audio.numel() / sample_rate, alignment

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(tqdm(pool.map(make, range(count)), total=count, desc=f"speaking {root.name}",
                                unit="clip", disable=not progress))
        rows = {"metadata.csv": [(i, s, s) for i, s in zip(ids, sentences)],
                "voices.csv": list(zip(ids, clip_voices)),
                "phonemes.csv": [(i, phonemes) for i, (phonemes, _, _) in zip(ids, results)],
                ALIGNMENTS: [(i, alignment) for i, (_, _, alignment) in zip(ids, results) if alignment]}
        for name, table in rows.items():
            (staging / name).write_text("".join("|".join(row) + "\n" for row in table), encoding="utf-8")
        (staging / "heldout.txt").write_text("".join(f"{i}\n" for i in heldout))
        record["hours"] = round(sum(seconds for _, seconds, _ in results) / 3600, 4)
    return root


def align_sentence_corpus(root: str | os.PathLike, *, workers: int = 2, progress: bool = True) -> Path:
    """Write ``alignments.csv`` into a sentence corpus built without it (builder version 1), by speaking
    its flite clips again; returns its path. Each re-spoken clip must have exactly the samples of the
    stored one (flite is deterministic), so the timings are those of the stored audio.

    Raises:
        CorpusError: ``root`` is not a finished sentence corpus, holds no flite clips, or a clip comes out
            with another length than its wav (a different flite than the one that built the corpus).
    """
    root = Path(root)
    marker = root / COMPLETION_MARKER
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    if record.get("builder") != BUILDER:
        raise CorpusError(f"{root} is not a finished sentence corpus (no {COMPLETION_MARKER} of the "
                          f"{BUILDER!r} builder)")
    sample_rate = record["arguments"]["sample_rate"]
    texts = {clip: row[1] for clip, row in _read_table(root / "metadata.csv", 3).items()}
    voice_of = {clip: row[1] for clip, row in _read_table(root / "voices.csv", 2).items()}
    clips = [clip for clip in texts if split_voice(voice_of.get(clip, ""))[0] == FLITE]
    if not clips:
        raise CorpusError(f"{root} has no clips spoken by a flite voice: only flite reports timings")
    with tempfile.TemporaryDirectory(prefix="align-") as scratch:
        def align(clip: str) -> str:
            audio, alignment = speak(texts[clip], voice_of[clip], sample_rate, Path(scratch))
            stored = sf.info(str(root / "wavs" / f"{clip}.wav")).frames
            if audio.numel() != stored:
                raise CorpusError(f"{root}: clip {clip} re-spoken has {audio.numel()} samples, its wav {stored}; "
                                  "this flite is not the one that built the corpus, so its timings would not fit")
            return alignment

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            alignments = list(tqdm(pool.map(align, clips), total=len(clips), desc=f"aligning {root.name}",
                                   unit="clip", disable=not progress))
    path = root / ALIGNMENTS
    staged = path.with_suffix(".csv.tmp")
    staged.write_text("".join(f"{clip}|{alignment}\n" for clip, alignment in zip(clips, alignments)), encoding="utf-8")
    staged.replace(path)
    return path


# -- the reader ---------------------------------------------------------------------------------------
SPLITS = (None, "train", "heldout")


def _read_table(path: Path, fields: int = 2) -> dict[str, list[str]]:
    """A '|'-separated table of ``fields`` columns, the first an id -> {id: the row}."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE))
    bad = [n for n, row in enumerate(rows, 1) if len(row) != fields]
    if bad:
        raise DataLayoutError(f"{path}, line {bad[0]}: expected {fields} fields <id>|...")
    return {row[0]: row for row in rows}


class SentenceCorpus(LJSpeech):
    """A corpus of :func:`build_sentence_corpus` (or any LJSpeech-layout folder with ``voices.csv``).

    Args:
        root: the corpus folder.
        split: None (every clip), "train" (all but the held-out sentences) or "heldout".
        sample_rate: Hz; default the corpus's own rate, 16000.
        **options: the options of :class:`mamba_audio.data.clips.ClipDataset`.

    Items: those of :class:`LJSpeech` plus ``id``, ``voice`` (e.g. "flite:slt"), ``phonemes`` (the IPA
    string; "" when the corpus has no phonemes.csv) and for clips in alignments.csv ``flite_phones`` (the
    "flite" front end's symbols) and ``phone_ends`` (their end times in seconds, space-separated).
    ``voices`` lists the corpus's voices (``speaker_id`` is the index in it).
    """

    def __init__(self, root: str | os.PathLike, *, split: str | None = None, sample_rate: int = 16_000, **options):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        super().__init__(root, sample_rate=sample_rate, **options)
        voices_path = self.root / "voices.csv"
        if not voices_path.is_file():
            raise DataLayoutError(f"{self.root} has no voices.csv (<id>|<voice> per clip); build the corpus with "
                                  "`mamba-audio corpus sentences`")
        self.voice_of = {clip: row[1] for clip, row in _read_table(voices_path).items()}
        phonemes_path = self.root / "phonemes.csv"
        self.phonemes_of = {clip: row[1] for clip, row in _read_table(phonemes_path).items()} \
            if phonemes_path.is_file() else {}
        alignments_path = self.root / ALIGNMENTS
        self.alignment_of = {clip: row[1:] for clip, row in _read_table(alignments_path, 3).items()} \
            if alignments_path.is_file() else {}
        missing = [clip_id for clip_id, _, _ in self.entries if clip_id not in self.voice_of]
        if missing:
            raise DataLayoutError(f"{voices_path}: no voice for {len(missing)} clips (first: {missing[0]})")
        heldout_path = self.root / "heldout.txt"
        heldout = set(heldout_path.read_text().split()) if heldout_path.is_file() else set()
        self.voices = sorted(set(self.voice_of.values()))
        if split is not None:
            self.entries = [e for e in self.entries if (e[0] in heldout) == (split == "heldout")]
            if not self.entries:
                raise DataLayoutError(f"{self.root}: the {split!r} split is empty (heldout.txt lists {len(heldout)})")

    def __getitem__(self, index: int) -> dict:
        clip_id, transcript, normalized = self.entries[index]
        path = self.root / "wavs" / f"{clip_id}.wav"
        audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
        alignment = {}
        if clip_id in self.alignment_of:
            alignment = dict(zip(("flite_phones", "phone_ends"), self.alignment_of[clip_id]))
        return self.make_item(audio, path, transcript=transcript, normalized_transcript=normalized,
                              speaker_id=self.voices.index(self.voice_of[clip_id]), id=clip_id,
                              voice=self.voice_of[clip_id], phonemes=self.phonemes_of.get(clip_id, ""), **alignment)
