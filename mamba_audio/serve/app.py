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
import logging

import torch
from fastapi import FastAPI, File, Form, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import mamba_audio
from mamba_audio.serve.encoding import FORMATS, AudioEncoder
from mamba_audio.serve.engine import Job
from mamba_audio.serve.errors import APIError, BodyLimit, error_response, validation_message
from mamba_audio.serve.server import GenerationParams, ServeConfig, ServedModel, Server, SpeechRequest
from mamba_audio.serve.websocket import websocket_session

log = logging.getLogger("mamba_audio.serve")


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
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, err: RequestValidationError):
        message, param = validation_message(err.errors())
        return error_response(APIError(400, message, param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, err: StarletteHTTPException):
        status = err.status_code if 400 <= err.status_code < 600 else 500
        return error_response(APIError(status, str(err.detail)))

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
            raise APIError(400, *validation_message(err.errors())) from None
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
        await websocket_session(server, websocket)

    return app
