"""The one-launch sampler (kernels/sampling): the Triton kernel against the PyTorch rule, and the rule itself.

On the CPU the kernel runs through Triton's interpreter. Tokens are discrete, so kernel and reference
must agree exactly: on random logits a uniform lands within rounding of a CDF boundary with
probability ~1e-7 per row.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel is defined

from mamba_audio.kernels import sample_tokens  # noqa: E402
from mamba_audio.kernels.sampling import sample_or_force_ref, sample_tokens_ref  # noqa: E402
from mamba_audio.models.sampling import NO_TOP_K  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def triton_module():
    module = importlib.import_module("mamba_audio.kernels.sampling.triton_sample")
    if not torch.cuda.is_available():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(module._sample_kernel, InterpretedFunction):
            os.environ["TRITON_INTERPRET"] = "1"
            module = importlib.reload(module)
    return module


def triton_sample():
    return triton_module().sample_tokens_triton


def settings(rows: int, vocab: int, g: torch.Generator):
    """Every combination per row: greedy, plain, top-k, top-p, both, temperatures above and below 1."""
    kind = torch.arange(rows) % 6
    temperature = torch.where(kind == 0, 0.0, 0.5 + torch.rand(rows, generator=g))
    top_k = torch.where((kind == 2) | (kind == 4), torch.randint(1, vocab + 1, (rows,), generator=g),
                        torch.full((rows,), NO_TOP_K))
    top_p = torch.where((kind == 3) | (kind == 4), 0.05 + 0.9 * torch.rand(rows, generator=g), torch.ones(rows))
    uniforms = torch.rand(rows, generator=g).clamp(1e-6, 1 - 1e-6)
    return [t.to(DEVICE) for t in (uniforms, temperature, top_k, top_p)]


@pytest.mark.parametrize("vocab", [5, 37, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_draws_the_reference_tokens(vocab, dtype):
    g = torch.Generator().manual_seed(vocab)
    rows = 24
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(dtype)
    logits[1, : vocab // 2] = logits[1, 0]  # ties: ranked by index
    logits = logits.to(DEVICE)
    args = settings(rows, vocab, g)
    ours = triton_sample()(logits, *args)
    assert ours.dtype == torch.long and ours.shape == (rows,)
    assert torch.equal(ours.cpu(), sample_tokens_ref(logits, *args).cpu())


def test_kernel_on_non_contiguous_views():
    """Strided logits, and per-row settings that are columns of wider tensors (the streaming loop passes
    one column of a period's uniforms)."""
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(12, 80, generator=g).to(DEVICE)
    logits = wide[:, ::2]  # stride 2 along the vocabulary
    args = [torch.stack([t, t.flip(0), t], dim=1)[:, 1] for t in settings(12, 40, g)]  # stride 3
    assert all(t.stride(0) == 3 for t in args)
    contiguous = [t.contiguous() for t in args]
    assert torch.equal(triton_sample()(logits, *args).cpu(), sample_tokens_ref(logits.contiguous(), *contiguous).cpu())


def test_rule_draws_from_the_filtered_distribution():
    """Uniforms on a fine grid reproduce the top-k / top-p distribution: each kept token's share of the grid
    equals its renormalised probability, and nothing outside the kept set is ever drawn."""
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0, 0.0]])
    probs = logits[0].softmax(-1)
    grid = (torch.arange(20000) + 0.5) / 20000
    rows = grid.numel()

    def draws(top_k, top_p):
        return sample_tokens_ref(logits.expand(rows, -1), grid, torch.ones(rows), torch.full((rows,), top_k),
                                 torch.full((rows,), top_p))

    kept = [1, 3]  # the two most likely
    counts = torch.bincount(draws(2, 1.0), minlength=5).float() / rows
    expected = torch.zeros(5)
    expected[kept] = probs[kept] / probs[kept].sum()
    assert torch.allclose(counts, expected, atol=1e-3)
    # top-p just above the top token's mass keeps exactly the top two, whatever top-k allows
    counts = torch.bincount(draws(NO_TOP_K, float(probs[1]) + 1e-3), minlength=5).float() / rows
    assert torch.allclose(counts, expected, atol=1e-3)
    counts = torch.bincount(draws(NO_TOP_K, 1.0), minlength=5).float() / rows
    assert torch.allclose(counts, probs, atol=1e-3)


def test_greedy_takes_the_first_of_tied_maxima():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]], device=DEVICE)
    args = [torch.tensor(v, device=DEVICE) for v in ([0.9], [0.0], [NO_TOP_K], [1.0])]
    assert int(sample_tokens(logits, *args)) == 1
    assert int(triton_sample()(logits, *args)) == 1


def test_kernel_refuses_what_it_cannot_take():
    sample = triton_sample()
    logits = torch.zeros(2, 8, device=DEVICE)
    args = settings(2, 8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="uniforms must be"):
        sample(logits, args[0][:1], *args[1:])
    with pytest.raises(ValueError, match="at most 4096"):
        sample(torch.zeros(1, 5000, device=DEVICE), *settings(1, 5000, torch.Generator().manual_seed(0)))


def replay_inputs(rows: int, vocab: int, width: int, g: torch.Generator):
    """A batch where some rows still replay given tokens (one at its last, one past its buffer: the index is
    clamped), some have finished replaying and some never had any."""
    forced = torch.randint(0, vocab, (rows, width), generator=g)
    forced_count = torch.randint(0, width + 3, (rows,), generator=g)
    forced_index = torch.minimum(torch.randint(0, width + 3, (rows,), generator=g), forced_count + 1)
    forced_count[0], forced_index[0] = width, width - 1  # the last given token
    forced_count[1], forced_index[1] = width + 2, width + 1  # beyond the buffer: its last column
    forced_count[2], forced_index[2] = 0, 0  # nothing to replay
    counters = torch.randint(0, 1000, (rows,), generator=g)
    return [t.to(DEVICE) for t in (counters, forced, forced_index, forced_count)]


@pytest.mark.parametrize("with_record", [True, False], ids=["record", "no-record"])
def test_kernel_replays_or_draws_as_the_reference(with_record):
    """sample_or_force: tokens, moved counters and replay indices equal the reference's; the record is a strided
    column of a wider buffer (the streaming loop's period buffer)."""
    g = torch.Generator().manual_seed(7)
    rows, vocab, width = 18, 37, 4
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(DEVICE)
    args = settings(rows, vocab, g)
    counters, forced, forced_index, forced_count = replay_inputs(rows, vocab, width, g)
    outputs = []
    for fn in (sample_or_force_ref, triton_module().sample_or_force_triton):
        state = [t.clone() for t in (counters, forced_index)]
        out = torch.full((rows,), -1, dtype=torch.long, device=DEVICE)
        buffer = torch.full((rows, 5), -1, dtype=torch.long, device=DEVICE)
        record = buffer[:, 3] if with_record else None
        returned = fn(logits, *args, state[0], forced, state[1], forced_count, out, record)
        assert returned is out
        outputs.append([out, *state, buffer])
    (out_ref, counters_ref, index_ref, buffer_ref), (out, counters_new, index_new, buffer) = outputs
    assert torch.equal(out.cpu(), out_ref.cpu())
    assert torch.equal(counters_new.cpu(), counters_ref.cpu()) and torch.equal(index_new.cpu(), index_ref.cpu())
    assert torch.equal(buffer.cpu(), buffer_ref.cpu())
    # the reference itself: replaying rows take the clamped given token and move their index, the others draw
    forcing = (forced_index < forced_count).cpu()
    assert forcing[:2].all() and not forcing[2] and (~forcing).any()
    given = forced.cpu().gather(1, forced_index.cpu().clamp_max(width - 1)[:, None])[:, 0]
    drawn = sample_tokens_ref(logits, *args).cpu()
    assert torch.equal(out_ref.cpu(), torch.where(forcing, given, drawn))
    assert torch.equal(index_ref.cpu(), (forced_index + forcing.to(DEVICE).long()).cpu())
    assert torch.equal(counters_ref.cpu(), (counters + (~forcing).to(DEVICE).long()).cpu())
    if with_record:
        assert torch.equal(buffer_ref[:, 3].cpu(), out_ref.cpu()) and (buffer_ref[:, [0, 1, 2, 4]] == -1).all()


def test_replaying_kernel_refuses_what_it_cannot_take():
    replay = triton_module().sample_or_force_triton
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(3, 8, device=DEVICE)
    args = settings(3, 8, g)
    counters, forced, forced_index, forced_count = replay_inputs(3, 8, 2, g)
    out = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="counters must be"):
        replay(logits, *args, counters.int(), forced, forced_index, forced_count, out)
    with pytest.raises(ValueError, match="forced must be"):
        replay(logits, *args, counters, forced[:, :0], forced_index, forced_count, out)
    with pytest.raises(ValueError, match="out must be contiguous"):
        wide = torch.zeros(3, 2, dtype=torch.long, device=DEVICE)
        replay(logits, *args, counters, forced, forced_index, forced_count, wide[:, 0])



def head_inputs(rows, width, vocab, dtype, g, *, rms_norm, norm_bias, head_bias, extra):
    """A hidden state and the norm, head and embedding of a small model, in ``dtype``."""
    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype).to(DEVICE)

    return dict(hidden=rand(rows, width, scale=2.0), norm_weight=1 + rand(width, scale=0.1),
                norm_bias=rand(width, scale=0.1) if norm_bias else None, norm_eps=1e-5, rms_norm=rms_norm,
                head_weight=rand(vocab, width, scale=width ** -0.5), head_bias=rand(vocab) if head_bias else None,
                embedding=rand(vocab, width), extra=rand(rows, width) if extra else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width,vocab,rms_norm,biases,extra", [
    (64, 256, True, False, False),  # the sc09 models: RMSNorm, unconditional
    (24, 37, False, True, True),  # LayerNorm with biases, a class row, sides not powers of two
    (16, 300, True, True, False),  # several chunks of head rows
], ids=["rms", "layernorm-class", "chunks"])
def test_head_kernel_matches_the_reference(dtype, width, vocab, rms_norm, biases, extra):
    """head_sample_or_force: the logits (float32, to summation order), tokens, counters, replay indices, record
    and the next inputs (exactly: an embedding row plus the class row, rounded once) equal the reference's."""
    from mamba_audio.kernels.sampling import head_sample_or_force_ref

    g = torch.Generator().manual_seed(width + vocab)
    rows = 12
    head = head_inputs(rows, width, vocab, dtype, g, rms_norm=rms_norm, norm_bias=biases, head_bias=biases,
                       extra=extra)
    args = settings(rows, vocab, g)
    counters, forced, forced_index, forced_count = replay_inputs(rows, vocab, 3, g)
    results = []
    for fn in (head_sample_or_force_ref, triton_module().head_sample_or_force_triton):
        state = [t.clone() for t in (counters, forced_index)]
        out = torch.full((rows,), -1, dtype=torch.long, device=DEVICE)
        record = torch.full((rows, 4), -1, dtype=torch.long, device=DEVICE)
        next_input = torch.full((rows, width), float("nan"), dtype=dtype, device=DEVICE)
        logits = fn(**head, uniforms=args[0], temperature=args[1], top_k=args[2], top_p=args[3], counters=state[0],
                    forced=forced, forced_index=state[1], forced_count=forced_count, out=out, next_input=next_input,
                    record=record[:, 1])
        results.append([t.cpu() for t in (logits, out, *state, record, next_input)])
    (logits_ref, *rest_ref), (logits, *rest) = results
    assert logits.dtype == torch.float32 and logits.shape == (rows, vocab)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-5)
    for new, ref in zip(rest[:-1], rest_ref[:-1]):
        assert torch.equal(new, ref)
    if dtype == torch.bfloat16 and extra and DEVICE == "cpu":
        # Triton's interpreter rounds float32 to bfloat16 toward zero (the GPU, as torch, to nearest): one unit
        torch.testing.assert_close(rest[-1], rest_ref[-1], rtol=2**-7, atol=0)
    else:
        assert torch.equal(rest[-1], rest_ref[-1])
    # the reference's next inputs: each row's token's embedding, plus its class row
    out_ref, next_ref = rest_ref[0], rest_ref[-1]
    expected = head["embedding"].cpu().float()[out_ref]
    if extra:
        expected = expected + head["extra"].cpu().float()
    assert torch.equal(next_ref, expected.to(dtype))


def test_head_kernel_refuses_mismatched_tensors():
    g = torch.Generator().manual_seed(1)
    head = head_inputs(3, 16, 8, torch.float32, g, rms_norm=True, norm_bias=False, head_bias=True, extra=False)
    args = settings(3, 8, g)
    counters, forced, forced_index, forced_count = replay_inputs(3, 8, 2, g)
    out = torch.zeros(3, dtype=torch.long, device=DEVICE)
    fn = triton_module().head_sample_or_force_triton
    for name, bad in (("embedding", torch.zeros(9, 16)), ("head_bias", torch.zeros(7)),
                      ("next_input", torch.zeros(3, 15))):
        kwargs = dict(head, next_input=torch.zeros(3, 16, device=DEVICE))
        kwargs[name] = bad.to(DEVICE)
        with pytest.raises(ValueError, match=f"{name} must be"):
            fn(**kwargs, uniforms=args[0], temperature=args[1], top_k=args[2], top_p=args[3], counters=counters,
               forced=forced, forced_index=forced_index, forced_count=forced_count, out=out)
