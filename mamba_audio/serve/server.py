"""What one server holds and checks: its limits, the served models, and every request turned into a stream.

``Server`` looks models up, validates requests (each refusal an ``APIError``), reads uploaded audio
and builds the factories that the engine thread calls to start library streams.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

import mamba_audio
from mamba_audio.serve.encoding import FORMATS
from mamba_audio.serve.engine import Engine, Job, ShuttingDownError, StreamLimitError
from mamba_audio.serve.errors import APIError

MAX_SEED = 2**62
# OpenAI's speech endpoint names its model; these names reach the default voice so that
# clients written for it work unchanged
OPENAI_SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass
class ServeConfig:
    """Limits of one server. Sizes in bytes, durations in seconds."""

    max_streams: int = 8  # open audio streams over all models and clients; 429 beyond
    max_seconds: float = 30.0  # longest audio one request may ask for (speech is cut there)
    max_text_chars: int = 4096  # longest speech input (the voice's own limit applies when lower)
    max_upload_bytes: int = 10 * 2**20  # request bodies; 413 beyond
    max_upload_seconds: float = 60.0  # longest uploaded audio (prompt or clip to classify)
    request_timeout_s: float = 300.0  # wall clock of one stream; it is ended after this
    idle_timeout_s: float = 60.0  # a WebSocket session with no start message for this long is closed
    shutdown_grace_s: float = 10.0  # on shutdown, open streams get this long to finish, then are ended

    def __post_init__(self):
        for name in ("max_streams", "max_seconds", "max_text_chars", "max_upload_bytes", "max_upload_seconds",
                     "request_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")


@dataclass
class ServedModel:
    """One model behind the API. ``kind``: "generator" (SaShiMiLM, streamed through ``generator``),
    "classifier" (SaShiMiClassifier) or "speech" (TextToSpeech)."""

    id: str
    kind: str
    model: Any
    generator: Any = None  # the StreamingGenerator of a generator

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate if self.kind == "speech" else self.model.config.sample_rate)

    def describe(self) -> dict:
        info = {"id": self.id, "object": "model", "owned_by": "mamba-audio", "kind": self.kind,
                "sample_rate": self.sample_rate}
        if self.kind == "speech":
            info["voices"] = list(self.model.voices)
            info["max_text_chars"] = int(self.model.max_text_chars)
        else:
            info["classes"] = list(self.model.config.class_names or [])
        return info


def serve_models(models: dict[str, Any], max_streams: int) -> list[ServedModel]:
    """Wrap loaded models by id: generators get one StreamingGenerator of ``max_streams`` slots each."""
    served = []
    for model_id, model in models.items():
        if isinstance(model, mamba_audio.SaShiMiLM):
            served.append(ServedModel(model_id, "generator", model.eval(),
                                      mamba_audio.StreamingGenerator(model, max_streams=max_streams)))
        elif isinstance(model, mamba_audio.SaShiMiClassifier):
            served.append(ServedModel(model_id, "classifier", model.eval()))
        elif all(hasattr(model, name) for name in ("start", "voices", "sample_rate", "max_text_chars")):
            served.append(ServedModel(model_id, "speech", model))
        else:
            raise TypeError(f"model {model_id!r}: cannot serve a {type(model).__name__}; serve a SaShiMiLM, "
                            f"a SaShiMiClassifier or a TextToSpeech")
    return served


class SpeechRequest(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, plus an optional seed."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a speech model id from /v1/models, or tts-1, tts-1-hd, gpt-4o-mini-tts")
    input: str = Field(description="the text to speak")
    voice: str | None = Field(None, description="one of the model's voices (default: its first)")
    response_format: str = Field("wav", description="wav, pcm (s16le mono) or flac")
    speed: float = Field(1.0, description="0.25 to 4.0")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    instructions: str | None = Field(None, description="not supported: must be left out")
    stream_format: Literal["audio"] | None = Field(None, description="only 'audio' (raw audio bytes)")


class GenerationParams(BaseModel):
    """What a generation stream takes (the form fields of POST /v1/audio/generations)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    seconds: float = 1.0
    label: str | None = None
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    temperature: float = Field(1.0, ge=0, le=10)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    response_format: str = "wav"


class Server:
    """The state behind one app: the served models, the engine, the limits."""

    def __init__(self, models: list[ServedModel], config: ServeConfig):
        if not models:
            raise ValueError("nothing to serve: give at least one model")
        ids = [m.id for m in models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        self.models = {m.id: m for m in models}
        self.config = config
        self.engine = Engine(config.max_streams, config.request_timeout_s)

    # -- lookups ----------------------------------------------------------------------------------
    def model(self, model_id: str | None, kind: str) -> ServedModel:
        of_kind = [m for m in self.models.values() if m.kind == kind]
        if model_id is None or (kind == "speech" and model_id in OPENAI_SPEECH_MODELS and model_id not in self.models):
            if not of_kind:
                raise APIError(404, f"this server has no {kind} model", "model", "model_not_found")
            return of_kind[0]
        served = self.models.get(model_id)
        if served is None or served.kind != kind:
            names = ", ".join(m.id for m in of_kind) or "none"
            raise APIError(404, f"no {kind} model {model_id!r}; {kind} models here: {names}", "model",
                           "model_not_found")
        return served

    @staticmethod
    def check_format(response_format: str) -> str:
        if response_format not in FORMATS:
            raise APIError(400, f"response_format {response_format!r} is not supported; supported: "
                           + ", ".join(sorted(FORMATS)), "response_format", "unsupported_format")
        return response_format

    def check_seconds(self, seconds: float) -> float:
        if not (math.isfinite(seconds) and 0 < seconds <= self.config.max_seconds):
            raise APIError(400, f"seconds must be in (0, {self.config.max_seconds:g}], got {seconds}", "seconds")
        return seconds

    async def read_upload(self, upload: UploadFile, sample_rate: int, param: str) -> torch.Tensor:
        """An uploaded file as mono audio (L,) at ``sample_rate``: multichannel is mixed, other rates are
        resampled; empty, corrupt, NaN or too-long audio is a 400 naming the problem."""
        data = await upload.read()
        name = upload.filename or param
        if not data:
            raise APIError(400, f"{param} ({name}): the uploaded file is empty", param, "invalid_audio")
        suffix = Path(name).suffix if Path(name).suffix.lower() in (".wav", ".flac", ".ogg") else ".audio"
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="mamba-audio-upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return await run_in_threadpool(mamba_audio.load_audio, path, sample_rate, mix_to_mono=True,
                                           max_seconds=self.config.max_upload_seconds)
        except mamba_audio.AudioError as err:
            raise APIError(400, f"{param} ({name}): " + str(err).replace(path, "").lstrip(": "), param,
                           "invalid_audio") from None
        finally:
            Path(path).unlink(missing_ok=True)

    async def open(self, factory, queue: asyncio.Queue, max_samples: int | None = None) -> Job:
        """Open a stream on the engine, with the library's refusals turned into API errors."""
        try:
            return await self.engine.open(factory, queue, max_samples=max_samples)
        except StreamLimitError as err:
            raise APIError(429, str(err), code="too_many_streams") from None
        except ShuttingDownError as err:
            raise APIError(503, str(err), code="shutting_down") from None
        except (ValueError, TypeError) as err:
            raise APIError(400, str(err)) from None
        except RuntimeError as err:  # the library's "every slot is busy" (a model's own stream limit)
            raise APIError(429, str(err), code="too_many_streams") from None

    # -- stream factories -------------------------------------------------------------------------
    def speech_stream(self, request: SpeechRequest):
        """(model, factory, max_samples) for a speech request, checked."""
        served = self.model(request.model, "speech")
        if request.instructions is not None:
            raise APIError(400, "instructions are not supported by this server's voices", "instructions")
        limit = min(self.config.max_text_chars, int(served.model.max_text_chars))
        if not request.input.strip():
            raise APIError(400, "input is empty: give the text to speak", "input")
        if len(request.input) > limit:
            raise APIError(400, f"input is {len(request.input)} characters, longer than the limit of {limit}",
                           "input", "input_too_long")
        if request.voice is not None and request.voice not in served.model.voices:
            raise APIError(400, f"unknown voice {request.voice!r}; voices: {', '.join(served.model.voices)}",
                           "voice")
        if not (math.isfinite(request.speed) and 0.25 <= request.speed <= 4.0):
            raise APIError(400, f"speed must be in [0.25, 4.0], got {request.speed}", "speed")
        self.check_format(request.response_format)
        tts = served.model

        def factory():
            return tts.start(request.input, voice=request.voice, speed=request.speed, seed=request.seed)

        return served, factory, round(self.config.max_seconds * served.sample_rate)

    def generation_stream(self, params: GenerationParams, prompt: torch.Tensor | None, served: ServedModel):
        """(factory, max_samples) for a generation request, checked."""
        self.check_seconds(params.seconds)
        self.check_format(params.response_format)
        label: str | int | None = params.label
        names = served.model.config.class_names or []
        if label is not None and label not in names and label.strip().isdigit():
            label = int(label)
        max_samples = max(1, round(params.seconds * served.sample_rate))
        generator = served.generator

        def factory():
            return generator.start(prompt=prompt, label=label, chunk_samples=generator.block_samples,
                                   max_samples=max_samples, temperature=params.temperature, top_k=params.top_k,
                                   top_p=params.top_p, seed=params.seed)

        return factory, max_samples
