"""Finding a pretrained codec's files on this machine: a local directory, or the Hugging Face cache.

Nothing is ever downloaded: a missing file is a CodecError that names it and says how to get it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .base import CodecError


def require_package(module: str, package: str, codec: str):
    """Import ``module`` or raise a CodecError saying which pip package the ``codec`` adapter needs."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CodecError(
            f"the {codec} adapter needs the '{package}' package: pip install '{package}' "
            f"(or pip install 'mamba-audio[codecs]'); import failed with: {err}"
        ) from err


def find_codec_files(name_or_path: str | os.PathLike, config_file: str, weight_files: tuple[str, ...],
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding ``config_file`` and the first of ``weight_files`` found there.

    ``name_or_path`` is a local directory, or a Hugging Face repository id (``"facebook/encodec_24khz"``)
    looked up in the local hub cache only (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``).
    """
    path = Path(name_or_path).expanduser()
    wanted = f"{config_file} and {' or '.join(weight_files)}"
    if path.is_dir():
        missing = [config_file] if not (path / config_file).is_file() else []
        if not any((path / name).is_file() for name in weight_files):
            missing.append(" or ".join(weight_files))
        if missing:
            raise CodecError(f"codec directory {path} has no {', '.join(missing)} (it needs {wanted})")
        return path
    repo_id = str(name_or_path)
    if repo_id.count("/") != 1 or path.exists():
        raise CodecError(f"{name_or_path} is neither a directory nor a Hugging Face repository id (owner/name)")
    from huggingface_hub import try_to_load_from_cache

    found = {}
    for name in (config_file, *weight_files):
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            found[name] = Path(cached)
    weights = [name for name in weight_files if name in found]
    if config_file not in found or not weights:
        missing = config_file if config_file not in found else " or ".join(weight_files)
        raise CodecError(
            f"{repo_id}: {missing} is not in the local Hugging Face cache and nothing is downloaded here. "
            f"Fetch it on a machine with network access (`hf download {repo_id}`, with HF_HOME pointing at the "
            f"cache this machine uses), or download the repository's {wanted} into a directory and pass its path"
        )
    directory = found[config_file].parent
    if found[weights[0]].parent != directory:  # files of two different cached revisions
        raise CodecError(f"{repo_id}: {config_file} and {weights[0]} are cached from different revisions; "
                         f"re-fetch the repository (`hf download {repo_id}`)")
    return directory
