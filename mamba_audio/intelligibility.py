"""Intelligibility of speech: pocketsphinx transcribes it, :func:`mamba_audio.metrics.word_error_rate` scores it.

pocketsphinx (PyPI) carries its own US English acoustic model, dictionary and language model, so it
runs offline. It listens at 16 kHz; audio at other rates is resampled first.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF

RECOGNIZER_SAMPLE_RATE = 16_000


class Transcriber:
    """Speech -> text with pocketsphinx's bundled English model (one decoder, reused).

    Every utterance starts from the same decoder state: pocketsphinx otherwise carries its feature
    normalisation (the cepstral mean) from one utterance to the next, so a clip's transcript, and a
    word error rate, would depend on what was transcribed before it.
    """

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as err:  # a dependency, but say what to do if it is missing
            raise ImportError("intelligibility needs pocketsphinx: pip install pocketsphinx") from err
        self._decoder = Decoder(samprate=RECOGNIZER_SAMPLE_RATE, loglevel="FATAL")
        self._initial_cmn = self._decoder.get_cmn()

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> str:
        """audio (L,) float in [-1, 1] at ``sample_rate`` -> lower-case words ("" when nothing is heard)."""
        if audio.dim() != 1 or not torch.isfinite(audio).all():
            raise ValueError(f"audio must be finite mono (L,), got shape {tuple(audio.shape)}")
        audio = audio.detach().float().cpu()
        if sample_rate != RECOGNIZER_SAMPLE_RATE:
            audio = AF.resample(audio, sample_rate, RECOGNIZER_SAMPLE_RATE)
        pcm = (audio.clamp(-1, 1).numpy() * 32767).astype(np.int16).tobytes()
        self._decoder.reinit_feat()
        self._decoder.set_cmn(self._initial_cmn)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""
