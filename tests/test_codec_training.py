"""Training the codec (`mamba-audio train-codec`) and pre-tokenising corpora (`mamba-audio tokenize`, TokenizedDataset):
a tiny run whose loss falls and that resumes, checkpoints that load as codecs, token files that round-trip
with their metadata, and clear errors for broken folders."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from mamba_audio.cli import main
from mamba_audio.codecs import CodecError, ConvCodec, ConvCodecConfig, MuLawCodec, load_codec
from mamba_audio.data.folder import DataLayoutError
from mamba_audio.data.tokenized import TokenizedDataset, audio_splits, collate_codec_tokens, tokenize_splits

RATE = 16000
TINY = ["--set", "model.strides=[2, 4]", "--set", "model.channels=4", "--set", "model.latent_dim=8",
        "--set", "model.dilations=[1]", "--set", "model.num_codebooks=2", "--set", "model.codebook_size=16",
        "--set", "loss.fft_sizes=[256, 128, 64]", "--set", "train.warmup_steps=2", "--set", "train.log_every=1",
        "--set", "train.tensorboard=false"]


def tone(seconds: float, f0: float) -> torch.Tensor:
    """A decaying tone over faint noise (as recordings have: a noiseless spectrum's log magnitudes are -inf)."""
    t = torch.arange(int(seconds * RATE)) / RATE
    noise = 0.003 * torch.randn(len(t), generator=torch.Generator().manual_seed(int(f0)))
    return (0.4 * torch.sin(2 * torch.pi * f0 * t) * torch.exp(-4 * t) + noise).numpy()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Speech Commands layout: two words, four clips each (one held out), 0.1-0.2 s long."""
    root = tmp_path_factory.mktemp("words")
    for w, word in enumerate(["high", "low"]):
        (root / word).mkdir()
        for i in range(4):
            sf.write(root / word / f"{i}.wav", tone(0.1 + 0.025 * i, 880 / (w + 1) + 40 * i), RATE)
    (root / "testing_list.txt").write_text("high/3.wav\nlow/3.wav\n")
    return root


@pytest.fixture(scope="module")
def ljspeech(tmp_path_factory):
    root = tmp_path_factory.mktemp("lj")
    (root / "wavs").mkdir()
    rows = []
    for i in range(3):
        sf.write(root / "wavs" / f"c{i}.wav", tone(0.15, 300 + 100 * i), RATE)
        rows.append(f"c{i}|Clip {i}.|Clip {i}.")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_codec_loss_falls_resumes_and_loads(tmp_path, labelled):
    out = tmp_path / "codec"
    argv = ["--quiet", "train-codec", "--data", str(labelled), "--out", str(out), "--segment-seconds", "0.064",
            "--steps", "24", "--batch-size", "3", "--lr", "3e-3", "--eval-every", "24", "--save-every", "12",
            "--device", "cpu", *TINY]
    assert main(argv) == 0
    train = [r for r in records(out) if r["split"] == "train"]
    first, last = sum(r["loss"] for r in train[:3]) / 3, sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.9 * first, (first, last)
    evaluation = [r for r in records(out) if r["split"] == "eval"]
    assert len(evaluation) == 1 and 0 < evaluation[0]["mrstft_distance"] < 10
    codec = load_codec(str(out / "checkpoint"))
    assert isinstance(codec, ConvCodec) and codec.num_codebooks == 2 and codec.hop_length == 8
    assert codec.encode(torch.zeros(1, 100)).shape == (1, 2, 13)
    # more steps on --resume continue from the saved state, not from scratch
    assert main([*argv[:argv.index("--steps") + 1], "30", *argv[argv.index("--steps") + 2:], "--resume"]) == 0
    assert [r["step"] for r in records(out) if r["split"] == "train"][-1] == 30


def test_train_codec_errors_name_the_problem(tmp_path, labelled, capsys):
    base = ["--quiet", "train-codec", "--data", str(labelled), "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert main([*base, "--set", "model.strides=[1, 4]"]) == 2
    assert "strides must be" in capsys.readouterr().err
    assert main([*base, "--set", "loss.weight=2"]) == 2
    assert "unknown key(s) ['weight']" in capsys.readouterr().err
    assert main(["--quiet", "train-codec", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_audio_splits_follow_the_layout(labelled, ljspeech, tmp_path):
    splits = audio_splits(labelled, RATE)
    assert sorted(splits) == ["test", "train"] and (len(splits["train"]), len(splits["test"])) == (6, 2)
    assert splits["train"][0]["label"] == 0 and splits["train"].classes == ["high", "low"]
    assert list(audio_splits(ljspeech, RATE)) == ["train"]
    assert audio_splits(ljspeech, RATE)["train"][1]["transcript"] == "Clip 1."
    # a sentence corpus (LJSpeech layout + voices.csv + heldout.txt): train and heldout, voices and phonemes kept
    sentences = tmp_path / "sentences"
    shutil.copytree(ljspeech, sentences)
    (sentences / "voices.csv").write_text("c0|flite:slt\nc1|espeak-ng:en-us\nc2|flite:slt\n")
    (sentences / "phonemes.csv").write_text("c0|klɪp zɪəɹoʊ\nc1|klɪp wʌn\nc2|klɪp tuː\n")
    (sentences / "heldout.txt").write_text("c1\n")
    splits = audio_splits(sentences, RATE)
    assert sorted(splits) == ["heldout", "train"] and len(splits["train"]) == 2
    tokens = tokenize_splits(MuLawCodec(8, normalize=False), splits, tmp_path / "st", progress=False)
    heldout = TokenizedDataset(tokens, "heldout")[0]
    assert (heldout["id"], heldout["transcript"], heldout["voice"], heldout["phonemes"]) == (
        "c1", "Clip 1.", "espeak-ng:en-us", "klɪp wʌn")
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "a.wav", tone(0.1, 200), RATE)
    assert "label" not in audio_splits(flat, RATE)["train"][0]


def test_tokenize_writes_splits_that_read_back_with_metadata(tmp_path, labelled, ljspeech):
    codec = MuLawCodec(8, sample_rate=RATE, normalize=False)
    out = tokenize_splits(codec, audio_splits(labelled, RATE), tmp_path / "tokens", source=labelled,
                          codec_spec="mulaw8", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    lengths = [int((0.1 + 0.025 * i) * RATE) for i in range(4)]  # samples of clips 0..3 of each word
    assert manifest["splits"] == {"train": {"clips": 6, "frames": 2 * sum(lengths[:3])},
                                  "test": {"clips": 2, "frames": 2 * lengths[3]}}
    assert manifest["codec"]["class"] == "MuLawCodec" and manifest["codec"]["spec"] == "mulaw8"
    test = TokenizedDataset(out, "test")
    item = test[1]
    assert item["path"] == "low/3.wav" and item["label"] == 1 and item["class_name"] == "low"
    assert item["tokens"].shape == (1, 2800) and item["num_samples"] == 2800
    audio = torch.from_numpy(sf.read(labelled / "low" / "3.wav", dtype="float32")[0])
    assert torch.equal(item["tokens"], codec.encode(audio[None])[0])  # exactly the codec's tokens
    assert isinstance(test.codec(), MuLawCodec)
    cropped = TokenizedDataset(out, "train", segment_frames=1000, random_crop=True,
                               generator=torch.Generator().manual_seed(0))
    batch = collate_codec_tokens([cropped[0], test[0]])
    assert batch["tokens"].shape == (2, 1, 2800) and batch["lengths"].tolist() == [1000, 2800]
    assert batch["mask"].sum() == 3800 and batch["label"].tolist() == [0, 0]
    # an LJSpeech-layout corpus keeps its transcripts, a ConvCodec its checkpoint beside the tokens
    torch.manual_seed(0)
    conv = ConvCodec(ConvCodecConfig(strides=[2, 4], channels=4, latent_dim=8, dilations=[1], num_codebooks=2,
                                     codebook_size=16)).eval()
    lj = tokenize_splits(conv, audio_splits(ljspeech, RATE), tmp_path / "lj", codec_spec="test", progress=False)
    items = TokenizedDataset(lj, "train")
    assert [it["transcript"] for it in items] == ["Clip 0.", "Clip 1.", "Clip 2."]
    assert items[0]["tokens"].shape == (2, 300) and items.codec_info["frame_rate"] == 2000.0
    decoded = items.codec().decode(items[0]["tokens"][None])
    assert decoded.shape == (1, 2400)


def test_tokenize_command_and_broken_folders(tmp_path, labelled, capsys):
    out = tmp_path / "tokens"
    assert main(["--quiet", "tokenize", "--codec", "mulaw8", "--data", str(labelled), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert len(TokenizedDataset(out, "train")) == 6
    assert main(["--quiet", "tokenize", "--codec", "nonsense", "--data", str(labelled), "--out", str(out)]) == 2
    assert "unknown codec 'nonsense'" in capsys.readouterr().err
    with pytest.raises(CodecError, match="not a codec"):
        load_codec(str(_lm_checkpoint(tmp_path)))
    with pytest.raises(DataLayoutError, match="no split 'validation'"):
        TokenizedDataset(out, "validation")
    (out / "test.jsonl").write_text('{"num_frames": 1}\n')
    with pytest.raises(DataLayoutError, match="test.jsonl lists 1 clips"):
        TokenizedDataset(out, "test")
    (out / "manifest.json").unlink()
    with pytest.raises(DataLayoutError, match="not a tokenized dataset"):
        TokenizedDataset(out, "train")


def _lm_checkpoint(tmp_path):
    from mamba_audio.models import LMConfig, SaShiMiLM, backbone_preset

    return SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", n_layers=1))).save_pretrained(tmp_path / "lm")


CODEC_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/codec*.yaml"))


@pytest.mark.parametrize("recipe", CODEC_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_codec_configs_train(tmp_path, labelled, recipe):
    """Every recipe's codec YAML builds its codec and trains (narrowed by overrides; flags beat the file)."""
    out = tmp_path / "codec"
    assert main(["--quiet", "train-codec", "--data", str(labelled), "--out", str(out), "--config", str(recipe),
                 "--segment-seconds", "0.128", "--steps", "2", "--batch-size", "2", "--device", "cpu",
                 "--set", "model.channels=2", "--set", "train.num_workers=0", "--set", "train.tensorboard=false"]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["step"] == 2 and saved["model_type"] == "conv_codec"


def test_evaluate_codec_scores_codecs_side_by_side(tmp_path, labelled):
    torch.manual_seed(0)
    ConvCodec(ConvCodecConfig(strides=[2, 4], channels=4, latent_dim=8, dilations=[1], num_codebooks=2,
                              codebook_size=16)).save_pretrained(tmp_path / "ours")
    out = tmp_path / "scores.json"
    assert main(["--quiet", "evaluate-codec", "--codec", str(tmp_path / "ours"), "--codec", "mulaw8", "--data",
                 str(labelled), "--device", "cpu", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["split"] == "test" and scores["device"].startswith("cpu") and "evaluate-codec" in scores["command"]
    ours, mulaw = scores["codecs"][str(tmp_path / "ours")], scores["codecs"]["mulaw8"]
    assert ours["clips"] == mulaw["clips"] == 2 and ours["audio_seconds"] == 2 * 2800 / RATE
    assert 0 < mulaw["mrstft_distance"] < 1.0 and ours["mrstft_distance"] > 2 * mulaw["mrstft_distance"]  # untrained
    assert ours["realtime_factor"] > 0
