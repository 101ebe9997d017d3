"""The mamba-audio command on a small folder of audio: train, generate, classify, info, and its errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from mamba_audio.cli import main

RATE = 8000


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Two classes of 0.25 s tones in the Speech Commands layout, with validation and test lists."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    lists = {"validation_list.txt": [], "testing_list.txt": []}
    for label, freq in (("low", 220.0), ("high", 1760.0)):
        (root / label).mkdir()
        for i in range(8):
            t = np.arange(RATE // 4) / RATE
            wav = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.05 * rng.standard_normal()) * t)
            sf.write(root / label / f"{i}.wav", wav.astype(np.float32), RATE)
            if i == 6:
                lists["validation_list.txt"].append(f"{label}/{i}.wav")
            if i == 7:
                lists["testing_list.txt"].append(f"{label}/{i}.wav")
    for name, rows in lists.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


TRAIN_FLAGS = ["--sample-rate", str(RATE), "--segment-seconds", "0.25", "--steps", "3", "--batch-size", "4",
               "--set", "model.backbone.n_layers=1", "--set", "model.backbone.d_model=16"]


def test_train_generate_and_info(tmp_path, labelled_folder, capsys):
    out = tmp_path / "lm"
    assert main(["--quiet", "train", "--data", str(labelled_folder), "--out", str(out), *TRAIN_FLAGS]) == 0
    assert (out / "checkpoint" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" and 0 < r["nll_bits"] < 9 for r in records)

    wav = tmp_path / "gen.wav"
    assert main(["--quiet", "generate", str(out / "checkpoint"), "--out", str(wav), "--seconds", "0.01"]) == 0
    audio, rate = sf.read(wav)
    assert rate == RATE and len(audio) == 80

    prompt = labelled_folder / "low" / "0.wav"
    assert main(["--quiet", "generate", str(out / "checkpoint"), "--out", str(tmp_path / "cont.wav"),
                 "--seconds", "0.01", "--prompt", str(prompt)]) == 0
    assert len(sf.read(tmp_path / "cont.wav")[0]) == RATE // 4 + 80

    capsys.readouterr()
    assert main(["info", str(out / "checkpoint")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "sashimi_lm" and info["parameters"] > 0


def test_class_conditional_generation_needs_a_known_class(tmp_path, labelled_folder, capsys):
    out = tmp_path / "cond"
    assert main(["--quiet", "train", "--data", str(labelled_folder), "--out", str(out), "--conditional",
                 *TRAIN_FLAGS]) == 0
    ckpt = str(out / "checkpoint")
    assert main(["--quiet", "generate", ckpt, "--out", str(tmp_path / "a.wav"), "--seconds", "0.01",
                 "--class-name", "high"]) == 0
    assert main(["--quiet", "generate", ckpt, "--out", str(tmp_path / "b.wav"), "--class-name", "middle"]) == 2
    assert "unknown class 'middle'" in capsys.readouterr().err
    assert main(["--quiet", "generate", ckpt, "--out", str(tmp_path / "b.wav")]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert main(["--quiet", "generate", ckpt, "--out", str(tmp_path / "every"), "--seconds", "0.01",
                 "--per-class", "2"]) == 0
    written = sorted(p.relative_to(tmp_path / "every").as_posix() for p in (tmp_path / "every").rglob("*.wav"))
    assert written == ["high/0.wav", "high/1.wav", "low/0.wav", "low/1.wav"]
    assert main(["--quiet", "generate", ckpt, "--out", str(tmp_path / "x"), "--per-class", "1",
                 "--class-name", "high"]) == 2
    assert "takes no --class-name" in capsys.readouterr().err


def test_train_and_classify(tmp_path, labelled_folder, capsys):
    out = tmp_path / "clf"
    assert main(["--quiet", "train", "--task", "classify", "--data", str(labelled_folder), "--out", str(out),
                 *TRAIN_FLAGS]) == 0
    capsys.readouterr()
    files = [str(labelled_folder / "low" / "7.wav"), str(labelled_folder / "high" / "7.wav")]
    assert main(["classify", str(out / "checkpoint"), *files, "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("low" in line and "high" in line for line in lines)


def test_user_errors_exit_2_with_a_message(tmp_path, labelled_folder, capsys):
    cases = [
        (["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")], "missing"),
        (["train", "--data", str(labelled_folder), "--out", str(tmp_path / "x"), "--set", "train.colour=1"],
         "unknown key(s) ['colour']"),
        (["train", "--data", str(labelled_folder), "--out", str(tmp_path / "x"), "--preset", "huge"],
         "unknown preset 'huge'"),
        (["generate", str(tmp_path / "nope")], "does not exist"),
        (["info", "nothing-like-this"], "neither a checkpoint directory nor a preset"),
    ]
    for argv, message in cases:
        assert main(["--quiet", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_yaml_config_sections_are_checked(tmp_path, labelled_folder, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  tokenizer: mulaw8\noptimizer:\n  lr: 1\n")
    argv = ["--quiet", "train", "--data", str(labelled_folder), "--out", str(tmp_path / "y"), "--config", str(config)]
    assert main(argv) == 2
    assert "unknown section(s) ['optimizer']" in capsys.readouterr().err


def test_corpus_command_builds_the_speech_commands_layout(tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["--quiet", "corpus", "spoken-digits", "--out", str(out), "--words", "yes,no", "--per-word", "3",
            "--sample-rate", str(RATE), "--seconds", "0.5"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["no", "yes"]
    assert len(list(out.glob("*/*.wav"))) == 6
    assert main(argv) == 0  # idempotent: the same arguments build nothing new
    assert main([*argv[:-1], "0.25"]) == 2
    assert "built with other arguments" in capsys.readouterr().err


# codec configs train through train-codec in tests/test_codec_training.py; the TTS config through
# `train --task tts` on a tokenized corpus in tests/test_tts.py
RECIPE_CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*/*.yaml")
                        if not p.name.startswith(("codec", "tts")))


@pytest.mark.parametrize("recipe", RECIPE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_configs_train_and_flags_win_over_the_file(tmp_path, labelled_folder, recipe):
    """Every recipe's YAML builds its model and trains (shrunk by overrides, on the tone folder)."""
    task = "classify" if recipe.name.startswith("classify") else "lm"
    out = tmp_path / task
    argv = ["--quiet", "train", "--task", task, "--data", str(labelled_folder), "--out", str(out),
            "--config", str(recipe), "--segment-seconds", "0.25", "--steps", "2", "--batch-size", "2",
            "--set", "model.backbone.n_layers=1", "--set", "model.backbone.d_model=16",
            "--set", "train.num_workers=0"]
    if task == "lm":
        argv.append("--conditional")
    assert main(argv) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["step"] == 2  # --steps beat the file's steps
    assert saved["config"]["sample_rate"] == yaml.safe_load(recipe.read_text())["model"]["sample_rate"]
    assert saved["config"]["class_names"] == ["high", "low"]


# -- --dataset: the real layouts (fixtures from conftest.py) --------------------------------------

def _saved_config(out):
    return json.loads((out / "checkpoint" / "config.json").read_text())["config"]


def test_train_on_sc09_and_speech_commands(tmp_path, speech_commands):
    lm = tmp_path / "sc09"
    assert main(["--quiet", "train", "--dataset", "sc09", "--data", str(speech_commands), "--out", str(lm),
                 "--conditional", *TRAIN_FLAGS]) == 0
    assert _saved_config(lm)["class_names"] == ["zero", "one", "two", "three", "four", "five", "six", "seven",
                                                "eight", "nine"]
    records = [json.loads(line) for line in (lm / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" and 0 < r["nll_bits"] < 9 for r in records)  # on the test list's digit
    clf = tmp_path / "speech_commands"
    assert main(["--quiet", "train", "--task", "classify", "--dataset", "speech_commands", "--data",
                 str(speech_commands), "--out", str(clf), *TRAIN_FLAGS]) == 0
    assert len(_saved_config(clf)["class_names"]) == 35


def test_train_on_long_recordings_draws_new_crops_each_epoch_and_resumes_exactly(tmp_path, recordings, monkeypatch):
    from mamba_audio.data import LongAudioCrops

    epochs = []
    original = LongAudioCrops.set_epoch
    monkeypatch.setattr(LongAudioCrops, "set_epoch", lambda self, epoch: (epochs.append(epoch), original(self, epoch)))
    # 6 training files, 39000 samples at 8 kHz: 39 crops of 0.125 s an epoch, 4 batches of 8.
    flags = ["--quiet", "train", "--dataset", "youtubemix", "--data", str(recordings), "--mix-to-mono",
             *TRAIN_FLAGS, "--segment-seconds", "0.125", "--batch-size", "8", "--steps", "6", "--save-every", "3"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert main([*flags, "--out", str(whole)]) == 0
    assert epochs == [0, 1]
    assert main([*flags, "--out", str(halves), "--steps", "3"]) == 0  # stops in the middle of epoch 0
    assert main([*flags, "--out", str(halves), "--resume"]) == 0
    assert (whole / "checkpoint" / "model.safetensors").read_bytes() == \
        (halves / "checkpoint" / "model.safetensors").read_bytes()
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" and 0 < r["nll_bits"] < 9 for r in records)  # the test file's tiling


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "youtubemix", "--conditional"], "youtubemix has no labels"),
    (["--dataset", "sc09"], "expected the SC09 (the digits of Speech Commands v0.02) layout"),
])
def test_dataset_errors_exit_2(tmp_path, labelled_folder, capsys, argv, message):
    assert main(["--quiet", "train", "--data", str(labelled_folder), "--out", str(tmp_path / "x"), *argv,
                 *TRAIN_FLAGS]) == 2
    assert message in capsys.readouterr().err


def test_quickstart_the_main_job_end_to_end_at_tiny_size(tmp_path, capsys):
    """`make run`'s command: corpus, training, test NLL, a generated wav and summary.json."""
    out = tmp_path / "quickstart"
    assert main(["--quiet", "quickstart", "--out", str(out), "--steps", "2", "--clips-per-word", "6",
                 "--generate-seconds", "0.01"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["test_nll_bits_per_sample"] < 9
    assert Path(summary["generated_wav"]).is_file() and (out / "lm" / "checkpoint" / "config.json").is_file()
    assert "test NLL:" in capsys.readouterr().out
