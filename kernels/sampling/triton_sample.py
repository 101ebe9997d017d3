"""Sampling in one launch: ``reference.sample_tokens_ref``'s rule (and ``sample_or_force_ref``'s step, which
replays given tokens in some rows), one program per row.

A row's logits (V <= 4096) sit in registers. Without top-k or top-p the draw needs no ranking:
exponentials, a cumulative sum in index order and a count. With either filter, each token's rank
(how many tokens come before it in a stable descending sort) is counted against the row in chunks
of ``CHUNK`` logits; top-p also needs the probability mass ranked before each token, counted the same
way from the top-k probabilities and ranks, which go through a per-row scratch row (a barrier
between the store and the chunked reads).

``head_sample_or_force_triton`` makes the logits in the same launch (a norm and a linear head over the
row's hidden state, written out for the ranking reads) and writes the drawn token's embedding as the
next step's input: in a step loop, the launches of the norm, the head and the embedding lookup go, and
the launch joins the block steps' chain of dependent launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..selective_scan.triton_step import _norm_row, dependent_launches, gdc_launch_dependents, gdc_wait
from .reference import MIN_TEMPERATURE, check_head_inputs

Tensor = torch.Tensor

MAX_VOCAB = 4096
CHUNK = 32


@triton.jit
def _head_logits(hidden_ptr, normw_ptr, normb_ptr, headw_ptr, headb_ptr, logits_ptr, row, width, vocab, eps,
                 s_hb, s_hh, s_wv, s_wh, s_lb, s_lv, RMS_NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr,
                 HAS_HEAD_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_ROWS: tl.constexpr,
                 PDL: tl.constexpr):
    """head(norm(hidden[row])) to logits_ptr's row, float32, HEAD_ROWS logits at a time; returns the columns
    (BLOCK_H,) and their mask for the embedding. PDL: the first rows of the head's weights are loaded before
    ``gdc_wait`` (which returns once the launch before, writing hidden, has finished)."""
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < width
    offs_v = tl.arange(0, HEAD_ROWS)
    w = tl.load(headw_ptr + offs_v[:, None] * s_wv + offs_h[None, :] * s_wh,
                mask=(offs_v[:, None] < vocab) & mask_h[None, :], other=0.0)
    if PDL:
        gdc_wait()
    x = tl.load(hidden_ptr + row * s_hb + offs_h * s_hh, mask=mask_h, other=0.0).to(tl.float32)
    normed = _norm_row(x, normw_ptr, normb_ptr, offs_h, mask_h, width, eps, RMS_NORM, HAS_NORM_BIAS)
    for v0 in range(0, vocab, HEAD_ROWS):
        offs_v = v0 + tl.arange(0, HEAD_ROWS)
        mask_v = offs_v < vocab
        if v0 > 0:
            w = tl.load(headw_ptr + offs_v[:, None] * s_wv + offs_h[None, :] * s_wh,
                        mask=mask_v[:, None] & mask_h[None, :], other=0.0)
        logit = tl.sum(w.to(tl.float32) * normed[None, :], axis=1)
        if HAS_HEAD_BIAS:
            logit += tl.load(headb_ptr + offs_v, mask=mask_v, other=0.0).to(tl.float32)
        tl.store(logits_ptr + row * s_lb + offs_v * s_lv, logit, mask=mask_v)
    tl.debug_barrier()  # the sampler below reads the row back, each thread other threads' logits
    return offs_h, mask_h


@triton.jit
def _sample_kernel(logits_ptr, u_ptr, temp_ptr, topk_ptr, topp_ptr, out_ptr, scratch_ptr, vocab, s_lb, s_lv,
                   s_u, s_t, s_k, s_p, counters_ptr, forced_ptr, fidx_ptr, fcount_ptr, record_ptr, width, s_fb, s_fw,
                   s_c, s_fi, s_fc, s_r, hidden_ptr, normw_ptr, normb_ptr, headw_ptr, headb_ptr, emb_ptr, extra_ptr,
                   next_ptr, n_hidden, eps, s_hb, s_hh, s_wv, s_wh, s_ev, s_eh, s_xb, s_xh, s_nb, s_nh,
                   MIN_TEMP: tl.constexpr, BLOCK_V: tl.constexpr, CHUNK: tl.constexpr,
                   FORCE: tl.constexpr = False, RECORD: tl.constexpr = False, HEAD: tl.constexpr = False,
                   RMS_NORM: tl.constexpr = False, HAS_NORM_BIAS: tl.constexpr = False,
                   HAS_HEAD_BIAS: tl.constexpr = False, HAS_EXTRA: tl.constexpr = False, BLOCK_H: tl.constexpr = 16,
                   HEAD_ROWS: tl.constexpr = 16, PDL: tl.constexpr = False):
    """FORCE: ``reference.sample_or_force_ref``'s step (replayed tokens, counters and indices moved on); RECORD:
    the token also goes to record_ptr. HEAD: ``reference.head_sample_or_force_ref``: the logits are made here
    first (logits_ptr is their output), and the token's embedding row (plus extra's row) goes to next_ptr.
    PDL (with HEAD; launched as a programmatic dependent launch): the next launch may start at once."""
    row = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
    if HEAD:
        offs_h, mask_h = _head_logits(hidden_ptr, normw_ptr, normb_ptr, headw_ptr, headb_ptr, logits_ptr, row,
                                      n_hidden, vocab, eps, s_hb, s_hh, s_wv, s_wh, s_lb, s_lv, RMS_NORM,
                                      HAS_NORM_BIAS, HAS_HEAD_BIAS, BLOCK_H, HEAD_ROWS, PDL)
    offs = tl.arange(0, BLOCK_V)
    valid = offs < vocab
    logits = tl.load(logits_ptr + row * s_lb + offs * s_lv, mask=valid, other=float("-inf")).to(tl.float32)
    temperature = tl.load(temp_ptr + row * s_t).to(tl.float32)
    top_k = tl.load(topk_ptr + row * s_k)
    top_p = tl.load(topp_ptr + row * s_p).to(tl.float32)
    uniform = tl.load(u_ptr + row * s_u).to(tl.float32)

    inv_temp = 1.0 / tl.maximum(temperature, MIN_TEMP)
    scaled = logits * inv_temp
    top = tl.max(scaled, axis=0)
    weights = tl.where(valid, tl.exp(scaled - top), 0.0)
    keep = valid
    if (top_k < vocab) | (top_p < 1.0):
        rank = tl.zeros([BLOCK_V], dtype=tl.int32)
        for j0 in range(0, vocab, CHUNK):
            offs_j = j0 + tl.arange(0, CHUNK)
            other = tl.load(logits_ptr + row * s_lb + offs_j * s_lv, mask=offs_j < vocab,
                            other=float("-inf")).to(tl.float32) * inv_temp
            ahead = (other[None, :] > scaled[:, None]) | (
                (other[None, :] == scaled[:, None]) & (offs_j[None, :] < offs[:, None]))
            rank += tl.sum((ahead & (offs_j[None, :] < vocab)).to(tl.int32), axis=1)
        keep = valid & (rank < top_k)
        if top_p < 1.0:
            probs = tl.where(keep, weights, 0.0)
            probs = probs / tl.sum(probs, axis=0)
            scratch = scratch_ptr + row * 2 * BLOCK_V
            tl.store(scratch + offs, probs)
            tl.store(scratch + BLOCK_V + offs, rank.to(tl.float32))
            tl.debug_barrier()
            mass_before = tl.zeros([BLOCK_V], dtype=tl.float32)
            for j0 in range(0, vocab, CHUNK):
                offs_j = j0 + tl.arange(0, CHUNK)
                p_j = tl.load(scratch + offs_j, mask=offs_j < vocab, other=0.0)
                rank_j = tl.load(scratch + BLOCK_V + offs_j, mask=offs_j < vocab, other=float(BLOCK_V))
                before = rank_j[None, :] < rank.to(tl.float32)[:, None]
                mass_before += tl.sum(tl.where(before, p_j[None, :], 0.0), axis=1)
            keep = keep & (mass_before < top_p)
    kept = tl.where(keep, weights, 0.0)
    cdf = tl.cumsum(kept, axis=0)
    target = uniform * tl.sum(kept, axis=0)
    last_kept = tl.max(tl.where(keep, offs, -1), axis=0)
    index = tl.minimum(tl.sum((cdf <= target).to(tl.int32), axis=0), last_kept)
    if temperature == 0.0:
        index = tl.argmax(logits, axis=0)
    token = index.to(tl.int64)
    if FORCE:
        position = tl.load(fidx_ptr + row * s_fi)
        forcing = position < tl.load(fcount_ptr + row * s_fc)
        replayed = tl.load(forced_ptr + row * s_fb + tl.minimum(position, width - 1) * s_fw)
        token = tl.where(forcing, replayed, token)
        tl.store(fidx_ptr + row * s_fi, position + forcing.to(tl.int64))
        tl.store(counters_ptr + row * s_c, tl.load(counters_ptr + row * s_c) + (1 - forcing.to(tl.int64)))
    tl.store(out_ptr + row, token)
    if RECORD:
        tl.store(record_ptr + row * s_r, token)
    if HEAD:
        embedded = tl.load(emb_ptr + token * s_ev + offs_h * s_eh, mask=mask_h, other=0.0).to(tl.float32)
        if HAS_EXTRA:
            embedded += tl.load(extra_ptr + row * s_xb + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
        tl.store(next_ptr + row * s_nb + offs_h * s_nh, embedded.to(next_ptr.dtype.element_ty), mask=mask_h)


def sample_tokens_triton(logits: Tensor, uniforms: Tensor, temperature: Tensor, top_k: Tensor,
                         top_p: Tensor) -> Tensor:
    """``sample_tokens_ref`` in one launch (logits (B, V), V <= ``MAX_VOCAB``); tokens (B,) long."""
    batch = logits.shape[0]
    out = torch.empty(batch, dtype=torch.long, device=logits.device)
    _launch(logits, uniforms, temperature, top_k, top_p, out)
    return out


def sample_or_force_triton(logits: Tensor, uniforms: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
                           counters: Tensor, forced: Tensor, forced_index: Tensor, forced_count: Tensor, out: Tensor,
                           record: Tensor | None = None, _head: tuple | None = None) -> Tensor:
    """``sample_or_force_ref`` in one launch (logits (B, V), V <= ``MAX_VOCAB``). ``_head``: the arguments and
    constexprs of ``head_sample_or_force_triton``'s part (the logits are then its output)."""
    batch = logits.shape[0]
    for name, t in (("counters", counters), ("forced_index", forced_index), ("forced_count", forced_count),
                    ("out", out), ("record", record)):
        if t is not None and (t.shape != (batch,) or t.dtype != torch.long):
            raise ValueError(f"{name} must be ({batch},) long, got {tuple(t.shape)} {t.dtype}")
    if forced.dim() != 2 or forced.shape[0] != batch or forced.shape[1] == 0 or forced.dtype != torch.long:
        raise ValueError(f"forced must be ({batch}, W >= 1) long, got {tuple(forced.shape)} {forced.dtype}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    _launch(logits, uniforms, temperature, top_k, top_p, out, counters, forced, forced_index, forced_count, record,
            _head)
    return out


def head_sample_or_force_triton(hidden: Tensor, norm_weight: Tensor, norm_bias: Tensor | None, norm_eps: float,
                                rms_norm: bool, head_weight: Tensor, head_bias: Tensor | None, embedding: Tensor,
                                extra: Tensor | None, uniforms: Tensor, temperature: Tensor, top_k: Tensor,
                                top_p: Tensor, counters: Tensor, forced: Tensor, forced_index: Tensor,
                                forced_count: Tensor, out: Tensor, next_input: Tensor,
                                record: Tensor | None = None) -> Tensor:
    """``head_sample_or_force_ref`` in one launch (V <= ``MAX_VOCAB``); returns the logits (B, V) float32."""
    check_head_inputs(hidden, norm_weight, head_weight, head_bias, embedding, extra, next_input)
    batch, width = hidden.shape
    logits = torch.empty(batch, head_weight.shape[0], dtype=torch.float32, device=hidden.device)
    block_h = max(16, triton.next_power_of_2(width))
    pdl = dependent_launches(hidden.device)
    placeholder = hidden
    head_args = (hidden, norm_weight, norm_bias if norm_bias is not None else placeholder, head_weight,
                 head_bias if head_bias is not None else placeholder, embedding,
                 extra if extra is not None else placeholder, next_input, width, float(norm_eps), *hidden.stride(),
                 *head_weight.stride(), *embedding.stride(), *(extra.stride() if extra is not None else (0, 0)),
                 *next_input.stride())
    head_meta = dict(HEAD=True, RMS_NORM=bool(rms_norm), HAS_NORM_BIAS=norm_bias is not None and not rms_norm,
                     HAS_HEAD_BIAS=head_bias is not None, HAS_EXTRA=extra is not None, BLOCK_H=block_h,
                     HEAD_ROWS=max(1, min(triton.next_power_of_2(logits.shape[1]), 8192 // block_h)), PDL=pdl,
                     **({"launch_pdl": True} if pdl else {}))
    sample_or_force_triton(logits, uniforms, temperature, top_k, top_p, counters, forced, forced_index, forced_count,
                           out, record, _head=(head_args, head_meta))
    return logits


def _launch(logits, uniforms, temperature, top_k, top_p, out, counters=None, forced=None, forced_index=None,
            forced_count=None, record=None, head=None) -> None:
    batch, vocab = logits.shape
    if vocab > MAX_VOCAB:
        raise ValueError(f"the Triton sampler takes at most {MAX_VOCAB} logits per row, got {vocab}")
    for name, t in (("uniforms", uniforms), ("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        if t.shape != (batch,):
            raise ValueError(f"{name} must be ({batch},), got {tuple(t.shape)}")
    if batch == 0:
        return
    block_v = max(CHUNK, triton.next_power_of_2(vocab))
    scratch = torch.empty(batch, 2 * block_v, dtype=torch.float32, device=logits.device)
    force = forced is not None
    placeholder = out  # stands in for absent operands; FORCE and RECORD keep them unread
    force_args = ((counters, forced, forced_index, forced_count, record if record is not None else placeholder,
                   forced.shape[1], *forced.stride(), counters.stride(0), forced_index.stride(0),
                   forced_count.stride(0), record.stride(0) if record is not None else 0)
                  if force else (placeholder,) * 5 + (1,) + (0,) * 6)
    head_args, head_meta = head if head is not None else ((placeholder,) * 8 + (1, 0.0) + (0,) * 10, {})
    _sample_kernel[(batch,)](logits, uniforms, temperature, top_k, top_p, out, scratch, vocab, *logits.stride(),
                             uniforms.stride(0), temperature.stride(0), top_k.stride(0), top_p.stride(0), *force_args,
                             *head_args, MIN_TEMP=MIN_TEMPERATURE, BLOCK_V=block_v, CHUNK=CHUNK, FORCE=force,
                             RECORD=force and record is not None, num_warps=4, **head_meta)
