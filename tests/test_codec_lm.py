"""Multi-codebook modeling: interleave patterns and their inverses, CodecLM causality, stepping and prefill
equal to the parallel forward, greedy generation consistent with the forward, checkpoints, and a tiny
training run whose loss falls."""

import pytest
import torch

from mamba_audio.codecs.patterns import DelayPattern, FlattenPattern, build_pattern
from mamba_audio.models import CodecLM, CodecLMConfig, backbone_preset, load_pretrained

K, C = 3, 16


def make_model(pattern="delay", seed=0, **backbone):
    torch.manual_seed(seed)
    config = CodecLMConfig(backbone=backbone_preset("tiny", pool=[2, 2], **backbone), num_codebooks=K,
                           codebook_size=C, pattern=pattern, frame_rate=50.0, sample_rate=16000)
    return CodecLM(config).eval()


def random_tokens(batch=2, frames=11, seed=0):
    return torch.randint(0, C, (batch, K, frames), generator=torch.Generator().manual_seed(seed))


def step_of(pattern, frame, codebook):
    """The step that holds token (frame, codebook) in the interleaved sequence."""
    return frame + codebook if pattern == "delay" else (frame * K + codebook if pattern == "flatten" else frame)


@pytest.mark.parametrize("name", ["delay", "flatten", "parallel"])
@pytest.mark.parametrize("codebooks, frames", [(1, 1), (1, 7), (4, 1), (4, 9), (8, 3)])
def test_interleave_then_deinterleave_is_the_identity(name, codebooks, frames):
    pattern = build_pattern(name, codebooks)
    tokens = torch.randint(0, 1000, (2, codebooks, frames))
    seq = pattern.interleave(tokens, 1000)
    assert seq.shape == (2, pattern.num_steps(frames), pattern.streams)
    assert torch.equal(pattern.deinterleave(seq), tokens)


def test_delay_and_flatten_layouts():
    tokens = torch.arange(2 * 3 * 4).view(2, 3, 4)
    seq = DelayPattern(3).interleave(tokens, -1)
    assert seq.shape == (2, 6, 3)
    for k in range(3):
        assert torch.equal(seq[:, k: k + 4, k], tokens[:, k])
        assert (seq[:, :k, k] == -1).all() and (seq[:, k + 4:, k] == -1).all()
    flat = FlattenPattern(3).interleave(tokens)[:, :, 0]
    assert flat[0].tolist() == [tokens[0, k, f].item() for f in range(4) for k in range(3)]
    with pytest.raises(ValueError, match="unknown interleave pattern"):
        build_pattern("zigzag", 3)
    with pytest.raises(ValueError, match=r"\(batch, 3 codebooks"):
        DelayPattern(3).interleave(torch.zeros(2, 4, 5, dtype=torch.long), -1)


@pytest.mark.parametrize("pattern", ["delay", "flatten"])
def test_codec_lm_is_causal(pattern):
    model = make_model(pattern)
    tokens = random_tokens()
    logits = model(model.shift(model.interleave(tokens)))
    frame, codebook = 4, 1
    changed = tokens.clone()
    changed[:, codebook, frame] = (changed[:, codebook, frame] + 5) % C
    logits2 = model(model.shift(model.interleave(changed)))
    t = step_of(pattern, frame, codebook)
    # nothing up to and including the token's own step sees it: its own prediction and, with the
    # delay pattern, the coarser codebooks of its frame (steps f + k' < f + k) are unchanged
    assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1])
    assert not torch.allclose(logits[:, t + 1:], logits2[:, t + 1:])


@pytest.mark.parametrize("pattern", ["delay", "flatten", "parallel"])
def test_stepping_and_prefill_equal_the_parallel_forward(pattern):
    model = make_model(pattern)
    inputs = model.shift(model.interleave(random_tokens(frames=9)))
    with torch.no_grad():
        full = model(inputs)
        state = model.allocate_inference_cache(2)
        stepped = torch.stack([model.step(inputs[:, s], state) for s in range(inputs.shape[1])], dim=1)
        state = model.allocate_inference_cache(2)
        split = 5  # mid pooling period: prefill continues from any position
        mixed = torch.cat([model.prefill(inputs[:, :split], state),
                           torch.stack([model.step(inputs[:, s], state) for s in range(split, inputs.shape[1])], 1)], 1)
    assert stepped.shape == full.shape == (2, inputs.shape[1], model.pattern.streams, C)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(mixed, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pattern", ["delay", "flatten"])
def test_greedy_generation_follows_the_forward_and_keeps_the_prompt(pattern):
    model = make_model(pattern)
    prompt = random_tokens(batch=2, frames=5)
    new = model.generate(4, prompt=prompt, temperature=0.0)
    assert new.shape == (2, K, 4) and 0 <= new.min() and new.max() < C
    tokens = torch.cat([prompt, new], dim=2)
    with torch.no_grad():
        logits = model(model.shift(model.interleave(tokens)))  # (B, S, P, C)
    predicted = model.pattern.deinterleave(logits.argmax(-1))  # the forward's greedy choice for every token
    assert torch.equal(predicted[:, :, 5:], new)


def test_sampling_is_seeded_per_row():
    model = make_model("delay")
    both = model.generate(3, batch_size=2, seed=7, top_k=5)
    assert torch.equal(both, model.generate(3, batch_size=2, seed=7, top_k=5))
    assert torch.equal(both[1:], model.generate(3, batch_size=1, seed=8, top_k=5))
    assert not torch.equal(both[0], both[1])


def test_checkpoint_round_trip_and_config_errors(tmp_path):
    model = make_model("flatten")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, CodecLM) and loaded.config == model.config
    tokens = random_tokens()
    assert torch.equal(loaded.nll_bits(tokens), model.nll_bits(tokens))
    with pytest.raises(ValueError, match="pattern must be one of"):
        CodecLMConfig(pattern="zigzag")
    with pytest.raises(ValueError, match="token ids must be in"):
        model.nll_bits(torch.full((1, K, 4), C))


def test_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = make_model("delay").train()
    # learnable structure: every codebook counts up by its own stride from a random start per clip
    starts = torch.randint(0, C, (8, K, 1))
    tokens = (starts + torch.arange(24)[None, None, :] * torch.tensor([1, 2, 3])[None, :, None]) % C
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.nll_bits(tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.5  # about log2(16) = 4 bits at initialisation
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
