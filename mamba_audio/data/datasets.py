"""Public speech datasets from a local root: SC09, Speech Commands v2, LJSpeech, LibriSpeech.

Nothing is downloaded unless ``download=True`` is passed, which hands over to torchaudio's
dataset class of the same data (it fetches and extracts the archive into ``root``). Audio is
always read by :func:`mamba_audio.audio.load_audio` (soundfile, resampled to ``sample_rate``),
never by torchaudio. A root that does not hold the data raises
:class:`mamba_audio.data.DataLayoutError` naming the layout expected and where to get it.

Every dataset takes the shared options of :class:`mamba_audio.data.clips.ClipDataset`
(tokenizer, cropping/padding, channel mixing, loudness, augmentation) as keyword arguments, and
its items batch with :func:`mamba_audio.data.collate_audio`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mamba_audio.audio import load_audio
from mamba_audio.data.clips import ClipDataset
from mamba_audio.data.spoken_words import DIGITS, SPEECH_COMMANDS_WORDS
from mamba_audio.data.folder import AudioFolder, DataLayoutError

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# torchaudio's SPEECHCOMMANDS extracts the archive here under root
SPEECH_COMMANDS_TORCHAUDIO_FOLDER = Path("SpeechCommands") / "speech_commands_v0.02"

SC09_WORDS = DIGITS  # label order zero..nine, so a label is the digit
SPEECH_COMMANDS_SAMPLE_RATE = 16_000

LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
LJSPEECH_FOLDER = "LJSpeech-1.1"
LJSPEECH_SAMPLE_RATE = 22_050

LIBRISPEECH_URL = "https://www.openslr.org/12"
LIBRISPEECH_FOLDER = "LibriSpeech"
LIBRISPEECH_SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other",
                       "train-clean-100", "train-clean-360", "train-other-500")
LIBRISPEECH_SAMPLE_RATE = 16_000


class SpeechCommands(AudioFolder):
    """Speech Commands v0.02 (35 words) from a local root, split by its own lists.

    Layout (the extracted archive; ``root`` may also be the folder that torchaudio's
    ``SPEECHCOMMANDS(download=True)`` extracts into, ``root/SpeechCommands/speech_commands_v0.02``)::

        root/<word>/<speaker>_nohash_<n>.wav    16 kHz, 1 s or shorter
        root/validation_list.txt, root/testing_list.txt
        root/_background_noise_/                skipped

    Args:
        root: see the layout.
        split: None, "train", "validation" or "test" (the official lists; train is the rest).
        classes: the words to use, in label order; files of other words are ignored.
        sample_rate: Hz, default 16000 (the data's own rate).
        segment_samples: pad or crop every clip to this many samples; default one second.
        download: when the data is not under root, download it with torchaudio (2.3 GB).
        **options: the options of :class:`mamba_audio.data.clips.ClipDataset` (tokenizer,
            mix_to_mono, random_crop, generator, max_seconds, loudness, loudness_db, augment).

    Items: ``audio`` Tensor[segment_samples] float32, ``length``, ``path``, ``sample_rate``,
    ``label`` (index in ``classes``) and ``tokens`` with a tokenizer.
    """

    name = "Speech Commands v0.02"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = None,
        classes: tuple[str, ...] = SPEECH_COMMANDS_WORDS,
        sample_rate: int = SPEECH_COMMANDS_SAMPLE_RATE,
        segment_samples: int | None = SPEECH_COMMANDS_SAMPLE_RATE,
        download: bool = False,
        **options,
    ):
        self.expected_layout = (
            f"expected the {self.name} layout: root/<word>/<speaker>_nohash_<n>.wav for the words "
            f"{', '.join(classes)}, with validation_list.txt and testing_list.txt beside them; get it by "
            f"extracting {SPEECH_COMMANDS_URL} into root, or pass download=True "
            f"(torchaudio puts it in root/{SPEECH_COMMANDS_TORCHAUDIO_FOLDER.as_posix()})"
        )
        root = Path(root)
        if (root / SPEECH_COMMANDS_TORCHAUDIO_FOLDER).is_dir():
            root = root / SPEECH_COMMANDS_TORCHAUDIO_FOLDER
        elif download and not (root / classes[0]).is_dir():
            from torchaudio.datasets import SPEECHCOMMANDS

            SPEECHCOMMANDS(root, download=True)  # fetches and extracts; we read the files ourselves
            root = root / SPEECH_COMMANDS_TORCHAUDIO_FOLDER
        super().__init__(root, sample_rate, split=split, labels=True, classes=classes,
                         segment_samples=segment_samples, **options)


class SC09(SpeechCommands):
    """SC09: the ten digits "zero".."nine" of Speech Commands v0.02 (label i is digit i).

    The data of the SaShiMi and Mamba papers' unconditional generation experiment: one-second
    clips at 16 kHz, split by the Speech Commands lists. Takes the arguments of
    :class:`SpeechCommands` except ``classes``.
    """

    name = "SC09 (the digits of Speech Commands v0.02)"

    def __init__(self, root: str | os.PathLike, **kwargs):
        if "classes" in kwargs:
            raise TypeError("SC09 has the ten digit classes; use SpeechCommands(classes=...) for others")
        super().__init__(root, classes=SC09_WORDS, **kwargs)


class LJSpeech(ClipDataset):
    """LJSpeech 1.1 from a local root: 13,100 clips of one speaker with transcripts.

    Layout (``root`` is the extracted ``LJSpeech-1.1`` folder or the folder that holds it)::

        LJSpeech-1.1/metadata.csv     <id>|<transcript>|<normalized transcript>, one clip per line
        LJSpeech-1.1/wavs/<id>.wav    22,050 Hz mono

    Args:
        root: see the layout.
        sample_rate: Hz, default 22050 (the data's own rate).
        download: when the data is not under root, download it with torchaudio (2.6 GB).
        **options: the options of :class:`mamba_audio.data.clips.ClipDataset`.

    Items: ``audio``, ``length``, ``path``, ``sample_rate``, ``transcript``,
    ``normalized_transcript``, ``speaker_id`` (0: the one speaker), ``tokens`` with a tokenizer.
    """

    def __init__(self, root: str | os.PathLike, *, sample_rate: int = LJSPEECH_SAMPLE_RATE,
                 download: bool = False, **options):
        super().__init__(sample_rate, **options)
        root = Path(root)
        expected = (f"expected the LJSpeech layout: {LJSPEECH_FOLDER}/metadata.csv and {LJSPEECH_FOLDER}/wavs/<id>.wav "
                    f"in root (or root being {LJSPEECH_FOLDER}); get it by extracting {LJSPEECH_URL} into root, "
                    "or pass download=True")
        if not (root / "metadata.csv").is_file() and download:
            from torchaudio.datasets import LJSPEECH

            LJSPEECH(root, download=True)  # fetches and extracts; we read metadata.csv ourselves
        self.root = root if (root / "metadata.csv").is_file() else root / LJSPEECH_FOLDER
        metadata = self.root / "metadata.csv"
        if not metadata.is_file() or not (self.root / "wavs").is_dir():
            raise DataLayoutError(f"{root}: no metadata.csv and wavs/ found; {expected}")
        self.entries = []  # (id, transcript, normalized transcript)
        with open(metadata, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE), 1):
                if len(row) != 3 or not row[0]:
                    raise DataLayoutError(f"{metadata}, line {line_number}: expected 3 fields "
                                          f"<id>|<transcript>|<normalized transcript>, got {len(row)}; {expected}")
                self.entries.append((row[0], row[1], row[2]))
        if not self.entries:
            raise DataLayoutError(f"{metadata}: no clips listed; {expected}")
        missing = [clip_id for clip_id, _, _ in self.entries if not (self.root / "wavs" / f"{clip_id}.wav").is_file()]
        if missing:
            raise DataLayoutError(f"{self.root / 'wavs'}: {len(missing)} clips of metadata.csv have no wav file "
                                  f"(first: {missing[0]}.wav); {expected}")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        clip_id, transcript, normalized = self.entries[index]
        path = self.root / "wavs" / f"{clip_id}.wav"
        audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
        return self.make_item(audio, path, transcript=transcript, normalized_transcript=normalized, speaker_id=0)


class LibriSpeech(ClipDataset):
    """One subset of LibriSpeech from a local root, listed by torchaudio's ``LIBRISPEECH``.

    Layout (``root`` is the folder holding ``LibriSpeech/``, or ``LibriSpeech/`` itself)::

        LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac   16 kHz
        LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt          "<utterance id> <TRANSCRIPT>"

    torchaudio's class gives the file list and the transcripts (``get_metadata``); the audio is
    read by :func:`mamba_audio.audio.load_audio`.

    Args:
        root: see the layout.
        subset: one of ``LIBRISPEECH_SUBSETS``, e.g. "train-clean-100".
        sample_rate: Hz, default 16000 (the data's own rate).
        download: when the subset is not under root, download it with torchaudio.
        **options: the options of :class:`mamba_audio.data.clips.ClipDataset`.

    Items: ``audio``, ``length``, ``path``, ``sample_rate``, ``transcript``, ``speaker_id``,
    ``chapter_id``, ``utterance_id`` (ints), ``tokens`` with a tokenizer.
    """

    def __init__(self, root: str | os.PathLike, subset: str = "train-clean-100", *,
                 sample_rate: int = LIBRISPEECH_SAMPLE_RATE, download: bool = False, **options):
        super().__init__(sample_rate, **options)
        if subset not in LIBRISPEECH_SUBSETS:
            raise ValueError(f"subset must be one of {LIBRISPEECH_SUBSETS}, got {subset!r}")
        root = Path(root)
        expected = (f"expected the LibriSpeech layout: {LIBRISPEECH_FOLDER}/{subset}/<speaker>/<chapter>/"
                    "<speaker>-<chapter>-<utterance>.flac with <speaker>-<chapter>.trans.txt beside them, in root "
                    f"(or root being {LIBRISPEECH_FOLDER}); get {subset}.tar.gz from {LIBRISPEECH_URL} and extract "
                    "it into root, or pass download=True")
        if (root / subset).is_dir():  # root is the LibriSpeech folder itself
            root, folder = root.parent, root.name
        else:
            folder = LIBRISPEECH_FOLDER
        if not (root / folder / subset).is_dir() and not download:
            raise DataLayoutError(f"{root}: no {folder}/{subset} folder; {expected}")
        from torchaudio.datasets import LIBRISPEECH

        self.archive = root / folder
        self.subset = subset
        self._listing = LIBRISPEECH(root, url=subset, folder_in_archive=folder, download=download)
        if len(self._listing) == 0:
            raise DataLayoutError(f"{self.archive / subset}: no .flac files at <speaker>/<chapter>/; {expected}")
        self._expected = expected

    def __len__(self) -> int:
        return len(self._listing)

    def __getitem__(self, index: int) -> dict:
        try:
            relative, _, transcript, speaker, chapter, utterance = self._listing.get_metadata(index)
        except FileNotFoundError as err:  # a missing trans.txt, or an utterance missing from it
            raise DataLayoutError(f"{self.archive / self.subset}: {err}; {self._expected}") from err
        path = self.archive / relative
        audio = load_audio(path, self.sample_rate, mix_to_mono=self.mix_to_mono, max_seconds=self.max_seconds)
        return self.make_item(audio, path, transcript=transcript, speaker_id=speaker,
                              chapter_id=chapter, utterance_id=utterance)
