"""Our trainable codec (ConvCodec) and the multi-resolution STFT distance: round-trip shapes and determinism,
the quantiser's moving averages and restarts, checkpoints and their errors, bad inputs, and the distance's
known values."""

import json

import pytest
import torch

from mamba_audio.codecs import AudioCodec, CodecError, ConvCodec, ConvCodecConfig, MuLawCodec
from mamba_audio.codecs.rvq import ResidualVQ
from mamba_audio.metrics import mrstft_distance
from mamba_audio.models import CheckpointError, load_pretrained

TINY = dict(strides=[2, 4], channels=4, latent_dim=8, dilations=[1], num_codebooks=3, codebook_size=16)


def tiny_codec(seed=0, **overrides) -> ConvCodec:
    torch.manual_seed(seed)
    return ConvCodec(ConvCodecConfig(**{**TINY, **overrides}))


def speechlike(batch=2, samples=2048, seed=0) -> torch.Tensor:
    """Decaying harmonic tones at random pitches: structured audio with silence-free spectra."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    f0 = 100 + 200 * torch.rand(batch, 1, generator=g)
    tone = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 5))
    return 0.3 * tone * torch.exp(-3 * t) + 0.01 * torch.randn(batch, samples, generator=g)


def test_round_trip_shapes_ranges_and_determinism():
    codec = tiny_codec()
    assert isinstance(codec, AudioCodec)
    assert (codec.hop_length, codec.frame_rate, codec.num_codebooks, codec.codebook_size) == (8, 2000.0, 3, 16)
    codec(speechlike())  # one training step's quantiser update: codes drawn from the data
    audio = speechlike(samples=1001)  # not a whole number of frames: padded to 1008
    tokens = codec.encode(audio, sample_rate=16000)
    assert tokens.shape == (2, 3, 126) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < 16
    assert torch.equal(codec.encode(audio), tokens)  # deterministic, and encoding never moves the codebooks
    decoded = codec.decode(tokens)
    assert decoded.shape == (2, 126 * 8) and decoded.dtype == torch.float32
    assert decoded.abs().max() <= 1.0 and torch.equal(codec.decode(tokens), decoded)
    # the training path quantises exactly as encode does, and decode inverts its tokens
    codec.eval()
    out = codec(torch.nn.functional.pad(audio, (0, 7)))
    assert torch.equal(out["tokens"], tokens)
    torch.testing.assert_close(out["audio"], decoded)


def test_quantiser_moving_averages_restart_dead_codes():
    torch.manual_seed(0)
    rvq = ResidualVQ(num_codebooks=2, codebook_size=8, dim=4, decay=0.5, dead_code_fraction=0.5).train()
    x = torch.randn(2, 4, 64)
    first, vectors = rvq.codebooks[0], x.transpose(1, 2).reshape(-1, 4)
    first.initialize(vectors)  # what the first training step does: the codes are vectors of the batch
    assert bool(first.initialized)
    assert all((first.codes[i] == vectors).all(1).any() for i in range(8))
    rvq(x)
    # all vectors near one point: every code but the nearest falls out of use and is restarted on the data
    tight = torch.zeros(2, 4, 64) + 0.01 * torch.randn(2, 4, 64)
    for _ in range(6):
        quantised, codes, commitment, usage = rvq(tight)
    # without restarts an unused code keeps its place (about 1 away); restarted, every code lies among the data
    assert first.codes.abs().max() < 0.1
    assert quantised.shape == tight.shape and codes.shape == (2, 2, 64) and 0 < float(usage) <= 1
    assert torch.isfinite(commitment)
    rvq.eval()
    before = first.codes.clone()
    rvq(x)
    assert torch.equal(first.codes, before)  # eval mode never updates


def test_gradients_pass_straight_through_the_quantiser():
    codec = tiny_codec()
    audio = speechlike()
    out = codec(audio)
    (out["audio"] - audio).abs().mean().backward()
    first_conv = codec.encoder.layers[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_checkpoint_round_trip_and_load_pretrained(tmp_path):
    codec = tiny_codec()
    codec(speechlike())
    codec.save_pretrained(tmp_path / "codec")
    for loaded in (ConvCodec.from_pretrained(tmp_path / "codec"), load_pretrained(tmp_path / "codec")):
        assert isinstance(loaded, ConvCodec) and loaded.config == codec.config
        audio = speechlike(seed=1)
        assert torch.equal(loaded.encode(audio), codec.encode(audio))


def test_mismatched_checkpoints_are_clear_errors(tmp_path):
    tiny_codec().save_pretrained(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "config.json").read_text())
    meta["config"]["codebook_size"] = 32
    (tmp_path / "codec" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch.*codes"):
        ConvCodec.from_pretrained(tmp_path / "codec")
    meta["config"]["strides"] = [1, 4]
    (tmp_path / "codec" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="strides"):
        ConvCodec.from_pretrained(tmp_path / "codec")
    meta["model_type"] = "sashimi_lm"
    (tmp_path / "codec" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'sashimi_lm' model, not a 'conv_codec'"):
        ConvCodec.from_pretrained(tmp_path / "codec")


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 100), "mono only"),
    (torch.zeros(1, 0), "at least one sample"),
    (torch.full((1, 64), float("nan")), "NaN"),
    (torch.zeros(1, 64, dtype=torch.long), "float tensor"),
])
def test_bad_audio_and_tokens_are_clear_errors(bad, match):
    codec = tiny_codec()
    with pytest.raises(CodecError, match=match):
        codec.encode(bad)
    with pytest.raises(CodecError, match="22050 Hz, but ConvCodec runs at 16000 Hz"):
        codec.encode(torch.zeros(1, 64), sample_rate=22050)
    with pytest.raises(CodecError, match=r"must be \(batch, 3 codebooks"):
        codec.decode(torch.zeros(1, 2, 5, dtype=torch.long))
    with pytest.raises(CodecError, match=r"in \[0, 16\)"):
        codec.decode(torch.full((1, 3, 5), 16))
    with pytest.raises(ValueError, match="strides"):
        ConvCodecConfig(strides=[1, 4])


def test_mrstft_distance_values():
    audio = speechlike(samples=4096)
    assert float(mrstft_distance(audio, audio)) == 0.0
    per_clip = mrstft_distance(0.5 * audio, audio, reduction="none")
    assert per_clip.shape == (2,)
    # a gain g changes every magnitude by g: spectral convergence |1 - g|, log term |log g|
    expected = 0.5 + abs(torch.log(torch.tensor(0.5)))
    torch.testing.assert_close(per_clip, expected.expand(2), atol=2e-3, rtol=0)
    noisy = audio + 0.003 * torch.randn_like(audio)
    assert 0 < float(mrstft_distance(noisy, audio)) < float(mrstft_distance(0.5 * audio, audio))
    mulaw = MuLawCodec(normalize=False)
    assert float(mrstft_distance(mulaw.decode(mulaw.encode(audio)), audio)) < 0.5
    with pytest.raises(ValueError, match="fft_sizes"):
        mrstft_distance(audio[:, :100], audio[:, :100])
    with pytest.raises(ValueError, match="same shape|both be"):
        mrstft_distance(audio, audio[:1])


def test_chunks_decoded_with_ten_frames_of_context_equal_the_whole_decode():
    """What streaming decoders rely on (the ConvCodec docstring): the default decoder sees about 10 frames either side."""
    torch.manual_seed(0)
    codec = ConvCodec(ConvCodecConfig()).eval()
    for codebook in codec.quantizer.codebooks:
        codebook.codes.normal_()
    tokens = torch.randint(0, 1024, (1, 4, 50))
    whole, hop = codec.decode(tokens), codec.hop_length
    start, end, context = 20, 30, 10
    chunk = codec.decode(tokens[:, :, start - context:end + context])[:, context * hop:(context + end - start) * hop]
    torch.testing.assert_close(chunk, whole[:, start * hop:end * hop], atol=1e-5, rtol=0)
