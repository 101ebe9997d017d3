"""The one thread that owns every stream the server generates.

The library's streaming objects (``StreamingGenerator`` and the text-to-speech streams) are
not thread-safe, and every stream of one model must share its batched step loop. So a single
engine thread creates, advances and stops all of them; the asyncio side only sends it
commands and reads per-request queues:

    job = await engine.open(lambda: generator.start(label="seven", max_samples=8000), queue)
    while True:
        job_id, kind, payload = await queue.get()    # ("chunk", AudioChunk) ... ("end", reason)

Between two rounds the thread takes commands (open, close), so streams join and leave the
batched loops between chunks. A round asks every open stream for its next chunk; the first
stream of a model to ask advances that model's loop for everyone, the others find their
chunk already waiting. A closed stream (client gone, timeout, shutdown) is stopped at the
start of the next round, freeing its slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue as queue_module
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger("mamba_audio.serve")


class StreamLimitError(RuntimeError):
    """Every stream slot of the server is taken (HTTP 429)."""


class ShuttingDownError(RuntimeError):
    """The server is draining for shutdown and takes no new streams (HTTP 503)."""


@dataclass(eq=False)
class Job:
    """One open stream: the library stream, where its chunks go, and its limits."""

    id: int
    stream: Any  # iterable of AudioChunk with .stop()
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() past which the stream is ended ("timeout")
    iterator: Any = field(default=None, repr=False)
    max_samples: int | None = None  # end after this many samples ("length")
    samples: int = 0
    ended: bool = False
    end_reason: str = field(default="", repr=False)


class Engine:
    """Owns the thread that runs every stream; see the module docstring.

    Args:
        max_streams: open streams at most, over all models; ``open`` beyond it raises StreamLimitError.
        request_timeout_s: wall-clock limit of one stream, from open to its last chunk.
    """

    def __init__(self, max_streams: int = 8, request_timeout_s: float = 300.0):
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_streams = max_streams
        self.request_timeout_s = request_timeout_s
        self._commands: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._reserved = 0  # open jobs plus opens on their way to the thread
        self._ids = itertools.count(1)
        self._draining_until: float | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self.rounds = 0

    # -- the asyncio side -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    @property
    def draining(self) -> bool:
        return self._draining_until is not None

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._reserved

    def start(self) -> None:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._run, name="mamba-audio-engine", daemon=True)
            self._thread.start()

    async def open(self, factory: Callable[[], Any], queue: asyncio.Queue, *,
                   max_samples: int | None = None) -> Job:
        """Run ``factory()`` on the engine thread to start a library stream; its chunks go to ``queue``
        as ``(job.id, kind, payload)``. Raises what the factory raised (ValueError for bad
        parameters), StreamLimitError when every slot is taken, ShuttingDownError while draining."""
        with self._lock:
            if self.draining or not self._running:
                raise ShuttingDownError("the server is shutting down and takes no new streams")
            if self._reserved >= self.max_streams:
                raise StreamLimitError(f"all {self.max_streams} streams are busy; retry later")
            self._reserved += 1
        loop = asyncio.get_running_loop()
        job = Job(next(self._ids), None, queue, loop, time.monotonic() + self.request_timeout_s,
                  max_samples=max_samples)
        opened = loop.create_future()
        self._commands.put(("open", job, factory, opened))
        try:
            await opened
        except BaseException:
            # the thread releases the reservation of a failed open; a cancelled wait closes the job
            if not opened.done() or opened.cancelled() or opened.exception() is None:
                self.close(job)
            raise
        return job

    def close(self, job: Job) -> None:
        """Stop ``job``'s stream at the start of the next round (thread-safe, idempotent)."""
        self._commands.put(("close", job, None, None))

    def drain(self, grace_s: float) -> None:
        """Take no new streams; end those still open after ``grace_s`` seconds (reason "shutdown")."""
        with self._lock:
            if self._draining_until is None:
                self._draining_until = time.monotonic() + grace_s
        self._commands.put(("wake", None, None, None))

    def stop(self, timeout: float = 10.0) -> None:
        """End every stream now (reason "shutdown") and join the thread."""
        self.drain(0.0)
        self._commands.put(("quit", None, None, None))
        if self._thread is not None:
            self._thread.join(timeout)
        self._running = False

    # -- the engine thread ------------------------------------------------------------------------
    def _post(self, job: Job, kind: str, payload) -> None:
        try:
            job.loop.call_soon_threadsafe(job.queue.put_nowait, (job.id, kind, payload))
        except RuntimeError:  # the request's event loop is gone: nobody is listening
            self._finish(job, "gone", post=False)

    def _finish(self, job: Job, reason: str, post: bool = True) -> None:
        if job.ended:
            return
        job.ended = True
        job.end_reason = reason
        if job.stream is not None:
            try:
                job.stream.stop()
            except Exception:  # stopping must never take the loop down
                log.exception("stopping stream %s failed", job.id)
        self._jobs.pop(job.id, None)
        with self._lock:
            self._reserved -= 1
        if post:
            self._post(job, "end", reason)

    def _command(self, command) -> bool:
        """Apply one command; False to quit."""
        kind, job, factory, opened = command
        if kind == "quit":
            return False
        if kind == "open":
            if opened.cancelled() or job.loop.is_closed():
                job.ended = True
                with self._lock:
                    self._reserved -= 1
                return True
            try:
                job.stream = factory()
                job.iterator = iter(job.stream)
            except Exception as err:  # bad parameters: the request answers 4xx
                job.ended = True
                with self._lock:
                    self._reserved -= 1
                job.loop.call_soon_threadsafe(_settle, opened, err)
                return True
            self._jobs[job.id] = job
            job.loop.call_soon_threadsafe(_settle, opened, None)
        elif kind == "close" and job.id in self._jobs:
            self._finish(job, "closed", post=False)
        return True

    def _round(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.ended:
                continue
            if self._draining_until is not None and now >= self._draining_until:
                self._finish(job, "shutdown")
                continue
            if now >= job.deadline:
                self._finish(job, "timeout")
                continue
            try:
                chunk = next(job.iterator)
            except StopIteration:
                self._finish(job, "finished")
                continue
            except Exception as err:
                log.exception("stream %s failed", job.id)
                self._post(job, "error", err)
                self._finish(job, "error", post=False)
                continue
            if job.max_samples is not None and job.samples + chunk.audio.shape[0] >= job.max_samples:
                chunk.audio = chunk.audio[: job.max_samples - job.samples]
                job.samples += chunk.audio.shape[0]
                self._post(job, "chunk", chunk)
                self._finish(job, "length")
                continue
            job.samples += chunk.audio.shape[0]
            self._post(job, "chunk", chunk)
        self.rounds += 1

    def _run(self) -> None:
        with torch.no_grad():
            while True:
                try:
                    # idle: sleep until a command comes; busy: take what is there and run a round
                    command = self._commands.get(timeout=0.5) if not self._jobs else self._commands.get_nowait()
                except queue_module.Empty:
                    command = None
                if command is not None:
                    if not self._command(command):
                        break
                    while True:  # take every command waiting before the next round
                        try:
                            command = self._commands.get_nowait()
                        except queue_module.Empty:
                            break
                        if not self._command(command):
                            self._end_all()
                            return
                if self._jobs:
                    self._round()
            self._end_all()

    def _end_all(self) -> None:
        for job in list(self._jobs.values()):
            self._finish(job, "shutdown")


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
