"""Where the default checkpoints are: what ``make run`` and ``recipes/spoken_digits/run.sh`` write.

The demo and the server load these when they are given no model, so both find the same ones.
Paths are relative to the working directory, as the commands that write them are.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINTS = (
    "runs/quickstart/lm/checkpoint",
    "runs/spoken_digits/lm/checkpoint",
    "runs/spoken_digits/classifier/checkpoint",
)


def default_checkpoints(root: str | Path = ".") -> list[str]:
    """The default checkpoint directories (``DEFAULT_CHECKPOINTS``) that exist under ``root``."""
    return [str(Path(root) / path) if str(root) != "." else path
            for path in DEFAULT_CHECKPOINTS if (Path(root) / path).is_dir()]
