"""The sampling rule, in PyTorch: the oracle of the Triton kernel and the CPU path.

logits (B, V) -> tokens (B,), one uniform in (0, 1) per row and per-row settings:

* temperature 0 is greedy (the first index of the largest logit);
* otherwise the logits are divided by the temperature; top-k keeps the k most likely tokens
  and top-p then the smallest set of the most likely whose mass (renormalised over the top-k)
  reaches p, ranking ties by index (a stable sort);
* the token is drawn by inverse CDF over the kept tokens *in index order*: the first token whose
  cumulative kept probability exceeds ``uniform * total``. Walking in index order rather than in
  probability order draws from the same distribution, and needs no sort when nothing is filtered.

Pure tensor code without data-dependent shapes or host syncs, so CUDA graphs can capture it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..selective_scan.step_ref import norm_ref

Tensor = torch.Tensor

MIN_TEMPERATURE = 1e-6  # temperatures above 0 are clamped to this before dividing


def sample_tokens_ref(logits: Tensor, uniforms: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """logits (B, V) float -> tokens (B,) long; uniforms, temperature, top_p (B,) float, top_k (B,) long."""
    logits = logits.float()
    vocab = logits.shape[-1]
    scaled = logits / temperature.float().clamp_min(MIN_TEMPERATURE)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=logits.device)
    keep_sorted = rank[None, :] < top_k[:, None]
    probs = sorted_logits.masked_fill(~keep_sorted, float("-inf")).softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    keep_sorted = keep_sorted & ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1))
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    weights = torch.where(keep, (scaled - sorted_logits[:, :1]).exp(), torch.zeros_like(scaled))
    cdf = weights.cumsum(-1)
    target = uniforms.float()[:, None] * cdf[:, -1:]
    last_kept = torch.where(keep, rank, -1).amax(-1)
    index = torch.minimum((cdf <= target).sum(-1), last_kept)
    return torch.where(temperature == 0, logits.argmax(-1), index)


def sample_or_force_ref(logits: Tensor, uniforms: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
                        counters: Tensor, forced: Tensor, forced_index: Tensor, forced_count: Tensor, out: Tensor,
                        record: Tensor | None = None) -> Tensor:
    """One step of a batch of streams of which some replay given tokens (a prompt's tail, say).

    Row i takes ``forced[i, forced_index[i]]`` while ``forced_index[i] < forced_count[i]``, and its
    ``forced_index`` moves on; every other row draws by ``sample_tokens_ref``, and its ``counters`` entry
    (of its random numbers) moves on. forced (B, W) long (the index is clamped to W - 1); forced_index,
    forced_count, counters (B,) long, updated in place. The tokens go to ``out`` (B,) long and, given,
    ``record`` (B,) (a column of a token buffer, say); returns ``out``."""
    forcing = forced_index < forced_count
    sampled = sample_tokens_ref(logits, uniforms, temperature, top_k, top_p)
    replayed = forced.gather(1, forced_index.clamp_max(forced.shape[1] - 1)[:, None])[:, 0]
    out.copy_(torch.where(forcing, replayed, sampled))
    counters.add_((~forcing).long())
    forced_index.add_(forcing.long())
    if record is not None:
        record.copy_(out)
    return out


def check_head_inputs(hidden: Tensor, norm_weight: Tensor, head_weight: Tensor, head_bias: Tensor | None,
                      embedding: Tensor, extra: Tensor | None, next_input: Tensor) -> None:
    """Raise ValueError naming the first tensor whose shape does not fit the others (``head_sample_or_force``)."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (batch, hidden), got {tuple(hidden.shape)}")
    batch, width = hidden.shape
    vocab = head_weight.shape[0]
    expected = dict(norm_weight=(norm_weight, (width,)), head_weight=(head_weight, (vocab, width)),
                    head_bias=(head_bias, (vocab,)), embedding=(embedding, (vocab, width)),
                    extra=(extra, (batch, width)), next_input=(next_input, (batch, width)))
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape} for hidden {tuple(hidden.shape)} and a vocabulary of {vocab}, "
                             f"got {tuple(t.shape)}")


def head_sample_or_force_ref(hidden: Tensor, norm_weight: Tensor, norm_bias: Tensor | None, norm_eps: float,
                             rms_norm: bool, head_weight: Tensor, head_bias: Tensor | None, embedding: Tensor,
                             extra: Tensor | None, uniforms: Tensor, temperature: Tensor, top_k: Tensor,
                             top_p: Tensor, counters: Tensor, forced: Tensor, forced_index: Tensor,
                             forced_count: Tensor, out: Tensor, next_input: Tensor,
                             record: Tensor | None = None) -> Tensor:
    """The output end of an autoregressive step and the input end of the next, for a batch of streams.

    logits = head(norm(hidden)) in float32 (norm as ``norm_ref``; hidden (B, H), head_weight (V, H), optional
    head_bias (V,)); then ``sample_or_force_ref`` (its arguments, updated in place the same way); then the
    next inputs, ``next_input`` (B, H) <- embedding[token] (+ ``extra`` (B, H), a per-row constant such as a
    class embedding), added in float32 and rounded once to next_input's dtype. Returns the logits (B, V)."""
    check_head_inputs(hidden, norm_weight, head_weight, head_bias, embedding, extra, next_input)
    normed = norm_ref(hidden.float(), norm_weight, norm_bias, norm_eps, rms_norm)
    logits = F.linear(normed, head_weight.float(), None if head_bias is None else head_bias.float())
    sample_or_force_ref(logits, uniforms, temperature, top_k, top_p, counters, forced, forced_index, forced_count,
                        out, record)
    rows = embedding[out].float()
    next_input.copy_(rows if extra is None else rows + extra.float())
    return logits
