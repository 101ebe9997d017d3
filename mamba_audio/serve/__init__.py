"""The streaming audio API server (``mamba-audio serve``): FastAPI on uvicorn over the public models.

    from mamba_audio.serve import ServeConfig, create_app, load_models, serve_models
    app = create_app(serve_models(load_models(["runs/lm/checkpoint"]), max_streams=8), ServeConfig())

``app`` holds the routes, ``server`` the limits, the models and the checks that turn requests into
streams, ``engine`` the one thread that runs every stream, ``websocket`` the sessions, ``errors``
the refusals and the body-size limit, ``encoding`` the streamed response formats. Needs the ``serve`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

import mamba_audio
from mamba_audio.serve.app import create_app
from mamba_audio.serve.errors import APIError
from mamba_audio.serve.server import ServeConfig, ServedModel, serve_models
from mamba_audio.serve.engine import Engine

__all__ = ["APIError", "Engine", "ServeConfig", "ServedModel", "create_app", "load_models", "make_server",
           "serve_models"]

log = logging.getLogger("mamba_audio.serve")


def _model_id(path: Path) -> str:
    """A checkpoint's default id: its folder name, or its parent's for ``.../NAME/checkpoint``."""
    path = path.resolve()
    return path.parent.name if path.name == "checkpoint" else path.name


def load_models(specs: list[str], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``[ID=]DIR`` checkpoint specs (any kind ``load_pretrained`` knows) by id."""
    models: dict[str, Any] = {}
    for spec in specs:
        model_id, sep, directory = spec.partition("=")
        if not sep:
            model_id, directory = _model_id(Path(spec)), spec
        if not model_id or model_id in models:
            raise ValueError(f"model id {model_id!r} of {spec!r} is empty or given twice; "
                             f"name each checkpoint as ID=DIR")
        models[model_id] = mamba_audio.load_pretrained(directory, device=device)
    return models


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """A uvicorn server for ``app`` whose shutdown (SIGINT/SIGTERM, or ``handle_exit``) first stops
    taking streams and gives open ones ``shutdown_grace_s`` to finish, then ends them cleanly (their
    audio responses close normally), then exits. ``.run()`` serves until then."""
    import uvicorn

    state = app.state.server
    grace = state.config.shutdown_grace_s

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if not state.engine.draining:
                log.info("shutting down: open streams get %.1f s to finish", grace)
            state.engine.drain(grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace + 5)
    return GracefulServer(config)
