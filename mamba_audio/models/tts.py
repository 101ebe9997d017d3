"""Text-to-speech on the SaShiMi backbone: a text prefix, then codec tokens, in one causal sequence.

    [pad .. pad, text symbols] [codec steps of the delay pattern ...]
     `--- T positions, a whole number of pooling periods ---'

The text prefix (symbol embeddings, left-padded to a multiple of the total pooling so that the
audio always starts at the same pooling phase) is consumed by the parallel scan (``prefill_text``);
the codec tokens follow as in :class:`CodecLM` (its interleave pattern, summed codebook embeddings
and per-codebook heads, which this class inherits), generated step by step. A voice embedding is
added at every position. A stop head predicts, at each step, whether codebook 0's frame at that
step lies past the end of the speech, which ends generation.

Only the delay and parallel patterns are allowed: with them a slot's codebook does not depend on
the step, so streams at different steps can share one batched step.

The optional monotonic alignment guide (``text_guide``, off by default) adds two embeddings to the
input of every audio step s, whose codebook-0 frame is f (codebook 0 has delay 0 in both patterns,
so f = s), given the row's n text symbols and its planned length of F frames:

* ``guide_embedding`` of the symbol at the pointer p = min(n - 1, floor(f * n / F)): the text read
  out at a constant rate; with ``guide_window`` W > 0, of the 2W + 1 symbols at p - W .. p + W, each
  offset with its own table (summed), so the model can find the symbol actually being spoken when
  speech runs ahead of or behind the constant rate (silences, long and short phones, stress marks
  that take no time). Positions outside the text read a learned "outside" entry of their offset;
* ``guide_progress`` of the progress bin floor(f * bins / F) for f < F, and of the extra id ``bins``
  ("past the end") for f >= F, so the model knows where it is and when to stop. At f >= F the
  pointer stays clamped to the last symbol (and f < 0 would clamp to 0, but cannot happen here).

F is the clip's length in training, and ``planned_frames(n, speed)`` = max(1, round(n *
guide_frames_per_symbol / speed)) in generation, so speed changes the planned length rather than
resampling the frames.

With ``guide_durations`` (the "flite" front end, whose symbols are timed segments) the pointer is
exact instead of constant-rate: symbol i covers the frames [e_(i-1), e_i) of its cumulative end
frames e, so p = the number of symbols that end at or before f (clamped to n - 1), and F = e_(n-1).
Training reads each symbol's frames from the corpus's alignment (``durations``); generation plans them
with the model's own :class:`DurationPredictor` (log(1 + frames) of each symbol from its neighbours,
trained beside the rest by squared error, as in FastSpeech), divided by ``speed``.

:meth:`TTSModel.guide_ids` is the one place these ids are computed (training, prefill and the
streaming loop). Without the guide the model has no guide tables, and checkpoints from before the
guide load and behave as they did.

Classifier-free guidance on the text (as in MusicGen and Voicebox): trained with ``cfg_text_dropout``, a
row's text is hidden with that probability (its prefix all padding, every guide symbol the pad id; the
guide's timing, the progress ids and the symbol count, stays, so "without text" means without the phones'
identities, not without their pace). Generation with ``cfg_scale`` s != 1 steps each stream twice, with and
without its text, and samples from the logits l_u + s * (l_c - l_u): s = 1 is the plain model, s > 1 leans
harder on the text. The stop head reads the row with the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.text import FRONT_ENDS, PAD_ID, TextTokenizer

from .codec_lm import CodecLM, CodecLMConfig
from .sampling import check_sampling

Tensor = torch.Tensor


@dataclass
class TTSConfig(CodecLMConfig):
    """A TTS model: CodecLMConfig's codec-token layout plus the text front end and the voices.

    ``text_symbols`` is the symbol table (see :class:`mamba_audio.text.TextTokenizer`), ``voices`` the
    names of the voices the model was trained on (one embedding each). Generation stops when the stop
    head's probability passes ``stop_threshold``, or after ``max_seconds_per_symbol`` seconds per text
    symbol (and ``max_seconds`` in all).

    ``text_guide`` turns on the monotonic alignment guide (see the module docstring):
    ``guide_frames_per_symbol`` is the average number of codec frames per text symbol (the training
    code fills it in from the training data when it is None; generation needs it),
    ``guide_progress_bins`` the resolution of the progress embedding, ``guide_window`` the symbols read
    on each side of the pointer (0: the pointer's symbol alone), ``guide_durations`` places the pointer
    by each symbol's duration (module docstring; needs ``text_guide``).

    ``temperature`` and ``top_p`` are the sampling the voice speaks with unless the caller says otherwise
    (:class:`mamba_audio.tts.SpeechLoop`): a voice carries the setting it was measured with.

    ``input_token_noise``: in training, each teacher-forced input token (not the targets) is replaced by a
    uniformly drawn code with this probability, so the model sees inputs with errors like its own samples
    and leans on its text rather than on the audio so far (Tacotron's pre-net dropout plays this part).

    ``cfg_text_dropout``: in training, the probability that a row's text is hidden (classifier-free guidance,
    module docstring); ``cfg_scale`` the guidance the voice speaks with (1: none, the only sensible value for
    a model trained without text dropout, whose text-free rows it has never seen).
    """

    pattern: str = "delay"
    text_front_end: str = "phonemes"
    text_symbols: str = ""
    espeak_voice: str = "en-us"
    voices: list[str] = field(default_factory=lambda: ["default"])
    max_text_chars: int = 300
    stop_threshold: float = 0.5
    max_seconds_per_symbol: float = 0.3
    max_seconds: float = 30.0
    text_guide: bool = False
    guide_frames_per_symbol: float | None = None
    guide_progress_bins: int = 32
    guide_window: int = 0
    guide_durations: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    input_token_noise: float = 0.0
    cfg_text_dropout: float = 0.0
    cfg_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.input_token_noise < 1:
            raise ValueError(f"input_token_noise must be in [0, 1), got {self.input_token_noise}")
        if not 0 <= self.cfg_text_dropout < 1:
            raise ValueError(f"cfg_text_dropout must be in [0, 1), got {self.cfg_text_dropout}")
        check_cfg_scale(self.cfg_scale)
        if self.pattern == "flatten":
            raise ValueError("a TTS model needs the delay or parallel pattern (flatten ties a slot's codebook to "
                             "its step, which streams at different steps cannot share)")
        if self.text_front_end not in FRONT_ENDS:
            raise ValueError(f"text_front_end must be one of {FRONT_ENDS}, got {self.text_front_end!r}")
        if not self.voices or len(set(self.voices)) != len(self.voices):
            raise ValueError(f"voices must be a non-empty list of distinct names, got {self.voices}")
        if not 0 < self.stop_threshold < 1:
            raise ValueError(f"stop_threshold must be in (0, 1), got {self.stop_threshold}")
        if self.guide_progress_bins < 1:
            raise ValueError(f"guide_progress_bins must be >= 1, got {self.guide_progress_bins}")
        if isinstance(self.guide_window, bool) or not isinstance(self.guide_window, int) or self.guide_window < 0:
            raise ValueError(f"guide_window must be an integer >= 0, got {self.guide_window!r}")
        if self.guide_frames_per_symbol is not None and not self.guide_frames_per_symbol > 0:
            raise ValueError(f"guide_frames_per_symbol must be positive, got {self.guide_frames_per_symbol}")
        check_sampling(self.temperature, None, self.top_p)
        if self.guide_durations and not self.text_guide:
            raise ValueError("guide_durations places the text guide's pointer: it needs text_guide: true")


def check_cfg_scale(scale) -> float:
    """``scale`` as a float; ValueError unless it is a finite number >= 0 (0: the text-free model alone)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {scale!r}")
    return float(scale)


class DurationPredictor(nn.Module):
    """Each text symbol's log(1 + frames) from its neighbourhood: an embedding of its own, two convolutions
    (kernel 5) with ReLU and layer norm, a linear read-out; padding is zeroed after every layer, so a
    row's prediction does not depend on how much padding its batch gave it."""

    def __init__(self, vocab_size: int, dim: int, kernel_size: int = 5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.out = nn.Linear(dim, 1)

    def forward(self, text: Tensor) -> Tensor:
        """text (B, T) ids -> (B, T) float32 log(1 + frames), 0 at padding."""
        keep = (text != PAD_ID)[..., None]
        x = self.embedding(text)
        for conv, norm in zip(self.convs, self.norms):
            x = norm(F.relu(conv(x.transpose(1, 2)).transpose(1, 2))) * keep
        return (self.out(x) * keep)[..., 0].float()


class TTSModel(CodecLM):
    """p(codec tokens, end | text, voice). Losses: codec-token NLL (bits per token) and the stop BCE."""

    model_type = "tts"
    config_class = TTSConfig

    def __init__(self, config: TTSConfig):
        super().__init__(config)
        dim = config.backbone.d_model
        self.text = TextTokenizer(config.text_front_end, config.text_symbols, config.espeak_voice)
        self.text_embedding = nn.Embedding(self.text.vocab_size, dim, padding_idx=PAD_ID)
        self.voice_embedding = nn.Embedding(len(config.voices), dim)
        self.stop_head = nn.Linear(dim, 1)
        if config.text_guide:
            # one table of vocab_size rows per offset -W .. W, stacked; with W = 0 (one table) the pad row is
            # zero as in the text embedding, with W > 0 each offset's pad row is its learned "outside" entry
            width = 2 * config.guide_window + 1
            self.guide_embedding = nn.Embedding(self.text.vocab_size * width, dim,
                                                padding_idx=PAD_ID if width == 1 else None)
            # the window's offsets -W .. W (not saved: derived from the config)
            self.register_buffer("guide_offsets", torch.arange(-config.guide_window, config.guide_window + 1),
                                 persistent=False)
            self.guide_progress = nn.Embedding(config.guide_progress_bins + 1, dim)  # the last id: past the end
        if config.guide_durations:
            self.duration_predictor = DurationPredictor(self.text.vocab_size, dim)

    # -- inputs -----------------------------------------------------------------------------------
    def voice_index(self, voice: str | None) -> int:
        """The index of voice ``voice`` (None: the first); ValueError naming the known voices."""
        if voice is None:
            return 0
        if voice not in self.config.voices:
            raise ValueError(f"unknown voice {voice!r}; this model knows {self.config.voices}")
        return self.config.voices.index(voice)

    def pad_text(self, texts: list[Tensor]) -> Tensor:
        """Symbol ids [(T_i,)] -> (B, T) left-padded with PAD_ID, T the longest rounded up to whole pooling periods."""
        period = self.config.backbone.total_pool
        length = max(1, max(t.shape[0] for t in texts))
        length = -(-length // period) * period
        out = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(texts):
            out[row, length - ids.shape[0]:] = ids
        return out

    def _check_text(self, text: Tensor, voice: Tensor) -> None:
        period = self.config.backbone.total_pool
        if text.dim() != 2 or text.shape[1] % period or text.shape[1] == 0:
            raise ValueError(f"text must be (batch, T) ids with T a positive multiple of the pooling {period} "
                             f"(see pad_text), got shape {tuple(text.shape)}")
        if text.min() < 0 or text.max() >= self.text.vocab_size:
            raise ValueError(f"text ids must be in [0, {self.text.vocab_size}), got [{int(text.min())}, "
                             f"{int(text.max())}]; was the text encoded by this model's tokenizer?")
        if voice.shape != (text.shape[0],) or voice.min() < 0 or voice.max() >= len(self.config.voices):
            raise ValueError(f"voice must be ({text.shape[0]},) indices in [0, {len(self.config.voices)}), "
                             f"got {voice.tolist()}")

    def _outputs(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden (B, S, H) of audio steps -> logits (B, S, P, C), stop logits (B, S)."""
        return self._logits(hidden, 0), self.stop_head(self.norm(hidden))[..., 0].float()

    # -- the alignment guide ----------------------------------------------------------------------
    def guide_ids(self, text: Tensor, planned_frames: Tensor, frame: Tensor,
                  num_symbols: Tensor | None = None, ends: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The guide's ids: text (B, T) left-padded symbol ids (as ``pad_text`` makes them), planned_frames F
        (B,), frame (B, S) or (1, S) codebook 0's frame at each step, num_symbols n (B,) (default: the
        non-pad symbols of ``text``), and for ``guide_durations`` ends (B, T): each column's cumulative end
        frame (``durations.cumsum(1)``, so 0 on the left padding) -> (symbol ids (B, S, 2W + 1), progress ids (B, S)).

        The symbols are those at pointer + k for k = -W .. W, pointer = min(n - 1, floor(f * n / F))
        (f clamped to >= 0), or with ``ends`` the number of symbols ending at or before f (clamped to
        n - 1); the pad id where pointer + k falls outside the text; the progress id is floor(f * bins / F)
        while f < F, then ``bins`` (past the end). Tensor ops only, no host sync.
        """
        batch, length = text.shape
        n = ((text != PAD_ID).sum(1) if num_symbols is None else num_symbols)[:, None]
        planned = planned_frames[:, None].clamp_min(1)
        f = frame.clamp_min(0)
        if ends is None:
            pointer = torch.minimum(f * n // planned, n - 1).clamp_min(0)
        else:  # every pad column ends at 0 <= f, so the count of ended columns minus the padding is the pointer
            ended = (ends[:, None, :] <= f[..., None]).sum(-1) - (length - n)
            pointer = torch.minimum(ended, n - 1).clamp_min(0)
        position = pointer[..., None] + self.guide_offsets.to(text.device)  # (B, S, K)
        inside = (position >= 0) & (position < n[..., None])
        column = (length - n[..., None] + position).clamp(0, length - 1)  # n = 0 (no text) reads the last pad
        column = column.expand(batch, -1, -1)
        symbols = text.gather(1, column.reshape(batch, -1)).view_as(column)
        symbols = torch.where(inside, symbols, torch.full_like(symbols, PAD_ID))
        bins = self.config.guide_progress_bins
        progress = torch.where(f < planned, f * bins // planned, torch.full_like(f, bins))
        return symbols, progress.expand(batch, -1)

    def planned_frames(self, num_symbols: int, speed: float = 1.0) -> int:
        """The guide's planned length in generation: max(1, round(n * guide_frames_per_symbol / speed))."""
        rate = self.config.guide_frames_per_symbol
        if rate is None:
            raise ValueError("this guided model has no guide_frames_per_symbol (the training code sets it "
                             "from the training data); set it in its config")
        return max(1, round(num_symbols * rate / speed))

    def plan_durations(self, text: Tensor, speed: float = 1.0) -> Tensor:
        """Each symbol's frames in generation (``guide_durations``): text (B, T) left-padded ids -> (B, T)
        long, round((exp(predicted) - 1) / speed), 0 on the padding, at least one frame in every row."""
        if not self.config.guide_durations:
            raise ValueError("this model has no duration predictor (guide_durations is off)")
        frames = (torch.expm1(self.duration_predictor(text)).clamp_min(0) / speed).round().long()
        frames = frames * (text != PAD_ID)
        frames[:, -1] += (frames.sum(1) == 0).long()  # a row that would last no frame lasts one
        return frames

    def _guide(self, guide: tuple[Tensor, Tensor] | None, shape: tuple[int, ...],
               drop_text: Tensor | None = None) -> Tensor | None:
        """The guide embedding of ``guide`` = (symbol ids, progress ids) of ``shape``; None for an unguided model.
        Rows where ``drop_text`` (B,) is True read the pad id for every symbol (their progress stays)."""
        if not self.config.text_guide:
            if guide is not None:
                raise ValueError("this model has no text guide (text_guide is off); pass no guide ids")
            return None
        if guide is None:
            raise ValueError("this model reads a text guide: pass its (symbol ids, progress ids) (see guide_ids)")
        symbols, progress = guide
        width = self.guide_offsets.shape[0]
        if symbols.shape != (*shape, width) or progress.shape != shape:
            raise ValueError(f"guide ids must be of shapes {(*shape, width)} (symbols) and {shape} (progress), "
                             f"got {tuple(symbols.shape)} and {tuple(progress.shape)}")
        if drop_text is not None:
            hidden = drop_text.to(symbols.device).view(-1, *[1] * (symbols.dim() - 1))
            symbols = torch.where(hidden, torch.full_like(symbols, PAD_ID), symbols)
        rows = (self.guide_offsets + self.config.guide_window) * self.text.vocab_size  # each offset's own rows
        return self.guide_embedding(symbols + rows).sum(-2) + self.guide_progress(progress)

    # -- training ---------------------------------------------------------------------------------
    def _check_durations(self, durations: Tensor | None, text: Tensor) -> Tensor:
        if durations is None:
            raise ValueError("this model's guide follows each symbol's duration (guide_durations): pass "
                             "durations (B, T) in frames, aligned with the padded text")
        if durations.shape != text.shape or (durations < 0).any() or ((durations > 0) & (text == PAD_ID)).any():
            raise ValueError(f"durations must be (B, T) = {tuple(text.shape)} non-negative frames, 0 on the text's "
                             f"padding, got shape {tuple(durations.shape)}")
        return durations.to(text.device)

    def forward(self, text: Tensor, voice: Tensor, inputs: Tensor, planned_frames: Tensor | None = None,
                durations: Tensor | None = None, drop_text: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """text (B, T) ids, voice (B,), audio inputs (B, S, P) (``shift`` of a sequence) ->
        (logits (B, S, P, C), stop logits (B, S)). A guided model needs ``planned_frames`` (B,), the
        frames the guide spreads the text over (in training the clips' lengths), or with ``guide_durations``
        ``durations`` (B, T), each symbol's frames (their sum is the planned length); others ignore both.
        ``drop_text`` (B,) bool: rows that read no text (classifier-free guidance, module docstring)."""
        self._check_text(text, voice)
        drop_text = self._check_drop(drop_text, text)
        self._check_inputs(inputs)
        audio = self._embed(inputs, 0)
        if self.config.text_guide:
            ends = None
            if self.config.guide_durations:
                ends = self._check_durations(durations, text).cumsum(1)
                planned_frames = ends[:, -1]
            if planned_frames is None:
                raise ValueError("this model reads a text guide: forward needs planned_frames (B,)")
            steps = torch.arange(inputs.shape[1], device=inputs.device)
            frame = self.pattern.frame_at(steps)[None, :, 0]  # codebook 0's frame at every step: (1, S)
            guide = self.guide_ids(text, planned_frames.to(inputs.device), frame, ends=ends)
            audio = audio + self._guide(guide, tuple(inputs.shape[:2]), drop_text)
        speaker = self.voice_embedding(voice)[:, None]
        x = torch.cat([self.text_embedding(self._hide_text(text, drop_text)), audio], dim=1) + speaker
        return self._outputs(self.backbone(x)[:, text.shape[1]:])

    def targets(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """tokens (B, K, F) (frames >= lengths (B,) are padding) -> (sequence (B, S, P), slot mask (B, S, P),
        stop targets (B, S), stop mask (B, S)), S = F + 1 + max delay: one frame past the longest, so every
        row's end is a step whose stop target is 1."""
        batch, _, frames = tokens.shape
        tokens = F.pad(tokens, (0, 1))  # room for the end of the longest row
        seq = self.interleave(tokens.clamp(0, self.config.codebook_size - 1))
        steps = torch.arange(seq.shape[1], device=tokens.device)
        frame = self.pattern.frame_at(steps)[None]  # (1, S, P)
        end = lengths.to(tokens.device)[:, None, None]
        valid = (frame >= 0) & (frame < end)
        seq = torch.where(valid, seq, torch.full_like(seq, self.empty_token))
        first = frame[..., 0]  # codebook 0's frame at every step
        stop_mask = (first >= 0) & (first <= end[..., 0])
        return seq, valid, (first == end[..., 0]).float(), stop_mask

    def losses(self, text: Tensor, voice: Tensor, tokens: Tensor, lengths: Tensor,
               planned_frames: Tensor | None = None, durations: Tensor | None = None) -> dict[str, Tensor]:
        """``nll_bits`` (codec tokens, bits per token) and ``stop_bce`` (nats per step) of a padded batch,
        and with ``guide_durations`` ``duration_mse`` (the duration predictor's squared error in log(1 +
        frames), per symbol). ``planned_frames`` (B,): the clips' whole lengths (default ``lengths``): a clip
        cropped for training passes its whole length, so the guide's pace is the clip's, and its cut is not a
        stop target. ``durations`` (B, T): each symbol's frames over the whole clip (``guide_durations``)."""
        if tokens.dim() != 3 or tokens.shape[1] != self.config.num_codebooks:
            raise ValueError(f"tokens must be (batch, {self.config.num_codebooks}, frames), got {tuple(tokens.shape)}")
        if self.config.guide_durations:
            durations = self._check_durations(durations, text)
            planned_frames = durations.sum(1)
        seq, valid, stop_target, stop_mask = self.targets(tokens, lengths)
        if planned_frames is not None:  # a clip cut short for training does not end at the cut: no stop there
            cut = planned_frames.to(lengths.device) > lengths
            stop_mask = stop_mask & ~(cut[:, None] & (stop_target > 0))
        inputs = self.noisy_inputs(self.shift(seq)) if self.training else self.shift(seq)
        drop_text = None
        if self.training and self.config.cfg_text_dropout > 0:
            drop_text = torch.rand(text.shape[0], device=text.device) < self.config.cfg_text_dropout
        logits, stop_logits = self(text, voice, inputs, lengths if planned_frames is None else planned_frames,
                                   durations, drop_text)
        nll = F.cross_entropy(logits[valid].float(), seq[valid])
        stop = F.binary_cross_entropy_with_logits(stop_logits[stop_mask], stop_target[stop_mask])
        out = {"nll_bits": nll / math.log(2), "stop_bce": stop}
        if self.config.guide_durations:
            real = text != PAD_ID
            predicted = self.duration_predictor(text)
            out["duration_mse"] = F.mse_loss(predicted[real], torch.log1p(durations[real].float()))
        return out

    def noisy_inputs(self, inputs: Tensor) -> Tensor:
        """inputs (B, S, P) with each code (not the empty token) replaced by a uniform draw with probability
        ``input_token_noise`` (torch's global generator); the inputs themselves when it is 0."""
        chance, codes = self.config.input_token_noise, self.config.codebook_size
        if chance == 0:
            return inputs
        hit = (torch.rand(inputs.shape, device=inputs.device) < chance) & (inputs < codes)
        return torch.where(hit, torch.randint_like(inputs, codes), inputs)

    # -- classifier-free guidance on the text ----------------------------------------------------
    @staticmethod
    def _check_drop(drop_text: Tensor | None, text: Tensor) -> Tensor | None:
        if drop_text is not None and (drop_text.shape != text.shape[:1] or drop_text.dtype != torch.bool):
            raise ValueError(f"drop_text must be a ({text.shape[0]},) bool tensor, got {drop_text.dtype} "
                             f"{tuple(drop_text.shape)}")
        return drop_text

    @staticmethod
    def _hide_text(text: Tensor, drop_text: Tensor | None) -> Tensor:
        """text with the rows where ``drop_text`` is True all padding (what the text-free rows read)."""
        return text if drop_text is None else text.masked_fill(drop_text[:, None].to(text.device), PAD_ID)

    @staticmethod
    def _cfg_rows(batch: int, device) -> Tensor:
        """drop_text of a doubled batch: B rows with their text, then the same B without."""
        return torch.arange(2 * batch, device=device) >= batch

    # -- streaming --------------------------------------------------------------------------------
    def prefill_text(self, text: Tensor, voice: Tensor, state, cfg: bool = False) -> None:
        """Consume text (B, T) (T whole pooling periods) into ``state`` by the parallel scan. With ``cfg``
        the state holds 2B rows, and rows B .. 2B - 1 get the same streams without their text (for
        ``step_audio(..., cfg_scale=s)``)."""
        self._check_text(text, voice)
        if cfg:
            rows = self._cfg_rows(text.shape[0], text.device)
            text, voice = self._hide_text(text.repeat(2, 1), rows), voice.repeat(2)
        self.backbone.prefill(self.text_embedding(text) + self.voice_embedding(voice)[:, None], state)

    def prefill_audio(self, inputs: Tensor, voice: Tensor, state,
                      guide: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Audio inputs (B, L, P) after the text, in parallel -> (logits (B, L, P, C), stop logits (B, L)).
        A guided model needs ``guide`` = (symbol ids (B, L, 2W + 1), progress ids (B, L)) from ``guide_ids``."""
        self._check_inputs(inputs)
        x = self._embed(inputs, 0) + self.voice_embedding(voice)[:, None]
        extra = self._guide(guide, tuple(inputs.shape[:2]))
        if extra is not None:
            x = x + extra
        return self._outputs(self.backbone.prefill(x, state))

    def step_audio(self, inputs: Tensor, voice: Tensor, state, guide: tuple[Tensor, Tensor] | None = None,
                   cfg_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """inputs (B, P) -> (logits (B, P, C), stop logits (B,)) of the next step; updates ``state`` in place.
        A guided model needs ``guide`` = (symbol ids (B, 2W + 1), progress ids (B,)) from ``guide_ids``.
        With ``cfg_scale`` s != 1 the state holds 2B rows (``prefill_text(..., cfg=True)``): both halves
        step on the same inputs, and the logits are l_u + s * (l_c - l_u), the stop logits the text rows'."""
        batch, drop_text = inputs.shape[0], None
        if cfg_scale != 1:
            drop_text = self._cfg_rows(batch, inputs.device)
            inputs, voice = inputs.repeat(2, 1), voice.repeat(2)
            guide = None if guide is None else (guide[0].repeat(2, 1), guide[1].repeat(2))
        x = self._embed(inputs[:, None], 0)[:, 0] + self.voice_embedding(voice)
        extra = self._guide(guide, (inputs.shape[0],), drop_text)
        if extra is not None:
            x = x + extra
        logits, stop = self._outputs(self.backbone.step(x, state)[:, None])
        logits, stop = logits[:, 0], stop[:, 0]
        if drop_text is None:
            return logits, stop
        with_text, without = logits[:batch].float(), logits[batch:].float()
        return without + cfg_scale * (with_text - without), stop[:batch]

    def max_frames(self, num_symbols: int) -> int:
        """The most frames generated for a text of ``num_symbols`` symbols."""
        seconds = min(self.config.max_seconds, max(1.0, self.config.max_seconds_per_symbol * num_symbols))
        return max(1, int(seconds * self.config.frame_rate))

