"""The codec interface (mu-law as its one-codebook case) and the EnCodec, DAC and SNAC adapters, each tested on
a randomly initialised small model of the real architecture: shapes, ranges, determinism, agreement with the
wrapped model, loading from a local directory, and the errors for missing files and bad inputs."""

import json

import pytest
import snac  # the codec adapters' optional packages are part of the dev install
import torch
import transformers

from mamba_audio.codecs import CodecError, DACCodec, EnCodecCodec, MuLawCodec, SNACCodec, find_codec_files
from mamba_audio.codecs.weights import require_package
from mamba_audio.tokenizers import MuLawTokenizer

SNAC_CONFIG = dict(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4], decoder_dim=16, decoder_rates=[4, 2],
                   attn_window_size=None, codebook_size=64, codebook_dim=4, vq_strides=[4, 2, 1])


def tiny_encodec(**overrides):
    config = transformers.EncodecConfig(num_filters=4, hidden_size=16, codebook_dim=16, upsampling_ratios=[4, 2],
                                        codebook_size=16, num_lstm_layers=1, target_bandwidths=[12.0, 24.0],
                                        **overrides)
    torch.manual_seed(0)
    model = transformers.EncodecModel(config)
    for layer in model.quantizer.layers:  # transformers initialises codebooks to zeros (k-means fills them)
        layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed) * 0.1)
    return model


def tiny_dac():
    torch.manual_seed(0)
    return transformers.DacModel(transformers.DacConfig(
        encoder_hidden_size=4, downsampling_ratios=[2, 4], decoder_hidden_size=16, upsampling_ratios=[4, 2],
        hidden_size=16, n_codebooks=3, codebook_size=32, codebook_dim=4))


def tiny_snac():
    torch.manual_seed(0)
    return snac.SNAC(**SNAC_CONFIG)


def save_hf(model, directory):
    model.save_pretrained(directory)
    return directory


def save_snac(model, directory):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(SNAC_CONFIG))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


ADAPTERS = {
    "encodec": (lambda: EnCodecCodec(tiny_encodec(), bandwidth=24.0), save_hf,
                lambda d: EnCodecCodec.from_pretrained(d, bandwidth=24.0)),
    "dac": (lambda: DACCodec(tiny_dac()), save_hf, lambda d: DACCodec.from_pretrained(d)),
    "snac": (lambda: SNACCodec(tiny_snac()), save_snac, lambda d: SNACCodec.from_pretrained(d)),
}


def audio(batch=2, length=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, generator=g) * 0.3


# -- mu-law ------------------------------------------------------------------------------------------------------

def test_mulaw_codec_is_the_mulaw_tokenizer_with_one_codebook():
    codec = MuLawCodec(bits=8, sample_rate=16000)
    x = audio(2, 50)
    tokens = codec.encode(x, sample_rate=16000)
    assert tokens.shape == (2, 1, 50) and tokens.dtype == torch.long
    assert torch.equal(tokens[:, 0], MuLawTokenizer(8).encode(x))
    assert (codec.num_codebooks, codec.codebook_size, codec.frame_rate, codec.hop_length) == (1, 256, 16000, 1)
    assert torch.equal(codec.decode(tokens), MuLawTokenizer(8).decode(tokens[:, 0]))
    assert codec.num_frames(50) == 50


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(10), r"\(batch, samples\)"),
    (torch.zeros(2, 0), r"at least one sample"),
    (torch.zeros(2, 10, dtype=torch.long), "float tensor"),
    (torch.tensor([[0.0, float("nan")]]), "NaN"),
], ids=["1d", "empty", "int", "nan"])
def test_bad_audio_is_a_clear_error(bad, match):
    with pytest.raises(CodecError, match=match):
        MuLawCodec().encode(bad)


def test_wrong_sample_rate_and_bad_tokens_are_clear_errors():
    codec = MuLawCodec(sample_rate=16000)
    with pytest.raises(CodecError, match="22050 Hz.*16000 Hz.*resample"):
        codec.encode(audio(), sample_rate=22050)
    with pytest.raises(CodecError, match=r"\(batch, 1 codebooks"):
        codec.decode(torch.zeros(2, 2, 5, dtype=torch.long))
    with pytest.raises(CodecError, match=r"\[0, 256\)"):
        codec.decode(torch.full((1, 1, 5), 256))
    with pytest.raises(CodecError, match="integer"):
        codec.decode(torch.zeros(1, 1, 5))


# -- neural codec adapters -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_shapes_ranges_and_determinism(name):
    codec = ADAPTERS[name][0]()
    x = audio(2, 101)
    tokens = codec.encode(x, sample_rate=codec.sample_rate)
    assert tokens.shape == (2, codec.num_codebooks, codec.num_frames(101)) and tokens.dtype == torch.long
    assert tokens.shape[2] * codec.hop_length >= 101 and 0 <= tokens.min() and tokens.max() < codec.codebook_size
    assert len(tokens.unique()) > 1  # the random model actually quantises (not one constant code)
    assert torch.equal(codec.encode(x), tokens)
    assert torch.equal(codec.encode(x[1:]), tokens[1:])  # rows are encoded independently
    wav = codec.decode(tokens)
    assert wav.shape == (2, tokens.shape[2] * codec.hop_length) and wav.dtype == torch.float32
    assert torch.isfinite(wav).all()
    assert codec.frame_rate == codec.sample_rate / codec.hop_length


def test_encodec_and_dac_tokens_and_audio_are_the_wrapped_models():
    x = audio(2, 96)  # a whole number of frames: no padding
    encodec = EnCodecCodec(tiny_encodec(), bandwidth=12.0)
    codes = encodec.model.encode(x[:, None], bandwidth=12.0).audio_codes[0]
    assert encodec.num_codebooks == 1 and torch.equal(encodec.encode(x), codes)
    with torch.no_grad():  # the LSTM's kernels differ in the last bit with and without autograd
        torch.testing.assert_close(encodec.decode(codes), encodec.model.decode(codes[None], [None]).audio_values[:, 0])
    assert torch.equal(encodec.decode(codes), encodec.decode(codes))
    dac = DACCodec(tiny_dac(), num_codebooks=2)
    codes = dac.model.encode(x[:, None]).audio_codes
    assert torch.equal(dac.encode(x), codes[:, :2])
    torch.testing.assert_close(dac.decode(codes[:, :2]), dac.model.decode(audio_codes=codes[:, :2]).audio_values)


def test_snac_layout_is_exact_and_matches_the_wrapped_model():
    codec = SNACCodec(tiny_snac())
    assert codec.num_codebooks == 7 and codec.rows_per_level == [1, 2, 4]
    levels = codec.model.encode(audio(2, 64)[:, None])
    tokens = codec.encode(audio(2, 64))
    assert all(torch.equal(a, b) for a, b in zip(codec.tokens_to_levels(tokens), levels))
    assert torch.equal(codec.levels_to_tokens(codec.tokens_to_levels(tokens)), tokens)
    # frame f holds level 1's tokens 2f, 2f+1 in rows 1, 2 and level 2's 4f..4f+3 in rows 3..6
    assert torch.equal(tokens[:, 1:3, 1], levels[1][:, 2:4]) and torch.equal(tokens[:, 3:7, 1], levels[2][:, 4:8])


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_loads_weights_from_a_local_directory(name, tmp_path):
    build, save, load = ADAPTERS[name]
    codec = build()
    directory = save(codec.model, tmp_path / "weights")
    loaded = load(directory)
    assert torch.equal(loaded.encode(audio()), codec.encode(audio()))


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_missing_weights_name_the_file_and_how_to_get_it(name, tmp_path):
    build, save, load = ADAPTERS[name]
    directory = save(build().model, tmp_path / "weights")
    weights = next(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.unlink()
    with pytest.raises(CodecError, match=f"has no .*{weights.name}"):
        load(directory)
    with pytest.raises(CodecError, match=r"owner/not_cached: config.json is not in the local Hugging Face cache.*"
                                         r"hf download owner/not_cached"):
        find_codec_files("owner/not_cached", "config.json", ("model.safetensors",), cache_dir=tmp_path / "hub")
    with pytest.raises(CodecError, match="neither a directory nor"):
        find_codec_files(tmp_path / "no_such_dir", "config.json", ("model.safetensors",))


def test_adapter_settings_and_packages_give_clear_errors():
    with pytest.raises(CodecError, match="bandwidth must be one of"):
        EnCodecCodec(tiny_encodec(), bandwidth=6.0)
    with pytest.raises(CodecError, match="loudness scale"):
        EnCodecCodec(tiny_encodec(normalize=True, chunk_length_s=0.01, overlap=0.01))
    with pytest.raises(CodecError, match=r"num_codebooks must be in 1\.\.3"):
        DACCodec(tiny_dac(), num_codebooks=4)
    with pytest.raises(CodecError, match=r"needs the 'not-a-package' package: pip install"):
        require_package("mamba_audio_no_such_module", "not-a-package", "Test")
