"""Streaming synthesis on the CPU: streamed tokens equal generate, streams are independent, slots are freed.

The model is tiny (pooling [4, 4], so a period of 16 samples); blocks are one or
two periods, so streams join and leave many times within a hundred samples.
"""

from __future__ import annotations

import gc

import pytest
import torch

from mamba_audio import StreamingGenerator
from mamba_audio.streaming import collection_held_off
from mamba_audio.models import BackboneConfig, ClassifierConfig, LMConfig, MixerConfig, SaShiMiClassifier, SaShiMiLM
from mamba_audio.models.sampling import (
    StreamSampler,
    counter_uniforms,
    hash32,
    sample_tokens,
    sampling_tensors,
    seed_keys,
)


def tiny_lm(num_classes=0, seed=0) -> SaShiMiLM:
    torch.manual_seed(seed)
    backbone = BackboneConfig(d_model=16, n_layers=1, pool=[4, 4], mixer=MixerConfig(d_state=4))
    names = [f"c{i}" for i in range(num_classes)]
    return SaShiMiLM(LMConfig(backbone=backbone, num_classes=num_classes, class_names=names)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_lm()


def stream_tokens(stream) -> torch.Tensor:
    return torch.cat([chunk.tokens for chunk in stream])


SETTINGS = [
    pytest.param(dict(), 0, id="unconditional"),
    pytest.param(dict(temperature=0.8, top_k=20), 21, id="prompt-21-top-k"),
    pytest.param(dict(top_p=0.9), 32, id="prompt-32-top-p"),
    pytest.param(dict(temperature=0), 5, id="prompt-5-greedy"),
]


@pytest.mark.parametrize("settings,prompt_length", SETTINGS)
def test_streamed_tokens_equal_generate(model, settings, prompt_length):
    """Same seed, same tokens: generate prefills the whole prompt; the stream prefills whole periods and
    forces the rest, beside another stream, in chunks that do not divide the block."""
    prompt = torch.randint(0, 256, (2, prompt_length))
    expected = model.generate(60, prompt=prompt if prompt_length else None, batch_size=2, seed=11, **settings)
    generator = StreamingGenerator(model, max_streams=3, block_samples=16)
    neighbour = generator.start(seed=99, chunk_samples=5)
    first = generator.start(prompt_tokens=prompt[0] if prompt_length else None, seed=11, chunk_samples=7,
                            max_samples=60, **settings)
    second = generator.start(prompt_tokens=prompt[1] if prompt_length else None, seed=12, chunk_samples=60,
                             max_samples=60, **settings)
    assert torch.equal(stream_tokens(first), expected[0])  # generate's row i uses seed + i
    assert torch.equal(stream_tokens(second), expected[1])
    assert neighbour.active


def test_bfloat16_stream_equals_generate():
    """Prefill and stepping round differently in bfloat16: generate splits a prompt as streams do, so they agree."""
    model = tiny_lm().to(torch.bfloat16)
    prompt = torch.randint(0, 256, (1, 37))
    expected = model.generate(40, prompt=prompt, seed=6)
    generator = StreamingGenerator(model, max_streams=2, block_samples=16)
    generator.start(seed=1)
    stream = generator.start(prompt_tokens=prompt[0], seed=6, chunk_samples=40, max_samples=40)
    assert torch.equal(next(stream).tokens, expected[0])


def test_class_conditional_and_audio_prompt_streams_equal_generate():
    model = tiny_lm(num_classes=3)
    audio = torch.sin(torch.linspace(0, 40, 27)) * 0.5
    tokens = model.tokenizer.encode(audio)
    expected = model.generate(40, prompt=tokens[None], labels=[2], seed=4, top_k=50)
    generator = StreamingGenerator(model, max_streams=2, block_samples=32)
    stream = generator.start(prompt=audio, label="c2", seed=4, top_k=50, chunk_samples=16, max_samples=40)
    chunks = list(stream)
    assert [c.start for c in chunks] == [0, 16, 32] and [len(c.tokens) for c in chunks] == [16, 16, 8]
    assert torch.equal(torch.cat([c.tokens for c in chunks]), expected[0])
    for chunk in chunks:
        assert chunk.audio.dtype == torch.float32 and torch.equal(chunk.audio, model.tokenizer.decode(chunk.tokens))
    other = generator.start(label=1, seed=4, top_k=50, max_samples=40, chunk_samples=40)
    assert not torch.equal(stream_tokens(other), expected[0])  # the class matters


def test_a_stream_is_the_same_alone_or_beside_streams_joining_and_leaving(model):
    prompt = torch.randint(0, 256, (19,))
    alone = StreamingGenerator(model, max_streams=4, block_samples=16)
    solo = stream_tokens(alone.start(prompt_tokens=prompt, seed=3, top_p=0.95, max_samples=80, chunk_samples=80))

    busy = StreamingGenerator(model, max_streams=4, block_samples=16)
    early = [busy.start(seed=s, chunk_samples=16) for s in (20, 21)]
    for _ in range(3):  # the others run for a while, so ours joins mid-flight
        busy.advance()
    ours = busy.start(prompt_tokens=prompt, seed=3, top_p=0.95, max_samples=80, chunk_samples=16)
    received, joined = [], None
    for i, chunk in enumerate(ours):
        received.append(chunk.tokens)
        if i == 1:
            early[0].stop()  # one leaves...
            joined = busy.start(prompt_tokens=prompt[:7], seed=30, temperature=0.5, chunk_samples=16)  # ...one joins
        if i == 3:
            early[1].stop()
    assert torch.equal(torch.cat(received), solo)
    assert not ours.active and joined.active and busy.samples_stepped > 80


def test_stopping_frees_the_slot_and_ends_iteration(model):
    generator = StreamingGenerator(model, max_streams=2, block_samples=16)
    a = generator.start(seed=1, chunk_samples=10)
    b = generator.start(seed=2, chunk_samples=10, max_samples=20)
    with pytest.raises(RuntimeError, match="all 2 slots are busy"):
        generator.start(seed=3)
    next(a)
    a.stop()
    assert not a.active and generator.streams.count(None) == 1
    with pytest.raises(StopIteration):
        next(a)
    c = generator.start(seed=3, chunk_samples=10)  # takes a's slot
    assert c.slot == 0
    assert [len(chunk.tokens) for chunk in b] == [10, 10]  # max_samples reached: b finished, its slot freed
    assert not b.active and generator.streams == [c, None]
    a.stop()  # stopping twice is harmless


def test_chunks_yields_every_stream_until_all_finish(model):
    generator = StreamingGenerator(model, max_streams=3, block_samples=32)
    lengths = {generator.start(seed=s, chunk_samples=12, max_samples=n).id: n for s, n in ((1, 30), (2, 50))}
    got = {}
    for stream, chunk in generator.chunks():
        assert chunk.start == got.get(stream.id, 0)
        got[stream.id] = got.get(stream.id, 0) + len(chunk.tokens)
    assert got == lengths and generator.active_streams == []


def test_warm_up_periods_leave_no_trace(model):
    """What the CUDA-graph capture relies on: running periods under ``_buffers_restored`` changes nothing."""
    prompt = torch.randint(0, 256, (9,))
    reference = StreamingGenerator(model, max_streams=2, block_samples=16)
    expected = stream_tokens(reference.start(prompt_tokens=prompt, seed=8, max_samples=48, chunk_samples=48))
    generator = StreamingGenerator(model, max_streams=2, block_samples=16)
    stream = generator.start(prompt_tokens=prompt, seed=8, max_samples=48, chunk_samples=48)
    with torch.no_grad(), generator._buffers_restored():  # as at the first advance: forced steps still to come
        for _ in range(2):
            generator._run_period()
    assert torch.equal(stream_tokens(stream), expected)


class _Cycle:
    """Garbage only a collection frees (it refers to itself), as a dead generator and its streams are."""

    def __init__(self, freed: list, tag: str):
        self.freed, self.tag, self.me = freed, tag, self

    def __del__(self):
        self.freed.append(self.tag)


def _allocate_tracked_objects():
    for _ in range(200):
        [[] for _ in range(10)]


def test_no_automatic_collection_while_a_graph_is_captured():
    """What the CUDA-graph capture relies on (``StepLoop._capture``): no automatic collection runs within, where
    freeing a dead generator's graph would fail the capture."""
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # a collection at nearly every allocation of a tracked object
    try:
        freed = []
        with collection_held_off():
            _Cycle(freed, "within")
            _allocate_tracked_objects()
            assert freed == []
        assert gc.isenabled()
        _allocate_tracked_objects()  # the same allocations outside collect it
        assert freed == ["within"]

        gc.disable()  # disabled by the caller: left so
        with collection_held_off():
            pass
        assert not gc.isenabled()
        gc.enable()
        with pytest.raises(RuntimeError, match="inside"), collection_held_off():
            raise RuntimeError("inside")
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.set_threshold(*threshold)


def test_bad_input_gets_clear_errors(model):
    generator = StreamingGenerator(model, max_streams=1, block_samples=16)
    cases = [
        (dict(chunk_samples=0), "chunk_samples must be > 0"),
        (dict(max_samples=-1), "max_samples must be > 0"),
        (dict(prompt=torch.tensor([0.1, float("nan")])), "NaN"),
        (dict(prompt=torch.zeros(2, 5)), "mono audio"),
        (dict(prompt_tokens=torch.tensor([3, 300])), r"prompt_tokens must be in \[0, 256\)"),
        (dict(prompt=torch.zeros(4), prompt_tokens=torch.zeros(4, dtype=torch.long)), "not both"),
        (dict(label=1), "unconditional"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(seed=1.5), "seed must be an integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generator.start(**kwargs)
    assert generator.streams == [None]  # nothing half-started
    conditional = StreamingGenerator(tiny_lm(num_classes=2), max_streams=1, block_samples=16)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.start()
    with pytest.raises(ValueError, match="unknown class 'c9'"):
        conditional.start(label="c9")
    with pytest.raises(ValueError, match="label must be"):
        conditional.start(label=2)
    with pytest.raises(ValueError, match="block_samples must be a positive multiple of the total pooling 16"):
        StreamingGenerator(model, block_samples=24)
    with pytest.raises(ValueError, match="max_streams"):
        StreamingGenerator(model, max_streams=0)
    with pytest.raises(ValueError, match="cuda_graph needs"):
        StreamingGenerator(model, cuda_graph=True)
    classifier = SaShiMiClassifier(ClassifierConfig(backbone=BackboneConfig(d_model=8, n_layers=1, bidirectional=True),
                                                    num_classes=2))
    with pytest.raises(TypeError, match="needs a SaShiMiLM"):
        StreamingGenerator(classifier)
    with pytest.raises(ValueError, match="seed must be an integer"):
        model.generate(2, seed="x")


def test_counter_uniforms_are_per_stream_and_uniform():
    assert hash32(12345) == int(hash32(torch.tensor([12345]))[0])  # the host and the device agree
    keys = [seed_keys(s) for s in range(64)]
    lo, hi = (torch.tensor(k) for k in zip(*keys))
    draws = torch.stack([counter_uniforms(lo, hi, torch.full((64,), t)) for t in range(200)])  # (T, streams)
    assert draws.min() > 0 and draws.max() < 1
    assert abs(draws.mean().item() - 0.5) < 0.01 and abs(draws.var().item() - 1 / 12) < 0.005
    assert draws[:, 0].unique().numel() == 200 and not torch.equal(draws[:, 0], draws[:, 1])
    neighbours = torch.corrcoef(draws.T)[~torch.eye(64, dtype=torch.bool)]
    assert neighbours.abs().max() < 0.35  # no two streams move together (200 draws: |r| ~ 0.07 by chance)


def test_uniforms_ahead_are_the_uniforms_sample_would_draw():
    sampler = StreamSampler(3)
    for row, seed in enumerate((5, 6, 7)):
        sampler.set_row(row, seed)
    sampler.counters += torch.tensor([0, 4, 9])
    skipped = torch.tensor([0, 3, 7])
    ahead = sampler.uniforms_ahead(8, skipped)
    for step in range(8):
        drawn = counter_uniforms(sampler.key_lo, sampler.key_hi, sampler.counters)
        advance = step >= skipped
        assert torch.equal(ahead[advance, step], drawn[advance])
        sampler.sample(torch.zeros(3, 4), advance=advance)


def test_sample_tokens_applies_settings_per_row():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).repeat(6, 1)
    temperature, top_k, top_p = (t.clone() for t in sampling_tensors(6, 1.0, None, None))
    temperature[0] = 0  # greedy
    top_k[1] = 1
    top_p[2] = float(logits[0].softmax(-1)[:2].sum()) - 1e-3  # keeps the two most likely
    for u in torch.linspace(0.001, 0.999, 50):
        tokens = sample_tokens(logits, torch.full((6,), float(u)), temperature, top_k, top_p)
        assert tokens[0] == 0 and tokens[1] == 0 and tokens[2] in (0, 1)
    # inverse CDF: the uniform's quantile picks the token, in order of probability
    probs = logits[3].softmax(-1)
    assert sample_tokens(logits, torch.full((6,), float(probs[0]) - 1e-4), temperature, top_k, top_p)[3] == 0
    assert sample_tokens(logits, torch.full((6,), float(probs[0]) + 1e-4), temperature, top_k, top_p)[3] == 1
    assert sample_tokens(logits, torch.full((6,), 0.99999), temperature, top_k, top_p)[3] == 4


def test_generate_batch_equals_generate_with_labels_and_a_prompt():
    """The CLI's generation path (the streaming loop) gives generate's tokens, row i from seed + i."""
    from mamba_audio.streaming import generate_batch

    lm = tiny_lm(num_classes=3)
    labels = torch.tensor([0, 2, 1])
    prompt = torch.randint(0, 256, (3, 21), generator=torch.Generator().manual_seed(4))
    for kwargs in ({}, {"prompt": prompt}):
        expected = lm.generate(37, batch_size=3, labels=labels, seed=5, top_p=0.9, **kwargs)
        assert torch.equal(generate_batch(lm, 37, 3, labels=labels, seed=5, top_p=0.9, **kwargs), expected.cpu())
    with pytest.raises(ValueError, match="prompt must be"):
        generate_batch(lm, 5, 2, labels=labels[:2], prompt=prompt)
