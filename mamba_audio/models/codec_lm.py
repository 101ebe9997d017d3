"""Autoregressive model over codec tokens (B, K codebooks, F frames) on the SaShiMi backbone.

tokens -> interleave pattern (delay or flatten) -> sequence (B, S steps, P slots) -> summed codebook
embeddings -> SaShiMi -> norm -> one head per codebook. The backbone pools over steps, so with the
delay pattern a pool factor p groups p frames; with flattening, a first pool factor of K groups one frame.

Every codebook has C = codebook_size codes plus one "empty" id C, which fills the slots a pattern leaves
without a token and starts the sequence; it is embedded but never predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.codecs.patterns import PATTERNS, build_pattern

from .blocks import make_norm
from .config import BackboneConfig
from .lm import SaShiMiLM
from .pretrained import PretrainedMixin
from .sampling import StreamSampler
from .sashimi import SaShiMi

Tensor = torch.Tensor


@dataclass
class CodecLMConfig:
    """A codec-token LM: K codebooks of C codes at ``frame_rate`` frames/s, laid out by ``pattern``.

    ``codec`` names the codec the tokens come from (e.g. "encodec_24khz@6kbps"), for the record only.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_codebooks: int = 8
    codebook_size: int = 1024
    pattern: str = "delay"
    frame_rate: float = 75.0
    sample_rate: int = 24000
    codec: str = ""

    def __post_init__(self):
        if self.backbone.bidirectional:
            raise ValueError("an autoregressive model needs a causal backbone (bidirectional: false)")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.num_codebooks < 1 or self.codebook_size < 2:
            raise ValueError(f"need num_codebooks >= 1 and codebook_size >= 2, got {self.num_codebooks}, "
                             f"{self.codebook_size}")


class CodecLM(PretrainedMixin, nn.Module):
    """p(frame tokens | earlier tokens) over codec tokens; ``nll_bits`` is in bits per token."""

    model_type = "codec_lm"
    config_class = CodecLMConfig
    prefill_length = SaShiMiLM.prefill_length  # prefill whole pooling periods of a prompt, step the rest

    def __init__(self, config: CodecLMConfig):
        super().__init__()
        self.config = config
        self.pattern = build_pattern(config.pattern, config.num_codebooks)
        K, C, dim = config.num_codebooks, config.codebook_size, config.backbone.d_model
        self.empty_token = C
        self.embedding = nn.Embedding(K * (C + 1), dim)  # codebook k's ids at rows k(C+1) .. k(C+1)+C
        self.backbone = SaShiMi(config.backbone)
        self.norm = make_norm(config.backbone.norm, dim)
        self.head = nn.Linear(dim, K * C)  # codebook k's head is rows kC .. kC+C-1

    # -- layout -----------------------------------------------------------------------------------
    def interleave(self, tokens: Tensor) -> Tensor:
        """tokens (B, K, F) in [0, C) -> sequence (B, S, P), empty slots holding ``empty_token``."""
        if tokens.min() < 0 or tokens.max() >= self.config.codebook_size:
            raise ValueError(f"token ids must be in [0, {self.config.codebook_size}), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")
        return self.pattern.interleave(tokens, self.empty_token)

    def slot_mask(self, num_frames: int, device=None) -> Tensor:
        """(S, P) bool: which slots of the sequence of ``num_frames`` frames hold a token (not empty)."""
        frames = self.pattern.frame_at(torch.arange(self.pattern.num_steps(num_frames), device=device))
        return (frames >= 0) & (frames < num_frames)

    def shift(self, seq: Tensor) -> Tensor:
        """Model inputs for targets ``seq`` (B, S, P): empty tokens, then seq[:, :-1]."""
        return torch.cat([torch.full_like(seq[:, :1], self.empty_token), seq[:, :-1]], dim=1)

    # -- model ------------------------------------------------------------------------------------
    def _embed(self, inputs: Tensor, start: int) -> Tensor:
        """inputs (B, S, P) at steps start..start+S-1 -> (B, S, H); the input at step s is slot s - 1's token."""
        steps = torch.arange(start - 1, start - 1 + inputs.shape[1], device=inputs.device)
        offset = self.pattern.codebook_at(steps) * (self.config.codebook_size + 1)
        return self.embedding(inputs + offset).sum(2)

    def _logits(self, hidden: Tensor, start: int) -> Tensor:
        """hidden (B, S, H) at steps start.. -> logits (B, S, P, C), each slot from its codebook's head."""
        batch, steps, _ = hidden.shape
        K, C = self.config.num_codebooks, self.config.codebook_size
        every = self.head(self.norm(hidden)).view(batch, steps, K, C)
        if self.pattern.streams == K:  # delay/parallel: slot p is codebook p
            return every
        codebook = self.pattern.codebook_at(torch.arange(start, start + steps, device=hidden.device))
        return every.gather(2, codebook[None, :, :, None].expand(batch, -1, -1, C))

    def _check_inputs(self, inputs: Tensor) -> None:
        if inputs.dim() != 3 or inputs.shape[2] != self.pattern.streams:
            raise ValueError(f"inputs must be (batch, steps, {self.pattern.streams}) token ids, "
                             f"got shape {tuple(inputs.shape)}")

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs (B, S, P) ids in [0, C] (``shift`` of a sequence) -> logits (B, S, P, C)."""
        self._check_inputs(inputs)
        return self._logits(self.backbone(self._embed(inputs, 0)), 0)

    def nll_bits(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood of ``tokens`` (B, K, F) in bits per token (over ``mask`` (B, K, F) if given)."""
        seq = self.interleave(tokens)
        logits = self(self.shift(seq))
        nll = F.cross_entropy(logits.flatten(0, 2).float(), seq.flatten().clamp_max(self.empty_token - 1),
                              reduction="none").view_as(seq)
        nll = self.pattern.deinterleave(nll)  # back to (B, K, F): drops the empty slots
        if mask is not None:
            nll = nll[mask]
        return nll.mean() / math.log(2)

    # -- streaming --------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None):
        """The backbone's state; its ``position`` is the number of steps taken."""
        return self.backbone.allocate_inference_cache(batch_size, device, dtype)

    def prefill(self, inputs: Tensor, state) -> Tensor:
        """inputs (B, L, P) -> logits (B, L, P, C) by the parallel scan, continuing from ``state`` (updated in place)."""
        self._check_inputs(inputs)
        start = state.position
        return self._logits(self.backbone.prefill(self._embed(inputs, start), state), start)

    def step(self, inputs: Tensor, state) -> Tensor:
        """inputs (B, P) -> logits (B, P, C) for the next step; updates ``state`` in place."""
        start = state.position
        hidden = self.backbone.step(self._embed(inputs[:, None], start)[:, 0], state)
        return self._logits(hidden[:, None], start)[:, 0]

    @torch.no_grad()
    def generate(
        self,
        num_frames: int,
        batch_size: int = 1,
        prompt: Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Sample ``num_frames`` new frames after an optional ``prompt`` (B, K, F_p); returns (B, K, num_frames).

        Steps through the interleaved sequence: slots of the prompt and empty slots are forced, the rest
        sampled with ``sampling.StreamSampler`` (slot p of row i from seed (seed + i) * P + p). The prompt's
        steps up to the first slot to sample are prefilled in whole pooling periods, the rest stepped.
        """
        K, P = self.config.num_codebooks, self.pattern.streams
        device = self.head.weight.device
        if prompt is None:
            prompt = torch.zeros(batch_size, K, 0, dtype=torch.long, device=device)
        if prompt.dim() != 3 or prompt.shape[1] != K:
            raise ValueError(f"prompt must be (batch, {K} codebooks, frames), got shape {tuple(prompt.shape)}")
        batch_size, prompt_frames = prompt.shape[0], prompt.shape[2]
        total = prompt_frames + num_frames
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        sampler = StreamSampler(batch_size * P, device)
        for row in range(batch_size * P):
            sampler.set_row(row, (seed + row // P) * P + row % P, temperature, top_k, top_p)

        known = prompt.new_zeros(batch_size, K, total)
        known[:, :, :prompt_frames] = prompt.to(device)
        seq = self.pattern.interleave(known, self.empty_token)  # (B, S, P)
        frames = self.pattern.frame_at(torch.arange(seq.shape[1], device=device))
        forced = (frames < prompt_frames) | (frames >= total)  # prompt slots and empty ramps: (S, P)
        first_free = int((~forced).any(1).float().argmax()) if (~forced).any() else seq.shape[1]
        state = self.allocate_inference_cache(batch_size, device)
        inputs = self.shift(seq)
        done = self.prefill_length(first_free)
        if done:
            self.prefill(inputs[:, :done], state)
        for s in range(done, seq.shape[1]):
            logits = self.step(inputs[:, s], state)
            if s < first_free:
                continue
            drawn = sampler.sample(logits.reshape(batch_size * P, -1), advance=(~forced[s]).repeat(batch_size))
            seq[:, s] = torch.where(forced[s], seq[:, s], drawn.view(batch_size, P))
            if s + 1 < seq.shape[1]:
                inputs[:, s + 1] = seq[:, s]
        return self.pattern.deinterleave(seq)[:, :, prompt_frames:]
