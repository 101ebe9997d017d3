"""Tiny datasets in the real layouts, shared by the loader tests and the command-line tests.

``write_audio`` writes a noise file; the fixtures ``speech_commands`` (Speech Commands v0.02)
and ``recordings`` (a YouTubeMix-style folder of long files) build the layouts in ``tmp_path``.
``run_compiled`` runs a kernel test's compile-for-sm_90 script outside the Triton interpreter.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mamba_audio.data import SPEECH_COMMANDS_WORDS

RATE = 16_000
LONG_RATE = 8000


def write_audio(path, num_samples, rate=RATE, channels=1, seed=0, scale=0.5):
    """A file of uniform noise in [-scale, scale]; returns the samples written (L,) or (L, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(seed).uniform(-scale, scale, (num_samples, channels))).astype(np.float32)
    samples = samples[:, 0] if channels == 1 else samples
    sf.write(path, samples, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_16")
    return samples


@pytest.fixture
def speech_commands(tmp_path):
    """The v0.02 layout: two clips of each of the 35 words, lists, background noise, a stray file."""
    root = tmp_path / "speech_commands_v0.02"
    for w, word in enumerate(SPEECH_COMMANDS_WORDS):
        for speaker in ("aaaa1111", "bbbb2222"):
            write_audio(root / word / f"{speaker}_nohash_0.wav", 4000 + 10 * w, seed=w)
    write_audio(root / "_background_noise_" / "white_noise.wav", 20_000)
    (root / "LICENSE").write_text("CC BY 4.0")
    (root / "validation_list.txt").write_text("zero/aaaa1111_nohash_0.wav\nbed/aaaa1111_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("nine/bbbb2222_nohash_0.wav\ncat/bbbb2222_nohash_0.wav\n")
    return root


@pytest.fixture
def recordings(tmp_path):
    """Eight recordings of 0.5 to 1.2 s at 8 kHz; one of them is at 16 kHz, one is stereo."""
    root = tmp_path / "piano"
    lengths = [4000, 5000, 6000, 7000, 8000, 9000, 2500, 9600]
    for i, n in enumerate(lengths):
        if i == 2:
            write_audio(root / f"piece_{i}.wav", 2 * n, rate=2 * LONG_RATE, seed=i)
        else:
            write_audio(root / f"piece_{i}.wav", n, rate=LONG_RATE, seed=i, channels=2 if i == 5 else 1)
    write_audio(root / "_scratch" / "ignored.wav", 100)
    return root


def run_compiled(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``script`` (Python that compiles Triton kernels for a GPU target) in a fresh interpreter without
    TRITON_INTERPRET, so that Triton compiles instead of interpreting; its stdout, or the test fails with its
    stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
