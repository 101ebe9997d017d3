"""WebSocket sessions over the engine: ``WS /v1/audio/stream``."""

from __future__ import annotations

import asyncio
import json

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from mamba_audio.serve.encoding import to_int16
from mamba_audio.serve.engine import Job
from mamba_audio.serve.errors import APIError, validation_message
from mamba_audio.serve.server import GenerationParams, Server, SpeechRequest


async def websocket_session(server: Server, websocket: WebSocket) -> None:
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
        raise APIError(400, *validation_message(err.errors())) from None
    except TypeError as err:
        raise APIError(400, f"malformed start message: {err}") from None
    return await server.open(factory, inbox, max_samples), served.sample_rate
