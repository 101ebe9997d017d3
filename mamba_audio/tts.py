"""Text-to-speech, streaming: text in, audio chunks out, many requests in one batched step loop.

    tts = TextToSpeech.from_pretrained()                  # the default voice shipped in the package
    stream = tts.start("The red fox ran home.", voice=None, speed=1.0, seed=0)
    for chunk in stream:                                  # AudioChunk: .audio (n,) float32 at tts.sample_rate
        play(chunk.audio)                                 # stream.stop() frees its slot early
    audio = tts.synthesize("Please open the door.")       # the whole utterance, (L,) float32

A :class:`SpeechLoop` is a :class:`mamba_audio.streaming.StepLoop` over a :class:`TTSModel`: a new
request's text is prefilled by the parallel scan into a fresh one-row state, copied into a free slot,
and the slot then steps with the others, one codec step (one token per codebook, delay pattern) per
model step, sampling with per-stream seeds; the stop head ends it. Each :class:`SpeechStream` turns its
steps back into codec frames and decodes them a few at a time, with ``DECODE_CONTEXT_FRAMES`` frames
of left context (and the audio already played for them, which a Griffin-Lim codec continues) and
``DECODE_LOOKAHEAD_FRAMES`` of right context so the codec's convolutions see across chunk boundaries;
after each block the loop decodes the windows of all its streams that have the same shape in one codec
call. ``speed`` plays the codec frames faster or slower (each output frame is the source
frame at ``floor(j * speed)``), so the pitch stays. A model with the text guide (``TTSConfig.text_guide``)
instead plans ``TTSModel.planned_frames(n, speed)`` frames for the n symbols (speed scales the guide's
planned length: the model itself speaks faster or slower) and its frames are played as they are; a
model with ``guide_durations`` plans each symbol's frames with its duration predictor (divided by
speed). The loop keeps each slot's symbols, n, planned length and symbol end frames on the device and
computes the guide ids of every step from the slot's step counter (tensor ops only, so a period can be
a CUDA graph). With classifier-free guidance (``cfg_scale`` != 1, ``TTSConfig``) the model state has
twice the slots' rows: slot s's copy without its text is row s + max_streams, stepped beside it.

A checkpoint directory holds ``tts/`` (the :class:`TTSModel`) and ``codec/`` (the codec it was trained
on; absent for the mu-law codec).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from mamba_audio.codecs import AudioCodec, MuLawCodec
from mamba_audio.models.pretrained import CheckpointError, load_pretrained
from mamba_audio.models.tts import TTSModel, check_cfg_scale
from mamba_audio.streaming import AudioChunk, Stream, StepLoop
from mamba_audio.text import PAD_ID, TextError

Tensor = torch.Tensor

DEFAULT_CHECKPOINT = Path(__file__).parent / "pretrained" / "tts_default"
MODEL_DIR, CODEC_DIR = "tts", "codec"
DECODE_CONTEXT_FRAMES = 8
DECODE_LOOKAHEAD_FRAMES = 4
SPEED_RANGE = (0.5, 2.0)
DEFAULT_BLOCK_STEPS = 4  # codec steps per block: 80 ms at 50 frames/s
_NOT_ENDED = 2**40
# status column of a step's output row: the step is before the last useful one, is it, or is past it
_RUNNING, _LAST, _PAST = 0, 1, 2


class SpeechStream(Stream):
    """One utterance of a :class:`SpeechLoop`: iterate it for ``AudioChunk``s (``tokens`` empty), ``stop()`` it."""

    def __init__(self, loop: "SpeechLoop", slot: int, chunk_samples: int, speed: float):
        super().__init__(loop, slot, chunk_samples)
        self.speed = speed
        self._steps: list[Tensor] = []  # rows (P,) of the delay-pattern sequence received so far
        self._ended = False
        self._frames = torch.zeros(loop.model.config.num_codebooks, 0, dtype=torch.long)  # complete frames (K, F)
        self._decoded = 0  # output frames (after the speed mapping) already turned into audio
        self._played = torch.zeros(1, 0)  # the audio of the last DECODE_CONTEXT_FRAMES decoded frames

    @property
    def finished(self) -> bool:
        return self._ended

    def _receive(self, rows: Tensor) -> None:
        """rows (n, P + 1): the step tokens and the status column; decode whatever frames became final."""
        if self._ended:
            return
        status = rows[:, -1]
        useful = rows[status <= _LAST, :-1]
        self._steps.extend(useful)
        self._ended = bool((status >= _LAST).any())
        pattern = self.generator.model.pattern
        if len(self._steps) > pattern.max_delay:
            self._frames = pattern.deinterleave(torch.stack(self._steps)[None])[0]
        # decoding waits for the loop: it decodes every stream's ready frames together (SpeechLoop.advance)

    def _source_frame(self, out_frame: int) -> int:
        return int(out_frame * self.speed)

    def _decode_request(self) -> tuple[Tensor, Tensor, int] | None:
        """What to decode next: (codec frames (K, W), the audio played for its first context frames (1, n),
        the output frame it ends at), for the output frames whose source frames (and lookahead) are known (all
        of them once ended); None when there are none."""
        available = self._frames.shape[1]
        if available == 0:
            return None
        total = max(1, int(available / self.speed)) if self._ended else None
        stop = self._decoded
        while (total is not None and stop < total) or (
                total is None and self._source_frame(stop) + DECODE_LOOKAHEAD_FRAMES < available):
            stop += 1
        if stop == self._decoded:
            return None
        first = max(0, self._decoded - DECODE_CONTEXT_FRAMES)
        sources = [min(self._source_frame(j), available - 1) for j in range(first, stop + DECODE_LOOKAHEAD_FRAMES)]
        played = self._played[:, self._played.shape[1] - (self._decoded - first) * self.generator.codec.hop_length:]
        return self._frames[:, sources], played, stop

    def _accept_decoded(self, audio: Tensor, stop: int) -> None:
        """Play ``audio`` (W * hop,), the decode of ``_decode_request``'s frames ending at output frame ``stop``."""
        hop = self.generator.codec.hop_length
        first = max(0, self._decoded - DECODE_CONTEXT_FRAMES)
        piece = audio[(self._decoded - first) * hop:(stop - first) * hop].clamp(-1.0, 1.0)
        self._push(piece)
        self._played = torch.cat([self._played, piece[None]], 1)
        self._played = self._played[:, max(0, self._played.shape[1] - DECODE_CONTEXT_FRAMES * hop):]
        self._decoded = stop

    def _make_chunk(self, piece: Tensor) -> AudioChunk:
        return AudioChunk(piece, torch.zeros(0, dtype=torch.long), self.delivered)


class SpeechLoop(StepLoop):
    """The batched step loop of a :class:`TTSModel` and its codec (see the module docstring).

    Args:
        model: the TTS model, on its device (eval mode is set here).
        codec: the codec its tokens come from.
        max_streams: slots.
        block_steps: codec steps per slot per ``advance`` (a multiple of the total pooling); default the
            multiple nearest 4 steps.
        cuda_graph: capture a period in a CUDA graph (default: on CUDA).
        temperature, top_p, cfg_scale: sampling and classifier-free guidance on the text (default: the
            model's config, the setting the voice was measured with).
    """

    def __init__(self, model: TTSModel, codec: AudioCodec, max_streams: int = 8, block_steps: int | None = None,
                 cuda_graph: bool | None = None, temperature: float | None = None, top_p: float | None = None,
                 cfg_scale: float | None = None):
        config = model.config
        if (codec.num_codebooks, codec.codebook_size, codec.sample_rate) != (
                config.num_codebooks, config.codebook_size, config.sample_rate):
            raise CheckpointError(f"codec {codec} does not fit the TTS model ({config.num_codebooks} codebooks of "
                                  f"{config.codebook_size} codes at {config.sample_rate} Hz)")
        period = config.backbone.total_pool
        if block_steps is None:
            block_steps = period * max(1, round(DEFAULT_BLOCK_STEPS / period))
        self.model = model.eval()
        self.codec = codec
        self.codec_device = codec.device
        super().__init__(max_streams, period, block_steps, model.head.weight.device, cuda_graph)
        self.temperature = config.temperature if temperature is None else temperature
        self.top_p = config.top_p if top_p is None else top_p
        self.cfg_scale = check_cfg_scale(config.cfg_scale if cfg_scale is None else cfg_scale)
        self._rows_per_stream = 1 if self.cfg_scale == 1 else 2  # with guidance: the stream, then without text
        self._lock = threading.RLock()
        P, long = model.pattern.streams, dict(dtype=torch.long, device=self.device)
        self.delays = torch.tensor(model.pattern.delays, **long)
        with torch.no_grad():
            self.state = model.allocate_inference_cache(max_streams * self._rows_per_stream, self.device)
        self.inputs = torch.full((max_streams, P), model.empty_token, **long)  # what each slot feeds next
        self.voice = torch.zeros(max_streams, **long)
        self.step = torch.zeros(max_streams, **long)  # the codec step each slot outputs next
        self.end_frame = torch.full((max_streams,), _NOT_ENDED, **long)
        self.max_frame = torch.full((max_streams,), 1, **long)
        from mamba_audio.models.sampling import StreamSampler

        self.sampler = StreamSampler(max_streams * P, self.device)
        self.period_outputs = torch.zeros(max_streams, period, P + 1, **long)
        # the text guide: each slot's symbols (left-padded like pad_text), their count n and planned frames F
        self.guided = model.config.text_guide
        width = model.pad_text([torch.zeros(model.config.max_text_chars, dtype=torch.long)]).shape[1]
        self.guide_text = torch.full((max_streams, width if self.guided else period), PAD_ID, **long)
        self.guide_ends = torch.zeros_like(self.guide_text)  # each column's end frame (guide_durations)
        self.guide_symbols = torch.zeros(max_streams, **long)
        self.guide_planned = torch.ones(max_streams, **long)

    # -- streams ----------------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, text_ids: Tensor, voice: int, speed: float, seed: int, chunk_samples: int) -> SpeechStream:
        """A stream for symbol ids (T,) in voice index ``voice``; joins at the next block."""
        model = self.model
        text = model.pad_text([text_ids]).to(self.device)
        voice_tensor = torch.tensor([voice], device=self.device)
        with self._lock:
            slot = self._free_slot()
            fresh = model.allocate_inference_cache(self._rows_per_stream, self.device)
            model.prefill_text(text, voice_tensor, fresh, cfg=self._rows_per_stream == 2)
            self._load_slot(slot, fresh)
            self.inputs[slot] = model.empty_token
            self.voice[slot] = voice
            self.step[slot] = 0
            self.end_frame[slot] = _NOT_ENDED
            self.max_frame[slot] = model.max_frames(text_ids.shape[0])
            if self.guided:
                durations = model.plan_durations(text, speed)[0, -text_ids.shape[0]:] \
                    if model.config.guide_durations else None
                planned = int(durations.sum()) if durations is not None else model.planned_frames(text_ids.shape[0], speed)
                self._set_guide(slot, text_ids, planned, durations)
                speed = 1.0  # the model speaks at the planned pace: the frames play as they are
            P = model.pattern.streams
            for p in range(P):
                self.sampler.set_row(slot * P + p, seed * P + p, self.temperature, None, self.top_p)
            return self._attach(SpeechStream(self, slot, chunk_samples, speed))

    def stop(self, stream: Stream) -> None:
        with self._lock:
            slot = stream.slot
            super().stop(stream)
            if slot is not None:
                self._clear_guide([slot])

    def advance(self) -> None:
        with self._lock:
            busy = [s for s, stream in enumerate(self.streams) if stream is not None]
            receivers = [self.streams[s] for s in busy]
            super().advance()
            self._clear_guide([s for s in busy if self.streams[s] is None])  # the streams that finished
            self._decode(receivers)

    def _decode(self, streams: list[SpeechStream]) -> None:
        """Decode the frames each of ``streams`` has ready, those of one shape (the steady state: every
        window as long, with as much played context) in one codec call: one Griffin-Lim for all."""
        groups: dict[tuple, list] = {}
        for stream in streams:
            request = stream._decode_request()
            if request is not None:
                frames, played, _ = request
                groups.setdefault((frames.shape[1], played.shape[1]), []).append((stream, request))
        for members in groups.values():
            windows = torch.stack([window for _, (window, _, _) in members]).to(self.codec_device)
            context = torch.cat([played for _, (_, played, _) in members]).to(self.codec_device)
            audio = self.codec.decode(windows, context).float().cpu()
            for row, (stream, (_, _, stop)) in zip(audio, members):
                stream._accept_decoded(row, stop)

    def _set_guide(self, slot: int, text_ids: Tensor, planned: int, durations: Tensor | None = None) -> None:
        """Give ``slot`` the guide of symbols ``text_ids`` (T,) spread over ``planned`` frames (by their
        ``durations`` (T,) frames where the model places its pointer by them)."""
        length = text_ids.shape[0]
        if length > self.guide_text.shape[1]:  # longer than max_text_chars symbols: widen (a new graph)
            width = self.model.pad_text([text_ids]).shape[1]
            for name in ("guide_text", "guide_ends"):
                narrow = getattr(self, name)
                wider = torch.zeros(self.max_streams, width, dtype=torch.long, device=self.device)  # PAD_ID is 0
                wider[:, width - narrow.shape[1]:] = narrow
                setattr(self, name, wider)
            self._graph = None
        self.guide_text[slot] = PAD_ID
        self.guide_ends[slot] = 0
        if length:
            self.guide_text[slot, -length:] = text_ids.to(self.device)
            if durations is not None:
                self.guide_ends[slot, -length:] = durations.to(self.device).cumsum(0)
        self.guide_symbols[slot] = length
        self.guide_planned[slot] = planned

    def _clear_guide(self, slots: list[int]) -> None:
        if self.guided and slots:
            index = torch.tensor(slots, device=self.device)
            self.guide_text.index_fill_(0, index, PAD_ID)
            self.guide_ends.index_fill_(0, index, 0)
            self.guide_symbols.index_fill_(0, index, 0)
            self.guide_planned.index_fill_(0, index, 1)

    # -- the step loop ----------------------------------------------------------------------------
    def _step_once(self, column: int, uniforms: Tensor) -> None:
        """One codec step of every slot: model step, stop decision, sampling of the slots that hold a token."""
        model, batch = self.model, self.max_streams
        first = self.step - self.delays[0]  # codebook 0's frame at this step
        guide = None
        if self.guided:
            ends = self.guide_ends if model.config.guide_durations else None
            symbols, progress = model.guide_ids(self.guide_text, self.guide_planned, first[:, None], self.guide_symbols,
                                                ends)
            guide = (symbols[:, 0], progress[:, 0])
        logits, stop_logit = model.step_audio(self.inputs, self.voice, self.state, guide, self.cfg_scale)
        stopping = ((stop_logit.sigmoid() > model.config.stop_threshold) & (first >= 1)) | (first >= self.max_frame)
        self.end_frame.copy_(torch.where((self.end_frame == _NOT_ENDED) & stopping, first, self.end_frame))
        frames = self.step[:, None] - self.delays[None, :]
        holds = (frames >= 0) & (frames < self.end_frame[:, None])
        sampled = self.sampler.sample(logits.reshape(batch * logits.shape[1], -1), advance=holds.flatten(),
                                      uniforms=uniforms).view_as(frames)
        self.inputs.copy_(torch.where(holds, sampled, torch.full_like(sampled, model.empty_token)))
        last = self.end_frame - 1 + model.pattern.max_delay
        status = torch.where(self.step < last, _RUNNING, torch.where(self.step == last, _LAST, _PAST))
        self.period_outputs[:, column, :-1].copy_(self.inputs)
        self.period_outputs[:, column, -1].copy_(status)
        self.step.add_(1)

    def _period_uniforms(self) -> Tensor:
        # a slot's codebook p holds no token for its first delays[p] steps: those draws do not count
        skipped = (self.delays[None, :] - self.step[:, None]).clamp_min(0).flatten()
        return self.sampler.uniforms_ahead(self.period, skipped=skipped)

    def _buffers(self) -> list[Tensor]:
        from mamba_audio.models.sashimi import state_tensors

        return [*state_tensors(self.state), self.inputs, self.step, self.end_frame, self.sampler.counters,
                self.period_outputs, self.guide_text, self.guide_ends, self.guide_symbols, self.guide_planned]


class TextToSpeech:
    """The public TTS API: a trained :class:`TTSModel`, its codec and one shared :class:`SpeechLoop`.

    Args:
        model, codec: see :class:`SpeechLoop`.
        max_streams: requests generated at once; a further ``start`` raises RuntimeError until one ends.
    """

    def __init__(self, model: TTSModel, codec: AudioCodec, max_streams: int = 16, **loop_options):
        self.model = model
        self.codec = codec
        self.loop = SpeechLoop(model, codec, max_streams=max_streams, **loop_options)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device | None = None,
                        max_streams: int = 16, **loop_options) -> "TextToSpeech":
        """Load ``path`` (``tts/`` and ``codec/``; None: the default voice shipped in the package) onto
        ``device`` (None: CUDA when available, else the CPU). CheckpointError when the weights are missing."""
        import mamba_audio.codecs  # noqa: F401  (registers the codec model types for load_pretrained)

        root = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not (root / MODEL_DIR / "model.safetensors").is_file():
            if path is None:
                raise CheckpointError(f"the default TTS voice has no trained weights in {root} (expected "
                                      f"{MODEL_DIR}/ and {CODEC_DIR}/ checkpoints); train one with recipes/tts "
                                      "or pass the path of a trained checkpoint")
            raise CheckpointError(f"{root} is not a TTS checkpoint: no {MODEL_DIR}/model.safetensors")
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        model = TTSModel.from_pretrained(root / MODEL_DIR, device=device)
        if (root / CODEC_DIR).is_dir():
            codec = load_pretrained(root / CODEC_DIR, device=device)
        elif model.config.codec == "mulaw":
            codec = MuLawCodec(bits=(model.config.codebook_size - 1).bit_length(), sample_rate=model.config.sample_rate)
        else:
            raise CheckpointError(f"{root} has no {CODEC_DIR}/ checkpoint for the codec {model.config.codec!r}")
        return cls(model, codec, max_streams=max_streams, **loop_options)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``tts/`` and (for a codec with weights) ``codec/`` into ``directory``; ``dtype``
        (e.g. torch.float16: half the size, for shipping) stores their floating-point weights in that type,
        ``from_pretrained`` loads them back as float32."""
        directory = Path(directory)
        self.model.save_pretrained(directory / MODEL_DIR, dtype=dtype)
        if hasattr(self.codec, "save_pretrained"):
            self.codec.save_pretrained(directory / CODEC_DIR, dtype=dtype)
        return directory

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def voices(self) -> list[str]:
        return list(self.model.config.voices)

    @property
    def max_text_chars(self) -> int:
        return self.model.config.max_text_chars

    def start(self, text: str, voice: str | None = None, speed: float = 1.0, seed: int | None = None,
              chunk_samples: int | None = None, *, symbols: bool = False) -> SpeechStream:
        """Start speaking ``text``; returns a stream of ``AudioChunk``s (``stream.stop()`` ends it early).

        With ``symbols``, ``text`` is already the front end's symbol string (for a "phonemes" model the
        IPA, e.g. a sentence corpus's phonemes.csv column), so no espeak-ng is needed.

        Raises:
            ValueError: empty, too long or unsupported text (or symbols outside the model's inventory);
                an unknown voice; speed outside ``SPEED_RANGE``; chunk_samples <= 0. RuntimeError when
                every slot is busy.
        """
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise ValueError(f"speed must be a number in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], got {speed!r}")
        voice_index = self.model.voice_index(voice)
        if symbols:
            if not isinstance(text, str) or len(text) > self.max_text_chars:
                raise TextError(f"symbols must be a string of at most {self.max_text_chars} symbols")
            ids = self.model.text.encode_symbols(text)
        else:
            ids = self.model.text.encode(text, max_chars=self.max_text_chars)
        if chunk_samples is None:
            chunk_samples = self.loop.block_steps * self.codec.hop_length
        if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) or chunk_samples <= 0:
            raise ValueError(f"chunk_samples must be a positive integer, got {chunk_samples!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        return self.loop.start(ids, voice_index, float(speed), seed, chunk_samples)

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0, seed: int | None = None, *,
                   symbols: bool = False) -> Tensor:
        """The whole utterance: Tensor (L,) float32 at ``sample_rate``. Arguments and errors as ``start``."""
        chunks = [chunk.audio for chunk in self.start(text, voice=voice, speed=speed, seed=seed, symbols=symbols)]
        return torch.cat(chunks) if chunks else torch.zeros(0)


__all__ = ["SpeechLoop", "SpeechStream", "TextError", "TextToSpeech"]
