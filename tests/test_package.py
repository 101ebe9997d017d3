"""Packaging: the kernels stand alone, the public API resolves, the command is installed."""

import subprocess
import sys
from pathlib import Path

import mamba_audio


def test_kernels_import_without_model_code():
    code = ("import sys, mamba_audio.kernels; "
            "print(sorted(m for m in sys.modules if m.startswith('mamba_audio')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "mamba_audio.kernels" in loaded
    assert "mamba_audio.models" not in loaded and "mamba_audio.audio" not in loaded


def test_public_api_resolves_lazily():
    for name in mamba_audio.__all__:
        assert getattr(mamba_audio, name) is not None


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "mamba-audio"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("train", "generate", "classify", "info", "quickstart"):
        assert command in result.stdout
