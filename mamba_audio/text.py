"""Text front end of text-to-speech: text -> symbols (characters, espeak-ng or flite phonemes) -> ids.

Three front ends share one normalisation:

- ``"chars"``: the normalised text itself (lower-case letters, digits spelled out beforehand by the
  caller, spaces and a little punctuation);
- ``"phonemes"``: the IPA transcription espeak-ng gives (``espeak-ng -q --ipa``), one symbol per
  Unicode character (stress marks and length marks included), words separated by spaces;
- ``"flite"``: the phone sequence flite's US English front end gives (``flite -ps``: the CMU
  dictionary and its letter-to-sound rules, as its 16 kHz US voices have it), each phone written as one
  character (``FLITE_PHONES``), pauses as ``_``. Every symbol is a segment that takes time, so a
  corpus spoken by a flite voice comes with each symbol's duration (``flite -psdur``), which the
  duration-guided TTS model (:class:`mamba_audio.models.tts.TTSConfig` ``guide_durations``) trains on.

A :class:`TextTokenizer` maps symbols to ids 1..V (0 is padding) with a symbol table that lives in
the model's config, so a checkpoint carries the inventory it was trained on; a symbol outside it
is an error that names it, never a silent drop.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata

import torch

FRONT_ENDS = ("chars", "phonemes", "flite")
PAD_ID = 0
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PUNCTUATION = " '.,?!-;:"
CHAR_SYMBOLS = PUNCTUATION + LETTERS  # the "chars" front end's whole inventory
DEFAULT_ESPEAK_VOICE = "en-us"
# flite's phones (lower-case ARPAbet of the CMU dictionary) -> one character each: IPA where one code point
# says it, capitals for the diphthongs and syllabic consonants, "_" for a pause
FLITE_PHONES = {
    "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "W", "ax": "ə", "axr": "ɚ", "ay": "I", "b": "b", "ch": "ʧ",
    "d": "d", "dh": "ð", "eh": "ɛ", "el": "L", "em": "M", "en": "N", "er": "ɝ", "ey": "E", "f": "f", "g": "g",
    "hh": "h", "ih": "ɪ", "ix": "ɨ", "iy": "i", "jh": "ʤ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "ŋ",
    "ow": "O", "oy": "Y", "p": "p", "r": "ɹ", "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "uh": "ʊ", "uw": "u",
    "v": "v", "w": "w", "y": "j", "z": "z", "zh": "ʒ", "pau": "_",
}
FLITE_SYMBOLS = "".join(sorted(FLITE_PHONES.values()))  # the "flite" front end's whole inventory
# the voice whose front end transcribes: the 16 kHz US voices (kal16, awb, rms, slt) agree, while kal, flite's
# default, is an older build whose lexicon differs in places ("sunset": s aa n, where they say s ah n)
FLITE_FRONT_END_VOICE = "slt"
_TYPOGRAPHIC = {"\u2019": "'", "\u2018": "'", "\u201c": "", "\u201d": "", '"': "", "\u2013": "-", "\u2014": "-"}


class TextError(ValueError):
    """Text that the front end cannot read: empty, too long, or holding unsupported characters."""


def normalize_text(text: str, max_chars: int | None = None) -> str:
    """Lower-case, typographic quotes and dashes made plain, whitespace collapsed.

    Raises:
        TextError: not a string, empty after normalisation, longer than ``max_chars``, or holding
            characters other than letters a-z, spaces and ``'.,?!-;:`` (the message lists them;
            digits must be spelled out, e.g. "three" for 3).
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    for fancy, plain in _TYPOGRAPHIC.items():
        text = text.replace(fancy, plain)
    text = re.sub(r"\s+", " ", text).strip().lower()
    if not text or not re.search(f"[{LETTERS}]", text):
        raise TextError("text is empty (it needs at least one letter)")
    if max_chars is not None and len(text) > max_chars:
        raise TextError(f"text is {len(text)} characters long; at most {max_chars} are supported")
    unsupported = sorted(set(text) - set(CHAR_SYMBOLS))
    if unsupported:
        hint = "; spell out numbers as words" if any(c.isdigit() for c in unsupported) else ""
        raise TextError(f"unsupported character(s) {''.join(unsupported)!r} in text; supported: letters a-z, "
                        f"spaces and {PUNCTUATION.strip()!r}{hint}")
    return text


def espeak_phonemes(text: str, voice: str = DEFAULT_ESPEAK_VOICE) -> str:
    """IPA of normalised ``text`` from espeak-ng, clauses joined by spaces (punctuation is not kept)."""
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise TextError("the phoneme front end needs espeak-ng on PATH; install it with "
                        "`sudo apt-get install espeak-ng` (or use a model with text front end 'chars')")
    result = subprocess.run([executable, "-q", "--ipa", "-v", voice, text], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise TextError(f"espeak-ng failed on {text!r}: {result.stderr.strip() or result.returncode}")
    phonemes = re.sub(r"\s+", " ", result.stdout).strip()
    if not phonemes:
        raise TextError(f"espeak-ng gave no phonemes for {text!r}")
    return phonemes


def flite_symbol(phone: str) -> str:
    """The one-character symbol of a flite phone ("aa" -> "ɑ"); TextError for a phone outside FLITE_PHONES."""
    try:
        return FLITE_PHONES[phone]
    except KeyError:
        raise TextError(f"flite gave the phone {phone!r}, which is not in the flite front end's table "
                        f"({' '.join(FLITE_PHONES)})") from None


def flite_phonemes(text: str) -> str:
    """The phones flite's US English front end gives for normalised ``text``, one symbol each (FLITE_PHONES)."""
    executable = shutil.which("flite")
    if executable is None:
        raise TextError("the flite front end needs flite on PATH; install it with `sudo apt-get install flite`")
    result = subprocess.run([executable, "-voice", FLITE_FRONT_END_VOICE, "-ps", "-t", text, "-o", "none"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise TextError(f"flite failed on {text!r}: {result.stderr.strip() or result.returncode}")
    symbols = "".join(flite_symbol(phone) for phone in result.stdout.split())
    if not symbols.strip("_"):
        raise TextError(f"flite gave no phones for {text!r}")
    return symbols


class TextTokenizer:
    """Text -> ids (T,) long in [1, V], through the front end and a fixed symbol table.

    Args:
        front_end: "chars", "phonemes" or "flite".
        symbols: the symbol table, one character per symbol (id = index + 1); default for "chars":
            ``CHAR_SYMBOLS``, for "flite": ``FLITE_SYMBOLS``. A "phonemes" table comes from the training
            corpus (``build_symbols``).
        espeak_voice: the espeak-ng voice that transcribes text for "phonemes".
    """

    def __init__(self, front_end: str = "chars", symbols: str = "", espeak_voice: str = DEFAULT_ESPEAK_VOICE):
        if front_end not in FRONT_ENDS:
            raise ValueError(f"text front end must be one of {FRONT_ENDS}, got {front_end!r}")
        symbols = symbols or {"chars": CHAR_SYMBOLS, "flite": FLITE_SYMBOLS}.get(front_end, "")
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"the symbol table must be non-empty without repeats, got {symbols!r}")
        self.front_end = front_end
        self.symbols = symbols
        self.espeak_voice = espeak_voice
        self._ids = {symbol: i + 1 for i, symbol in enumerate(symbols)}

    @property
    def vocab_size(self) -> int:
        """Ids 0..V: padding plus the symbols."""
        return len(self.symbols) + 1

    def to_symbols(self, text: str, max_chars: int | None = None) -> str:
        """Raw text -> the front end's symbol string (normalised characters, IPA, or flite's phones)."""
        text = normalize_text(text, max_chars)
        if self.front_end == "flite":
            return flite_phonemes(text)
        return text if self.front_end == "chars" else espeak_phonemes(text, self.espeak_voice)

    def encode_symbols(self, symbols: str) -> torch.Tensor:
        """A symbol string (``to_symbols``'s output, or a corpus's phoneme column) -> ids (T,) long."""
        unknown = sorted(set(symbols) - set(self._ids))
        if unknown:
            raise TextError(f"symbol(s) {''.join(unknown)!r} are not in this model's {self.front_end} inventory "
                            f"({self.symbols!r})")
        if not symbols:
            raise TextError("no symbols to encode")
        return torch.tensor([self._ids[s] for s in symbols], dtype=torch.long)

    def encode(self, text: str, max_chars: int | None = None) -> torch.Tensor:
        """Raw text -> ids (T,) long; TextError for empty, too long or unsupported text."""
        return self.encode_symbols(self.to_symbols(text, max_chars))

    def decode(self, ids: torch.Tensor) -> str:
        """ids (T,) -> the symbol string (padding dropped)."""
        return "".join(self.symbols[i - 1] for i in ids.tolist() if i != PAD_ID)

    @staticmethod
    def build_symbols(symbol_strings) -> str:
        """The sorted inventory of every symbol in ``symbol_strings`` (for a "phonemes" table)."""
        return "".join(sorted(set().union(*map(set, symbol_strings))))
