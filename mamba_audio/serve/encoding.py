"""Audio response bodies written piece by piece while the audio is still being generated.

Every encoder takes float chunks (n,) in [-1, 1] and returns the bytes to send now:

- ``pcm``: raw signed 16-bit little-endian mono samples, nothing else.
- ``wav``: a 44-byte RIFF header whose sizes say "unknown" (0xFFFFFFFF, as streaming
  servers do), then the same 16-bit samples; players read until the connection ends.
- ``flac``: libsndfile's FLAC encoder writing into a forward-only sink. Frames leave as
  the encoder finishes them (a frame is 4096 samples); the STREAMINFO block keeps a total
  length of 0, which the FLAC format defines as "unknown", because the encoder's final
  rewrite of that block would land in bytes that were already sent and is dropped.
"""

from __future__ import annotations

import struct

import numpy as np
import soundfile as sf
import torch

FORMATS = {"wav": "audio/wav", "pcm": "audio/L16", "flac": "audio/flac"}
UNKNOWN_SIZE = 0xFFFFFFFF


def to_int16(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n,) float in [-1, 1] -> (n,) int16, clipped."""
    audio = np.asarray(audio, dtype=np.float32)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN_SIZE) -> bytes:
    """The 44-byte header of a mono 16-bit PCM wav file; sizes 0xFFFFFFFF when the length is unknown."""
    riff_size = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class _ForwardSink:
    """A file-like object for libsndfile's virtual I/O that hands out its bytes as they are written.

    libsndfile seeks back to patch headers when it closes a file; writes that fall in bytes
    already handed out are dropped, since those bytes are on their way to the client.
    """

    def __init__(self):
        self.position = 0
        self.sent = 0  # bytes handed out by take()
        self.size = 0
        self.pending = bytearray()  # bytes [sent, sent + len(pending)) not yet handed out

    def write(self, data) -> int:
        data = bytes(data)
        written = len(data)
        if self.position < self.sent:
            skip = min(written, self.sent - self.position)
            data, self.position = data[skip:], self.position + skip
        offset = self.position - self.sent
        if offset > len(self.pending):
            self.pending.extend(bytes(offset - len(self.pending)))
        self.pending[offset:offset + len(data)] = data
        self.position += len(data)
        self.size = max(self.size, self.position)
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = (offset, self.position + offset, self.size + offset)[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, n: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.sent += len(out)
        self.pending = bytearray()
        return out


class AudioEncoder:
    """Encode one response: ``start()`` bytes, then ``add(chunk)`` per chunk, then ``finish()``."""

    def __init__(self, response_format: str, sample_rate: int):
        if response_format not in FORMATS:
            raise ValueError(f"response_format must be one of {sorted(FORMATS)}, got {response_format!r}")
        self.format = response_format
        self.sample_rate = sample_rate
        self.media_type = FORMATS[response_format]
        self._sink = self._file = None
        if response_format == "flac":
            self._sink = _ForwardSink()
            self._file = sf.SoundFile(self._sink, "w", samplerate=sample_rate, channels=1, format="FLAC",
                                      subtype="PCM_16")

    def start(self) -> bytes:
        if self.format == "wav":
            return wav_header(self.sample_rate)
        if self.format == "flac":
            return self._sink.take()
        return b""

    def add(self, audio) -> bytes:
        samples = to_int16(audio)
        if self._file is not None:
            self._file.write(samples)
            return self._sink.take()
        return samples.tobytes()

    def finish(self) -> bytes:
        if self._file is not None and not self._file.closed:
            self._file.close()
            return self._sink.take()
        return b""
