"""Where every benchmark writes its result: ``benchmarks/results/<kind>_<device>.json``, and a copy
of the file under ``$OUT`` when that is set (on the GPU machine, so the result comes back)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def file_label(device_name: str) -> str:
    """A device name as it appears in result file names: "NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3"."""
    return re.sub(r"\s+", "_", device_name.strip().lower())


def save_result(result: dict, kind: str, label: str, out: Path | None = None, indent: int = 1) -> Path:
    """Write ``result`` to ``out`` (default ``RESULTS/<kind>_<label>.json``) and to ``$OUT`` if set."""
    out = Path(out) if out is not None else RESULTS / f"{kind}_{label}.json"
    text = json.dumps(result, indent=indent) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text(text)
    return out
