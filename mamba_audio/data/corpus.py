"""What every offline corpus builder shares: tool look-up, idempotent builds, staging.

A builder (:func:`mamba_audio.data.build_spoken_digits`, :func:`mamba_audio.data.build_piano_corpus`)
writes its files into a staging folder beside ``root`` and moves it into place at the end with a
completion marker, ``root/.corpus_complete.json``, that records the builder and its arguments.
Calling it again with the same arguments does nothing; with other arguments it is an error
unless ``overwrite`` is passed; an interrupted build leaves no half-corpus behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

COMPLETION_MARKER = ".corpus_complete.json"


class CorpusError(ValueError):
    """A corpus that cannot be built: a missing tool, bad arguments, or a folder in the way."""


def require_executable(name: str, debian_package: str, purpose: str) -> str:
    """The path of program ``name`` on PATH, or a :class:`CorpusError` naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        raise CorpusError(
            f"{name} was not found on PATH; {purpose}. Install it with `sudo apt-get install {debian_package}` "
            f"(Debian/Ubuntu package {debian_package}; `make setup` installs it)."
        )
    return path


def corpus_is_built(root: Path, builder: str, arguments: dict, overwrite: bool) -> bool:
    """True when ``root`` already holds this builder's corpus made with ``arguments``.

    Otherwise makes sure the build may go ahead: a corpus made with other arguments is removed
    when ``overwrite`` is set and is an error if not; a non-empty folder without a marker, or a
    file, is always an error.
    """
    marker = root / COMPLETION_MARKER
    if marker.exists():
        record = json.loads(marker.read_text())
        recorded = record.get("arguments", {})
        if record.get("builder") == builder and recorded == arguments:
            return True
        if not overwrite:
            if record.get("builder") != builder:
                differences = f"builder: {record.get('builder')!r} there, {builder!r} asked"
            else:
                differences = ", ".join(f"{key}: {recorded.get(key)!r} there, {value!r} asked"
                                        for key, value in arguments.items() if recorded.get(key) != value)
            raise CorpusError(f"{root} holds a corpus built with other arguments ({differences}); "
                              "choose another folder or pass overwrite=True to rebuild it")
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise CorpusError(f"{root} is not empty and holds no finished corpus (no {COMPLETION_MARKER}); "
                          "choose a new or empty folder")
    elif root.exists() and not root.is_dir():
        raise CorpusError(f"{root} is a file, not a folder")
    return False


@contextlib.contextmanager
def staged_build(root: Path, record: dict) -> Iterator[Path]:
    """Yield an empty staging folder; on success write the marker (``record``) and move it to ``root``.

    ``record`` must hold ``builder`` and ``arguments`` (what :func:`corpus_is_built` compares);
    the builder may add to it inside the block. On an exception the staging folder is removed.
    """
    staging = root.parent / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        (staging / COMPLETION_MARKER).write_text(json.dumps(record, indent=1) + "\n")
        if root.is_dir():
            root.rmdir()  # empty: corpus_is_built refused anything else
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
