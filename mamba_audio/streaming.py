"""Streaming synthesis: many audio streams generated together by one batched step loop.

    generator = StreamingGenerator(model, max_streams=64)
    stream = generator.start(label="seven", seed=1, chunk_samples=320)      # or prompt=wav, prompt_tokens=...
    for chunk in stream:                                                    # AudioChunk(audio, tokens, start)
        play(chunk.audio)                                                   # 320 samples (20 ms at 16 kHz)
        if done: stream.stop()                                              # frees its slot

The generator owns a batch of ``max_streams`` slots: the model's streaming state,
the token each slot feeds next, its class label, and its sampling settings and
random-number counter (``models.sampling.StreamSampler``). It advances every
slot together, ``block_samples`` samples at a time; streams start and stop
between blocks, in free slots, without touching the others' rows. Iterating a
stream advances the generator whenever that stream has no full chunk waiting;
the other streams' samples wait in their own buffers.

Joining mid-flight. Every stage of the SaShiMi model steps at its own rate, so
all slots must be at the same phase of the pooling (modulo the total pooling T).
Blocks are whole multiples of T, so a new stream of prompt length P prefills the
first k = P - P mod T of its inputs in parallel, then feeds the last P mod T
prompt tokens during its first steps ("forced" steps, whose outputs it drops)
before it samples. ``SaShiMiLM.generate`` splits a prompt the same way, so a stream's
tokens equal generate's with the same seed, in float32 and in bfloat16 alike.

The per-sample work (model step, sampling, forced tokens) is ``_step_once``.
On the CPU it runs eagerly; on CUDA one period of T samples is captured once in
a CUDA graph and replayed, so a block costs block_samples / T graph launches and
one copy of its tokens to the host, and no host synchronisation per sample.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections import deque
from dataclasses import dataclass

import torch

from mamba_audio.models.lm import SaShiMiLM
from mamba_audio.models.sampling import StreamSampler, check_sampling
from mamba_audio.models.sashimi import StageState, state_positions, state_tensors

Tensor = torch.Tensor

DEFAULT_CHUNK_SECONDS = 0.02


@contextlib.contextmanager
def collection_held_off():
    """Within: no automatic cyclic garbage collection.

    A CUDA-graph capture needs it. A dead generator still holds its graph until a collection frees it (its streams
    and it refer to each other); a collection that runs inside another generator's capture destroys that graph
    there, which CUDA does not permit while a stream is capturing, and the capture fails
    (cudaErrorStreamCaptureInvalidated, at whatever launch comes next). Collection is process-wide, so this holds
    it off for every thread for as long as the capture takes (one period's launches). Nothing is collected on
    entry: a full collection costs tens of milliseconds with torch loaded, and what is dead waits for the next
    automatic one, after the capture."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class AudioChunk:
    """A piece of one stream: ``audio`` (n,) float32 in [-1, 1] and its ``tokens`` (n,) long, on the CPU;
    ``start`` is the index of its first sample among the stream's generated samples."""

    audio: Tensor
    tokens: Tensor
    start: int


class Stream:
    """One stream of a ``StepLoop``: iterate it for ``AudioChunk``s, ``stop()`` it to free its slot.

    This base handles waveform-token streams (one token per sample); a subclass that produces other rows
    per step (codec frames, say) overrides ``_receive``, ``finished`` and ``_make_chunk``.
    """

    _ids = itertools.count()

    def __init__(self, generator: "StepLoop", slot: int, chunk_samples: int, max_samples: int | None = None,
                 skip: int = 0):
        self.id = next(Stream._ids)
        self.generator = generator
        self.slot: int | None = slot
        self.chunk_samples = chunk_samples
        self.max_samples = max_samples
        self.produced = 0  # generated samples received so far (after the forced prompt steps)
        self.delivered = 0  # samples handed out in chunks
        self._skip = skip  # outputs of forced prompt steps still to drop
        self._pending: deque[Tensor] = deque()
        self._pending_samples = 0

    @property
    def active(self) -> bool:
        """Whether the stream still holds a slot (it is still generating)."""
        return self.slot is not None

    @property
    def finished(self) -> bool:
        """Whether the stream has produced all it will (its slot is then freed by the loop)."""
        return self.max_samples is not None and self.produced >= self.max_samples

    def _receive(self, tokens: Tensor) -> None:
        """Take this stream's row of a block (CPU tokens), dropping forced steps and anything past max_samples."""
        drop = min(self._skip, tokens.shape[0])
        self._skip -= drop
        tokens = tokens[drop:]
        if self.max_samples is not None:
            tokens = tokens[: self.max_samples - self.produced]
        self._push(tokens)

    def _push(self, piece: Tensor) -> None:
        """Queue ``piece`` (n,) of what ``_make_chunk`` turns into audio (here tokens, one per sample)."""
        if piece.numel():
            self._pending.append(piece)
            self._pending_samples += piece.shape[0]
            self.produced += piece.shape[0]

    def _make_chunk(self, piece: Tensor) -> AudioChunk:
        return AudioChunk(self.generator.model.tokenizer.decode(piece), piece, self.delivered)

    def ready(self) -> bool:
        """Whether a chunk can be taken without advancing the generator."""
        return self._pending_samples >= self.chunk_samples or (not self.active and self._pending_samples > 0)

    def _take_chunk(self) -> AudioChunk:
        want = min(self.chunk_samples, self._pending_samples)
        pieces, have = [], 0
        while have < want:
            piece = self._pending.popleft()
            if have + piece.shape[0] > want:
                self._pending.appendleft(piece[want - have:])
                piece = piece[: want - have]
            pieces.append(piece)
            have += piece.shape[0]
        self._pending_samples -= want
        chunk = self._make_chunk(torch.cat(pieces))
        self.delivered += want
        return chunk

    def __iter__(self):
        return self

    def __next__(self) -> AudioChunk:
        while not self.ready():
            if not self.active:
                raise StopIteration
            self.generator.advance()
        return self._take_chunk()

    def stop(self) -> None:
        """Stop generating now: free the slot and drop what has not been taken."""
        self.generator.stop(self)

    def __repr__(self) -> str:
        return f"Stream(id={self.id}, slot={self.slot}, produced={self.produced}, delivered={self.delivered})"


class StepLoop:
    """What every batched streaming loop shares: slots, streams joining and leaving, blocks of periods.

    A subclass owns the model-specific buffers (the model's state in ``state``, what each slot feeds
    next, sampling) and defines ``_step_once(column, uniforms)``, one step of every slot that writes
    its per-slot output row into ``period_outputs[:, column]`` (shape (max_streams, period, ...)),
    ``_period_uniforms()``, the random numbers of a period, and ``_buffers()``, every tensor a period
    reads or writes. ``advance`` runs ``block_steps / period`` periods (replaying a CUDA graph of one
    period when ``cuda_graph``), copies the block to the host once and hands each stream its row;
    a stream whose ``finished`` is then true gives its slot back.
    """

    def __init__(self, max_streams: int, period: int, block_steps: int, device: torch.device, cuda_graph: bool | None):
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if block_steps < 1 or block_steps % period:
            raise ValueError(f"block_samples must be a positive multiple of the total pooling {period}, "
                             f"got {block_steps}")
        self.max_streams = max_streams
        self.period = period
        self.block_steps = block_steps
        self.device = device
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph needs the model on a CUDA device")
        self.streams: list[Stream | None] = [None] * max_streams  # the stream holding each slot
        self._undrained: list[Stream] = []  # streams that may still have chunks to hand out, in start order
        self.steps_taken = 0
        self._graph = None
        self.state: StageState
        self.period_outputs: Tensor

    # -- streams ----------------------------------------------------------------------------------
    @property
    def active_streams(self) -> list[Stream]:
        return [s for s in self.streams if s is not None]

    def _free_slot(self) -> int:
        try:
            return self.streams.index(None)
        except ValueError:
            raise RuntimeError(f"all {self.max_streams} slots are busy; stop a stream first") from None

    def _load_slot(self, slot: int, fresh: StageState) -> None:
        """Copy a model state prefilled for a new stream into ``slot`` of the shared state: its row r goes to
        row slot + r * max_streams (one row, or more where a loop keeps several per stream, as a guided
        SpeechLoop keeps each stream's text-free copy in the second half)."""
        for slot_tensor, stream_tensor in zip(state_tensors(self.state), state_tensors(fresh)):
            for row in range(stream_tensor.shape[0]):
                slot_tensor[slot + row * self.max_streams].copy_(stream_tensor[row])

    def _attach(self, stream: Stream) -> Stream:
        self.streams[stream.slot] = stream
        self._undrained.append(stream)
        return stream

    def stop(self, stream: Stream) -> None:
        """Free ``stream``'s slot now and drop its undelivered samples. Stopping twice is harmless."""
        if stream.generator is not self:
            raise ValueError("this stream belongs to another generator")
        if stream.slot is not None:
            self.streams[stream.slot] = None
            stream.slot = None
        stream._pending.clear()
        stream._pending_samples = 0

    # -- the step loop ----------------------------------------------------------------------------
    def _step_once(self, column: int, uniforms: Tensor) -> None:
        raise NotImplementedError

    def _period_uniforms(self) -> Tensor:
        raise NotImplementedError

    def _buffers(self) -> list[Tensor]:
        raise NotImplementedError

    def _run_period(self) -> None:
        uniforms = self._period_uniforms()
        for column in range(self.period):
            self._step_once(column, uniforms[:, column])

    @contextlib.contextmanager
    def _buffers_restored(self):
        """Run periods that must leave no trace (warm-up, capture): every buffer and position is put back."""
        saved = [t.clone() for t in self._buffers()]
        positions = state_positions(self.state)
        try:
            yield
        finally:
            for tensor, copy in zip(self._buffers(), saved):
                tensor.copy_(copy)
            _set_positions(self.state, positions)

    def _capture(self) -> None:
        """Record one period of ``_step_once`` calls in a CUDA graph, which ``advance`` then replays.

        The state's tensors are updated in place, so the graph reads and writes them where they
        live; the pooling branches taken depend only on the phase, which is the same at every
        period boundary, so one recorded period serves every period.
        """
        with self._buffers_restored():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # compiles the Triton kernels and initialises cuBLAS before capture
                    self._run_period()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with collection_held_off(), torch.cuda.graph(graph):
                self._run_period()
        self._graph = graph

    @torch.no_grad()
    def advance(self) -> None:
        """Step every slot ``block_steps`` steps and hand each active stream its row."""
        outputs = self.period_outputs
        block = torch.empty(self.max_streams, self.block_steps, *outputs.shape[2:], dtype=outputs.dtype,
                            device=self.device)
        if self.cuda_graph and self._graph is None:
            self._capture()
        for p in range(self.block_steps // self.period):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._run_period()
            block[:, p * self.period:(p + 1) * self.period].copy_(outputs)
        self.steps_taken += self.block_steps
        block = block.cpu()  # the one host synchronisation of a block
        for stream in self.active_streams:
            stream._receive(block[stream.slot])
            if stream.finished:
                self.streams[stream.slot] = None
                stream.slot = None

    def chunks(self):
        """Chunks of every stream as they come, in start order: yields (stream, AudioChunk) until every
        stream has finished and handed out everything (streams started meanwhile included)."""
        while True:
            for stream in list(self._undrained):
                while stream.ready():
                    yield stream, stream._take_chunk()
                if not stream.active:
                    self._undrained.remove(stream)
            if not self.active_streams:
                return
            self.advance()


class StreamingGenerator(StepLoop):
    """One batched step loop for up to ``max_streams`` concurrent streams of a ``SaShiMiLM``.

    Args:
        model: a causal ``SaShiMiLM`` (put on its device and dtype beforehand).
        max_streams: slots; every slot is stepped whether a stream holds it or not.
        block_samples: samples per slot per ``advance``, a positive multiple of the model's total
            pooling; streams join and leave between blocks. Default: the multiple nearest 20 ms.
        cuda_graph: capture the per-sample step in a CUDA graph (default: when the model is on CUDA).
    """

    def __init__(self, model: SaShiMiLM, max_streams: int = 8, block_samples: int | None = None,
                 cuda_graph: bool | None = None):
        if not isinstance(model, SaShiMiLM):
            raise TypeError(f"streaming needs a SaShiMiLM (a causal generator), got {type(model).__name__}")
        if model.config.backbone.bidirectional:
            raise ValueError("a bidirectional model cannot stream: it needs the whole sequence")
        self.model = model.eval()
        period = model.config.backbone.total_pool
        if block_samples is None:
            target = round(DEFAULT_CHUNK_SECONDS * model.config.sample_rate)
            block_samples = period * max(1, round(target / period))
        super().__init__(max_streams, period, block_samples, model.head.weight.device, cuda_graph)
        self.block_samples = block_samples

        batch, long = max_streams, dict(dtype=torch.long, device=self.device)
        self.tokens = torch.full((batch,), model.tokenizer.silence_token, **long)  # each slot's latest token
        labels = torch.zeros(batch, **long) if model.class_embedding is not None else None
        with torch.no_grad():
            self.state: StageState = model.allocate_inference_cache(batch, self.device)
            self.inputs = model.embed(self.tokens, labels)  # each slot's next input: its token embedded, class added
            self.class_rows = model.class_rows(labels)  # the class's part of it (None: unconditional)
        self.sampler = StreamSampler(batch, self.device)
        self.forced = torch.zeros(batch, self.period, **long)  # prompt tokens a slot feeds before sampling
        self.forced_count = torch.zeros(batch, **long)
        self.forced_index = torch.zeros(batch, **long)
        self.period_outputs = torch.zeros(batch, self.period, **long)  # what each slot fed, per step of a period

    @property
    def samples_stepped(self) -> int:
        return self.steps_taken

    # -- streams ----------------------------------------------------------------------------------
    def _label_index(self, label) -> int | None:
        config = self.model.config
        if self.model.class_embedding is None:
            if label is not None:
                raise ValueError("this model is unconditional; it takes no class label")
            return None
        if label is None:
            raise ValueError(f"this model is class-conditional ({config.num_classes} classes): pass a label"
                             + (f", one of {config.class_names}" if config.class_names else ""))
        if isinstance(label, str):
            if label not in config.class_names:
                raise ValueError(f"unknown class {label!r}; this model knows {config.class_names}")
            return config.class_names.index(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < config.num_classes:
            raise ValueError(f"label must be a class name or an index in [0, {config.num_classes}), got {label!r}")
        return label

    def _prompt_tokens(self, prompt: Tensor | None, prompt_tokens: Tensor | None) -> Tensor:
        tokenizer = self.model.tokenizer
        if prompt is not None and prompt_tokens is not None:
            raise ValueError("give prompt (audio) or prompt_tokens, not both")
        if prompt is not None:
            prompt = torch.as_tensor(prompt)
            if prompt.dim() != 1 or not prompt.is_floating_point():
                raise ValueError(f"prompt must be mono audio, a 1-D float tensor, got {prompt.dtype} "
                                 f"{tuple(prompt.shape)}")
            if not torch.isfinite(prompt).all():
                raise ValueError("prompt audio contains NaN or infinite samples")
            return tokenizer.encode(prompt.cpu()) if prompt.numel() else torch.zeros(0, dtype=torch.long)
        if prompt_tokens is not None:
            prompt_tokens = torch.as_tensor(prompt_tokens)
            if prompt_tokens.dim() != 1 or prompt_tokens.dtype != torch.long:
                raise ValueError(f"prompt_tokens must be a 1-D long tensor, got {prompt_tokens.dtype} "
                                 f"{tuple(prompt_tokens.shape)}")
            if prompt_tokens.numel() and (prompt_tokens.min() < 0 or prompt_tokens.max() >= tokenizer.vocab_size):
                raise ValueError(f"prompt_tokens must be in [0, {tokenizer.vocab_size})")
            return prompt_tokens.cpu()
        return torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def start(self, *, prompt: Tensor | None = None, prompt_tokens: Tensor | None = None, label=None,
              chunk_samples: int | None = None, max_samples: int | None = None, temperature: float = 1.0,
              top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Stream:
        """Start a stream in a free slot; it joins the loop at the next block.

        Args:
            prompt: audio (L,) float in [-1, 1] to continue (tokenized here), or ``prompt_tokens`` (L,) long.
            label: class name or index, for a class-conditional model (required there, refused elsewhere).
            chunk_samples: samples per chunk when iterating the stream (default: 20 ms).
            max_samples: stop after this many generated samples (default: run until stopped).
            temperature, top_k, top_p: sampling; temperature 0 is greedy.
            seed: the stream's random numbers come from this alone (default: drawn from torch's generator).
        """
        if chunk_samples is None:
            chunk_samples = max(1, round(DEFAULT_CHUNK_SECONDS * self.model.config.sample_rate))
        if chunk_samples <= 0:
            raise ValueError(f"chunk_samples must be > 0, got {chunk_samples}")
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"max_samples must be > 0, got {max_samples}")
        check_sampling(temperature, top_k, top_p)
        label_index = self._label_index(label)
        tokens = self._prompt_tokens(prompt, prompt_tokens)
        slot = self._free_slot()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())

        # inputs are the silence token then the prompt; the first k are prefilled, k a multiple of the
        # pooling period (the loop's phase between blocks), the rest fed as forced steps
        inputs = torch.cat([torch.tensor([self.model.tokenizer.silence_token]), tokens]).to(self.device)
        k = self.model.prefill_length(tokens.shape[0])
        labels = None if label_index is None else torch.tensor([label_index], device=self.device)
        fresh = self.model.allocate_inference_cache(1, self.device)
        if k:
            self.model.prefill(inputs[None, :k], fresh, labels)
        self._load_slot(slot, fresh)
        forced = inputs[k + 1:]
        self.tokens[slot] = inputs[k]
        self.inputs[slot] = self.model.embed(inputs[k:k + 1], labels)[0]
        if self.class_rows is not None:
            self.class_rows[slot] = self.model.class_rows(labels)[0]
        self.forced[slot, : forced.shape[0]] = forced
        self.forced_count[slot] = forced.shape[0]
        self.forced_index[slot] = 0
        self.sampler.set_row(slot, seed, temperature, top_k, top_p)
        return self._attach(Stream(self, slot, chunk_samples, max_samples, skip=forced.shape[0]))

    # -- the step loop ----------------------------------------------------------------------------
    def _step_once(self, column: int, uniforms: Tensor) -> None:
        """One sample for every slot, all on the device: model step, sampling or the next forced token, and the
        next inputs."""
        self.model.step_and_sample(self.inputs, self.state, self.sampler, uniforms, self.forced, self.forced_index,
                                   self.forced_count, self.tokens, self.class_rows, self.period_outputs[:, column])

    def _period_uniforms(self) -> Tensor:
        return self.sampler.uniforms_ahead(self.period, skipped=self.forced_count - self.forced_index)

    def _buffers(self) -> list[Tensor]:
        """Every tensor a period reads and writes, besides the model's parameters."""
        return [*state_tensors(self.state), self.tokens, self.inputs, self.forced_index, self.sampler.counters,
                self.period_outputs]


def _set_positions(state: StageState, positions: list[int]) -> None:
    state.position = positions[0]
    if state.inner is not None:
        _set_positions(state.inner, positions[1:])


@torch.no_grad()
def generate_batch(model: SaShiMiLM, num_samples: int, batch_size: int = 1, *, prompt: Tensor | None = None,
                   labels: Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, seed: int = 0, progress: bool = False) -> Tensor:
    """``SaShiMiLM.generate`` through the streaming step loop: the same tokens (row i from seed
    ``seed + i``), but on CUDA every pooling period is a replayed CUDA graph instead of eager steps.

    Args:
        prompt: (batch_size, P) tokens every row continues (as ``generate``'s prompt), or None.
        labels: (batch_size,) class indices of a class-conditional model, or None.

    Returns:
        (batch_size, num_samples) long, on the CPU: the generated tokens after the prompt.
    """
    from tqdm.auto import tqdm

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    if prompt is not None and (prompt.dim() != 2 or prompt.shape[0] != batch_size):
        raise ValueError(f"prompt must be (batch_size={batch_size}, length), got shape {tuple(prompt.shape)}")
    generator = StreamingGenerator(model, max_streams=batch_size)
    streams = [generator.start(prompt_tokens=None if prompt is None else prompt[i].cpu().long(),
                               label=None if labels is None else int(labels[i]), max_samples=num_samples,
                               chunk_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed + i)
               for i in range(batch_size)]
    with tqdm(total=num_samples, desc="generating", unit="sample", disable=not progress) as bar:
        while any(stream.active for stream in streams):
            before = generator.samples_stepped
            generator.advance()
            bar.update(min(generator.samples_stepped, num_samples) - min(before, num_samples))
    return torch.stack([torch.cat([chunk.tokens for chunk in stream]) for stream in streams])
