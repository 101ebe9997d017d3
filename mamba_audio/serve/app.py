"""The HTTP and WebSocket API: FastAPI routes over the engine thread and the library's public models.

    GET  /health                    liveness
    GET  /ready                     200 when streams are taken, 503 while starting or draining
    GET  /v1/models, /v1/models/ID  what is served (OpenAI's list shape, plus kind, rate, classes, voices)
    POST /v1/audio/speech           OpenAI-compatible text to speech, streamed (JSON body)
    POST /v1/audio/generations      unconditional, class-conditional or prompt continuation, streamed (form)
    POST /v1/audio/classifications  uploaded audio -> class probabilities (form)
    WS   /v1/audio/stream           sessions: {"type": "start", ...} -> binary s16le frames -> {"type": "done"}

Audio bodies are streamed with chunked transfer as the chunks are generated (``encoding``);
the sample rate is in the ``X-Sample-Rate`` header. Every refused request gets a 4xx JSON
body in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

import mamba_audio
from mamba_audio.serve.encoding import FORMATS, AudioEncoder, to_int16
from mamba_audio.serve.engine import Engine, Job, ShuttingDownError, StreamLimitError

log = logging.getLogger("mamba_audio.serve")

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
    lock: Any = field(default=None, repr=False)

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


# -- errors ----------------------------------------------------------------------------------------
class APIError(Exception):
    """A refused request: its HTTP status and OpenAI-style error body."""

    TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
             413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
             429: "rate_limit_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def _error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status in (429, 503) else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _validation_message(errors) -> tuple[str, str | None]:
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


class BodyLimit:
    """ASGI middleware: HTTP request bodies over ``limit`` bytes get 413, by Content-Length when it is
    given and by counting otherwise, before the route reads them whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"request body is larger than the limit of {self.limit} bytes",
                             code="request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error_response(too_large)(scope, receive, send)
        received = 0
        exceeded = False

        async def counting_receive():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # the route sees the client leave; its answer is replaced
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _error_response(too_large)(scope, receive, send)


# -- requests --------------------------------------------------------------------------------------
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
    def check_format(response_format: str, sample_rate: int) -> str:
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
        self.check_format(request.response_format, served.sample_rate)
        tts = served.model

        def factory():
            return tts.start(request.input, voice=request.voice, speed=request.speed, seed=request.seed)

        return served, factory, round(self.config.max_seconds * served.sample_rate)

    def generation_stream(self, params: GenerationParams, prompt: torch.Tensor | None, served: ServedModel):
        """(factory, max_samples) for a generation request, checked."""
        self.check_seconds(params.seconds)
        self.check_format(params.response_format, served.sample_rate)
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


async def _chunks(job: Job, queue: asyncio.Queue):
    """The chunks of ``job`` as they arrive; ends at its "end" item, raises its "error"."""
    while True:
        job_id, kind, payload = await queue.get()
        if job_id != job.id:
            continue
        if kind == "chunk":
            yield payload
        elif kind == "error":
            raise payload
        else:
            return


class AudioStreamResponse(StreamingResponse):
    """A streamed audio body whose stream is closed however the response ends (done, error, disconnect)."""

    def __init__(self, server: Server, job: Job, queue: asyncio.Queue, encoder: AudioEncoder, sample_rate: int):
        async def body():
            head = encoder.start()
            if head:
                yield head
            async for chunk in _chunks(job, queue):
                data = encoder.add(chunk.audio)
                if data:
                    yield data
            tail = encoder.finish()
            if tail:
                yield tail

        super().__init__(body(), media_type=encoder.media_type,
                         headers={"X-Sample-Rate": str(sample_rate), "Cache-Control": "no-store"})
        self.server, self.job = server, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.server.engine.close(self.job)


# -- the app ---------------------------------------------------------------------------------------
def create_app(models: list[ServedModel], config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (see ``serve_models``); the engine thread starts with the app's
    lifespan and is stopped, ending open streams, when it ends."""
    config = config or ServeConfig()
    server = Server(models, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="mamba-audio", version=mamba_audio.__version__, lifespan=lifespan,
                  description="Streaming audio generation, speech and classification with SaShiMi-Mamba models.")
    app.state.server = server
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)

    @app.exception_handler(APIError)
    async def on_api_error(request, err: APIError):
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, err: RequestValidationError):
        message, param = _validation_message(err.errors())
        return _error_response(APIError(400, message, param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, err: StarletteHTTPException):
        status = err.status_code if 400 <= err.status_code < 600 else 500
        return _error_response(APIError(status, str(err.detail)))

    @app.exception_handler(Exception)
    async def on_unexpected(request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": {"message": f"internal error: {type(err).__name__}", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    # -- status -----------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Readiness: 200 while new streams are taken, 503 before the engine runs and while draining."""
        engine = server.engine
        body = {"status": "ready" if engine.running and not engine.draining else "unavailable",
                "streams": engine.open_streams, "max_streams": engine.max_streams}
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/v1/models")
    async def list_models():
        """Every served model."""
        return {"object": "list", "data": [m.describe() for m in server.models.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        """One served model."""
        if model_id not in server.models:
            raise APIError(404, f"no model {model_id!r}; models: {', '.join(server.models)}", "model",
                           "model_not_found")
        return server.models[model_id].describe()

    # -- audio ------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech", response_class=StreamingResponse,
              responses={200: {"content": {t: {} for t in FORMATS.values()}}})
    async def speech(request: SpeechRequest):
        """Text to speech, streamed as it is synthesized (OpenAI-compatible)."""
        served, factory, max_samples = server.speech_stream(request)
        queue: asyncio.Queue = asyncio.Queue()
        job = await server.open(factory, queue, max_samples)
        encoder = AudioEncoder(request.response_format, served.sample_rate)
        return AudioStreamResponse(server, job, queue, encoder, served.sample_rate)

    @app.post("/v1/audio/generations", response_class=StreamingResponse,
              responses={200: {"content": {t: {} for t in FORMATS.values()}}})
    async def generations(model: str | None = Form(None), seconds: float = Form(1.0), label: str | None = Form(None),
                          seed: int | None = Form(None), temperature: float = Form(1.0),
                          top_k: int | None = Form(None), top_p: float | None = Form(None),
                          response_format: str = Form("wav"), prompt: UploadFile | None = File(None)):
        """Audio from a generator: unconditional, of a class (``label``), or continuing ``prompt`` (an
        uploaded file, resampled and mixed to mono); streamed as it is generated."""
        try:
            params = GenerationParams(model=model, seconds=seconds, label=label, seed=seed,
                                      temperature=temperature, top_k=top_k, top_p=top_p,
                                      response_format=response_format)
        except ValidationError as err:
            raise APIError(400, *_validation_message(err.errors())) from None
        served = server.model(params.model, "generator")
        prompt_audio = None
        if prompt is not None and (prompt.filename or prompt.size):
            prompt_audio = await server.read_upload(prompt, served.sample_rate, "prompt")
        factory, max_samples = server.generation_stream(params, prompt_audio, served)
        queue: asyncio.Queue = asyncio.Queue()
        job = await server.open(factory, queue, max_samples)
        encoder = AudioEncoder(params.response_format, served.sample_rate)
        return AudioStreamResponse(server, job, queue, encoder, served.sample_rate)

    @app.post("/v1/audio/classifications")
    async def classifications(file: UploadFile = File(...), model: str | None = Form(None)):
        """Class probabilities of an uploaded clip, most likely first."""
        served = server.model(model, "classifier")
        audio = await server.read_upload(file, served.sample_rate, "file")
        classifier = served.model

        def classify():
            device = next(classifier.parameters()).device
            with torch.no_grad():
                logits = classifier(classifier.tokenizer.encode(audio)[None].to(device))
            return logits.float().softmax(-1)[0].cpu()

        probs = await run_in_threadpool(classify)
        ranked = sorted(zip(classifier.class_names, probs.tolist()), key=lambda item: -item[1])
        return {"model": served.id, "duration_seconds": audio.shape[0] / served.sample_rate,
                "labels": [{"label": name, "probability": p} for name, p in ranked]}

    @app.websocket("/v1/audio/stream")
    async def stream_session(websocket: WebSocket):
        await _websocket_session(server, websocket)

    return app


# -- WebSocket sessions ----------------------------------------------------------------------------
async def _websocket_session(server: Server, websocket: WebSocket) -> None:
    """One session: any number of streams one after another. Client -> server: text JSON
    ``{"type": "start", "task": "generation" | "speech", ...}`` (the fields of the matching HTTP
    request; ``model`` optional) and ``{"type": "stop"}``. Server -> client: ``{"type": "started",
    "stream", "sample_rate", "format": "s16le"}``, binary frames of s16le mono samples, then
    ``{"type": "done", "samples", "reason"}``; ``{"type": "error", "error": {...}}`` for a refused message."""
    await websocket.accept()
    inbox: asyncio.Queue = asyncio.Queue()  # control messages (job id 0) and the current stream's chunks

    async def read_messages():
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await inbox.put((0, "message", message))
        except (WebSocketDisconnect, RuntimeError):
            pass
        await inbox.put((0, "disconnect", None))

    async def send_error(err: APIError):
        await websocket.send_json({"type": "error", **err.body()})

    reader = asyncio.create_task(read_messages())
    job = None
    try:
        while True:
            try:
                job_id, kind, message = await asyncio.wait_for(inbox.get(), server.config.idle_timeout_s)
            except asyncio.TimeoutError:
                await send_error(APIError(400, f"no start message for {server.config.idle_timeout_s:g} s; "
                                          "closing the session", code="idle_timeout"))
                await websocket.close(1000)
                return
            if kind == "disconnect":
                return
            if job_id != 0:
                continue  # a late chunk of a stream already stopped
            request = _parse_ws_message(message)
            if isinstance(request, APIError):
                await send_error(request)
                continue
            if request.get("type") == "stop":
                continue  # nothing is streaming
            try:
                job, sample_rate = await _open_ws_stream(server, request, inbox)
            except APIError as err:
                await send_error(err)
                continue
            await websocket.send_json({"type": "started", "stream": job.id, "sample_rate": sample_rate,
                                       "format": "s16le"})
            samples, reason = 0, "finished"
            while True:
                job_id, kind, payload = await inbox.get()
                if job_id == 0:
                    if kind == "disconnect":
                        return
                    control = _parse_ws_message(payload)
                    if isinstance(control, dict) and control.get("type") == "stop":
                        reason = "stopped"
                        break
                    await send_error(control if isinstance(control, APIError) else APIError(
                        400, "a stream is running: only {\"type\": \"stop\"} is taken until it is done"))
                    continue
                if job_id != job.id:
                    continue
                if kind == "chunk":
                    pcm = to_int16(payload.audio).tobytes()
                    samples += payload.audio.shape[0]
                    await websocket.send_bytes(pcm)
                elif kind == "error":
                    reason = "error"
                    await send_error(APIError(503, f"generation failed: {payload}"))
                    break
                else:
                    reason = payload
                    break
            server.engine.close(job)
            job = None
            await websocket.send_json({"type": "done", "samples": samples, "reason": reason})
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send
    finally:
        if job is not None:
            server.engine.close(job)
        reader.cancel()


def _parse_ws_message(message: dict) -> dict | APIError:
    text = message.get("text")
    if text is None:
        return APIError(400, "send JSON text messages; binary frames only go from the server to the client")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as err:
        return APIError(400, f"message is not valid JSON: {err}")
    if not isinstance(request, dict) or request.get("type") not in ("start", "stop"):
        return APIError(400, 'message must be a JSON object with "type": "start" or "stop"', "type")
    return request


async def _open_ws_stream(server: Server, request: dict, inbox: asyncio.Queue) -> tuple[Job, int]:
    fields = {k: v for k, v in request.items() if k not in ("type", "task")}
    task = request.get("task")
    try:
        if task == "speech":
            speech = SpeechRequest(**{"model": "tts-1", **fields, "response_format": "pcm"})
            served, factory, max_samples = server.speech_stream(speech)
        elif task == "generation":
            if "label" in fields and fields["label"] is not None:
                fields["label"] = str(fields["label"])
            params = GenerationParams(**{**fields, "response_format": "pcm"})
            served = server.model(params.model, "generator")
            factory, max_samples = server.generation_stream(params, None, served)
        else:
            raise APIError(400, 'task must be "generation" or "speech"', "task")
    except ValidationError as err:
        raise APIError(400, *_validation_message(err.errors())) from None
    except TypeError as err:
        raise APIError(400, f"malformed start message: {err}") from None
    return await server.open(factory, inbox, max_samples), served.sample_rate
