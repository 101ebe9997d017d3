"""Autoregressive model over audio tokens: embedding -> SaShiMi backbone -> norm -> head."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.tokenizers import build_tokenizer

from .blocks import make_norm
from .config import LMConfig
from .pretrained import PretrainedMixin
from .sampling import StreamSampler
from .sashimi import SaShiMi

Tensor = torch.Tensor


class SaShiMiLM(PretrainedMixin, nn.Module):
    """p(x_t | x_<t, class) over mu-law (or linear) samples.

    The input at position t is the token at t - 1 (a silence token at t = 0),
    so ``forward(shift(tokens))[:, t]`` predicts ``tokens[:, t]``.
    """

    model_type = "sashimi_lm"
    config_class = LMConfig

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tokenizer = build_tokenizer(config.tokenizer)
        dim, vocab = config.backbone.d_model, self.tokenizer.vocab_size
        self.embedding = nn.Embedding(vocab, dim)
        self.class_embedding = nn.Embedding(config.num_classes, dim) if config.num_classes > 0 else None
        self.backbone = SaShiMi(config.backbone)
        self.norm = make_norm(config.backbone.norm, dim)
        self.head = nn.Linear(dim, vocab)

    def _check_labels(self, labels: Tensor | None, batch: int) -> None:
        if self.class_embedding is None:
            if labels is not None:
                raise ValueError("this model is unconditional; it takes no class labels")
            return
        if labels is None:
            raise ValueError(f"this model is class-conditional ({self.config.num_classes} classes): pass labels")
        if labels.shape != (batch,) or labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must be (B,)=({batch},) in [0, {self.config.num_classes}), got {labels.tolist()}")

    def _embed(self, tokens: Tensor, labels: Tensor | None) -> Tensor:
        x = self.embedding(tokens)
        if self.class_embedding is not None:
            cls = self.class_embedding(labels)
            x = x + (cls[:, None] if x.dim() == 3 else cls)
        return x

    def shift(self, tokens: Tensor) -> Tensor:
        """Model inputs for targets ``tokens`` (B, L): the silence token, then tokens[:, :-1]."""
        start = torch.full_like(tokens[:, :1], self.tokenizer.silence_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(self, inputs: Tensor, labels: Tensor | None = None) -> Tensor:
        """inputs (B, L) token ids -> logits (B, L, V)."""
        self._check_labels(labels, inputs.shape[0])
        return self.head(self.norm(self.backbone(self._embed(inputs, labels))))

    def nll_bits(self, tokens: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood of ``tokens`` (B, L) in bits per sample (over ``mask`` if given)."""
        logits = self(self.shift(tokens), labels)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none").view_as(tokens)
        if mask is not None:
            nll = nll[mask]
        return nll.mean() / math.log(2)

    # -- streaming ------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None):
        return self.backbone.allocate_inference_cache(batch_size, device, dtype)

    def prefill_length(self, prompt_length: int) -> int:
        """How many of the P + 1 inputs of a P-token prompt generation prefills: the largest whole number of
        pooling periods <= P, so that the state is at the pooling phase every stream of a batch shares;
        the remaining inputs are stepped."""
        return prompt_length - prompt_length % self.config.backbone.total_pool

    def prefill(self, inputs: Tensor, state, labels: Tensor | None = None) -> Tensor:
        """inputs (B, L) token ids -> logits (B, L, V) by the parallel scan, continuing from ``state`` and
        updating it in place, so that stepping afterwards continues exactly as after L calls of ``step``."""
        if inputs.dim() != 2:
            raise ValueError(f"inputs must be (batch, length) tokens, got shape {tuple(inputs.shape)}")
        self._check_labels(labels, inputs.shape[0])
        return self.head(self.norm(self.backbone.prefill(self._embed(inputs, labels), state)))

    def step(self, token: Tensor, state, labels: Tensor | None = None) -> Tensor:
        """token (B,) -> logits (B, V) for the next token; updates ``state`` in place."""
        return self.head(self.norm(self.backbone.step(self._embed(token, labels), state)))

    def embed(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """The backbone's inputs for token ids (B,) or (B, L) (class-conditional: plus the label's embedding)."""
        self._check_labels(labels, tokens.shape[0])
        return self._embed(tokens, labels)

    def class_rows(self, labels: Tensor | None) -> Tensor | None:
        """What the class of each row adds to its inputs, (B, H) for labels (B,); None for an unconditional model."""
        return None if self.class_embedding is None else self.class_embedding(labels)

    def step_and_sample(self, inputs: Tensor, state, sampler: StreamSampler, uniforms: Tensor, forced: Tensor,
                        forced_index: Tensor, forced_count: Tensor, out: Tensor, class_rows: Tensor | None = None,
                        record: Tensor | None = None) -> Tensor:
        """One sample of a batch of streams from their embedded inputs (B, H), which become the next sample's.

        The backbone steps ``inputs``; the token is drawn from head(norm(.)) or replayed from ``forced``
        (``sampler.head_sample_or_replay``) into ``out`` (and ``record``); then ``inputs`` <- its embedding
        plus ``class_rows`` (``class_rows(labels)``). On CUDA the head, the sampling and the embedding are one
        launch after the block steps; the step loops and ``generate`` both come here, so they draw the same
        tokens. Returns the logits (B, V) float32."""
        hidden = self.backbone.step(inputs, state)
        return sampler.head_sample_or_replay(hidden, self.norm, self.head, self.embedding.weight, class_rows,
                                             uniforms, forced, forced_index, forced_count, out, inputs, record)

    @torch.no_grad()
    def generate(
        self,
        num_samples: int,
        batch_size: int = 1,
        prompt: Tensor | None = None,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Sample ``num_samples`` new tokens after an optional ``prompt`` (B, P); returns (B, num_samples).

        The prompt is consumed in parallel by ``prefill`` up to a whole number of pooling periods
        (``prefill_length``), the rest by stepping, as ``mamba_audio.streaming`` does: both then
        compute exactly the same thing in any dtype. Row i draws its random numbers from seed
        ``seed + i`` alone (see ``sampling.StreamSampler``), so it is the stream that
        ``mamba_audio.streaming`` produces with that seed, whatever else is in the batch.
        """
        from tqdm.auto import tqdm

        device = self.head.weight.device
        if prompt is not None:
            if prompt.dim() != 2:
                raise ValueError(f"prompt must be (batch, length) tokens, got shape {tuple(prompt.shape)}")
            batch_size = prompt.shape[0]
            prompt = prompt.to(device)
        if labels is not None:
            labels = torch.as_tensor(labels, device=device).reshape(-1).expand(batch_size)
        self._check_labels(labels, batch_size)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        sampler = StreamSampler(batch_size, device)
        for row in range(batch_size):
            sampler.set_row(row, seed + row, temperature, top_k, top_p)
        state = self.allocate_inference_cache(batch_size, device)
        token = torch.full((batch_size,), self.tokenizer.silence_token, dtype=torch.long, device=device)
        if prompt is not None and prompt.shape[1] > 0:
            inputs = torch.cat([token[:, None], prompt], dim=1)  # the silence token, then the prompt
            k = self.prefill_length(prompt.shape[1])
            if k:
                self.prefill(inputs[:, :k], state, labels)
            for t in range(k, prompt.shape[1]):
                self.step(inputs[:, t], state, labels)
            token = prompt[:, -1]
        out = torch.empty(batch_size, num_samples, dtype=torch.long, device=device)
        inputs, class_rows = self._embed(token, labels), self.class_rows(labels)
        token = token.clone()  # the sampled tokens' buffer
        nothing_forced = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        index, count = torch.zeros(batch_size, dtype=torch.long, device=device), nothing_forced[:, 0]
        for t in tqdm(range(num_samples), desc="generating", unit="sample", disable=not progress):
            self.step_and_sample(inputs, state, sampler, sampler.uniforms(), nothing_forced, index, count, token,
                                 class_rows, record=out[:, t])
        return out
