"""Mu-law and linear tokenizers: range, dtype, monotonicity, round-trip error bounds, names."""

import math

import pytest
import torch

from mamba_audio.tokenizers import LinearTokenizer, MuLawTokenizer, build_tokenizer

BITS = [pytest.param(8, id="8bit"), pytest.param(10, id="10bit"), pytest.param(16, id="16bit")]


def ramp(n: int = 20_001) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, n)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("make", [MuLawTokenizer, LinearTokenizer], ids=["mulaw", "linear"])
def test_range_dtype_shape_and_monotonic(make, bits):
    tokenizer = make(bits)
    x = ramp()
    tokens = tokenizer.encode(x)
    assert tokens.dtype == torch.long and tokens.shape == x.shape
    assert tokens.min() == 0 and tokens.max() == 2**bits - 1 == tokenizer.vocab_size - 1
    assert (tokens.diff() >= 0).all(), "encode must be non-decreasing in the sample value"
    every_token = torch.arange(tokenizer.vocab_size)
    decoded = tokenizer.decode(every_token)
    assert decoded.dtype == torch.float32
    assert (decoded.diff() > 0).all(), "decode must be strictly increasing in the token"
    assert decoded[0] == -1.0 and decoded[-1] == 1.0
    torch.testing.assert_close(tokenizer.encode(decoded), every_token)  # decode then encode is the identity


@pytest.mark.parametrize("bits", BITS)
def test_mulaw_round_trip_error_is_within_half_a_step(bits):
    tokenizer = MuLawTokenizer(bits, normalize=False)
    mu = 2**bits - 1
    x = ramp().double()
    error = (tokenizer.decode(tokenizer.encode(x)).double() - x).abs()
    # Half a quantization step 1/mu in the companded domain, mapped back through the expansion's
    # slope ln(1+mu) (mu|x| + 1) / mu at the far end of the step: the error grows with |x|.
    bound = math.log1p(mu) * (mu * x.abs() + 1) / mu * (1 / mu) * (1 + mu) ** (1 / mu) + 1e-6
    assert (error <= bound).all()
    quiet = x.abs() < 0.01
    assert error[quiet].max() < error.max() / 10, "mu-law resolves quiet samples finely"


@pytest.mark.parametrize("bits", BITS)
def test_linear_round_trip_error_is_within_half_a_step(bits):
    tokenizer = LinearTokenizer(bits)
    x = ramp()
    error = (tokenizer.decode(tokenizer.encode(x)) - x).abs()
    assert error.max() <= 1 / (2**bits - 1) + 1e-6


def test_silence_token_decodes_near_zero():
    for tokenizer in (MuLawTokenizer(8), LinearTokenizer(8), MuLawTokenizer(16)):
        assert tokenizer.silence_token == tokenizer.encode(torch.zeros(3))[0] == 2 ** (tokenizer.bits - 1)
        assert abs(tokenizer.decode(torch.tensor([tokenizer.silence_token]))).item() < 0.005


def test_values_outside_the_range_are_clipped():
    for tokenizer in (MuLawTokenizer(8, normalize=False), LinearTokenizer(8)):
        tokens = tokenizer.encode(torch.tensor([-5.0, 5.0]))
        assert tokens.tolist() == [0, 255]


def test_mulaw_normalize_scales_each_clip_to_peak_one():
    quiet = torch.stack([0.1 * ramp(101), 0.5 * ramp(101)])  # (B, L): two clips with different peaks
    normalized = MuLawTokenizer(8, normalize=True).encode(quiet)
    assert normalized[0].tolist() == normalized[1].tolist()
    assert normalized.min() == 0 and normalized.max() == 255
    raw = MuLawTokenizer(8, normalize=False).encode(quiet)
    assert raw[0].max() < raw[1].max() < 255
    silence = MuLawTokenizer(8, normalize=True).encode(torch.zeros(2, 5))  # no division by a zero peak
    assert (silence == 128).all()


def test_mulaw_8_bit_matches_the_textbook_formula():
    x = torch.tensor([-1.0, -0.3, -0.01, 0.0, 0.002, 0.25, 1.0])
    expected = torch.sign(x) * torch.log1p(255 * x.abs()) / math.log(256)
    expected = ((expected + 1) / 2 * 255 + 0.5).floor().long()
    assert MuLawTokenizer(8, normalize=False).encode(x).tolist() == expected.tolist()


def test_build_tokenizer_by_name():
    assert repr(build_tokenizer("mulaw8")) == "MuLawTokenizer(bits=8, normalize=True)"
    assert repr(build_tokenizer("linear8")) == "LinearTokenizer(bits=8)"
    assert build_tokenizer("mulaw16").vocab_size == 65536
    assert build_tokenizer("linear4").vocab_size == 16
    for tokenizer in (MuLawTokenizer(12), LinearTokenizer(3)):
        assert repr(build_tokenizer(tokenizer.name)) == repr(tokenizer)


@pytest.mark.parametrize("name", ["mulaw", "ulaw8", "linear", "mulaw8x", "", "dac"])
def test_build_tokenizer_unknown_name(name):
    with pytest.raises(ValueError, match="expected 'mulaw<bits>' or 'linear<bits>'"):
        build_tokenizer(name)


@pytest.mark.parametrize("name", ["mulaw0", "linear17", "mulaw32"])
def test_build_tokenizer_bits_out_of_range(name):
    with pytest.raises(ValueError, match=r"bits must be in 1\.\.16"):
        build_tokenizer(name)


def test_constructor_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits must be an integer"):
        MuLawTokenizer(0)
    with pytest.raises(ValueError, match="bits must be an integer"):
        LinearTokenizer(8.0)
