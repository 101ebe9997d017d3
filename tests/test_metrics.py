"""FID, IS, mIS and AM on cases with known answers, and `mamba-audio evaluate` end to end."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_audio.cli import main
from mamba_audio.metrics import am_score, frechet_distance, inception_score, modified_inception_score
from mamba_audio.models import ClassifierConfig, SaShiMiClassifier, backbone_preset


def one_hot(classes, k):
    return torch.nn.functional.one_hot(torch.tensor(classes), k).double()


def test_inception_scores_of_confident_predictions():
    balanced = one_hot([0, 1, 2, 3] * 5, 4)
    assert inception_score(balanced) == pytest.approx(4.0)  # the number of classes: the maximum
    assert inception_score(one_hot([2] * 8, 4)) == pytest.approx(1.0)  # one class only
    uniform = torch.full((10, 4), 0.25)
    assert inception_score(uniform) == pytest.approx(1.0)  # no confidence
    # mIS: for confident, balanced predictions the mean pairwise KL is huge (distinct pairs disagree)
    assert modified_inception_score(balanced) > 1e6
    assert modified_inception_score(one_hot([1] * 6, 4)) == pytest.approx(1.0)
    soft = torch.tensor([[0.7, 0.3], [0.3, 0.7]]).double()
    kl = 0.7 * math.log(0.7 / 0.3) + 0.3 * math.log(0.3 / 0.7)
    assert modified_inception_score(soft) == pytest.approx(math.exp(kl / 2))  # two of four pairs differ


def test_am_score_is_zero_for_confident_predictions_with_the_real_balance():
    real = one_hot([0, 1, 2] * 4, 3)
    assert am_score(one_hot([2, 1, 0] * 3, 3), real) == pytest.approx(0.0, abs=1e-9)
    lopsided = am_score(one_hot([0] * 9, 3), real)
    assert lopsided > 1.0
    unsure = am_score(torch.full((9, 3), 1 / 3).double(), real)
    assert unsure == pytest.approx(math.log(3))  # balanced but every prediction uniform: entropy log 3


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert frechet_distance(shifted, a) == pytest.approx(5.0, rel=1e-6)  # |mu diff|^2, same covariance
    scaled = 2 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    # covariances I and 4I in 3 dimensions: tr(I) + tr(4I) - 2 tr((4I)^1/2) = 3 + 12 - 12 = 3
    assert frechet_distance(scaled, a) == pytest.approx(3.0, rel=0.1)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="probability distribution"):
        inception_score(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="classes"):
        am_score(one_hot([0, 1], 2), one_hot([0, 1], 3))


def test_evaluate_command(tmp_path, capsys):
    rate = 4000
    torch.manual_seed(0)
    classifier = SaShiMiClassifier(ClassifierConfig(
        backbone=backbone_preset("tiny", n_layers=1, d_model=16, bidirectional=True),
        sample_rate=rate, num_classes=2, class_names=["low", "high"]))
    classifier.save_pretrained(tmp_path / "clf")
    rng = np.random.default_rng(0)
    t = np.arange(rate // 4) / rate
    for folder, count in (("real/low", 4), ("real/high", 4), ("generated", 5)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            freq = 300 if "low" in folder else 1200 if "high" in folder else rng.uniform(200, 1500)
            sf.write(tmp_path / folder / f"{i}.wav", 0.5 * np.sin(2 * np.pi * freq * t), rate)
    out = tmp_path / "scores.json"
    argv = ["evaluate", str(tmp_path / "clf"), "--generated", str(tmp_path / "generated"),
            "--real", str(tmp_path / "real"), "--seconds", "0.25", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    scores = json.loads(out.read_text())
    assert scores["generated_clips"] == 5 and scores["real_clips"] == 8
    assert scores["fid"] >= 0 and 1 <= scores["is"] <= 2 and scores["mis"] >= 1 and scores["am"] >= 0
    assert main([*argv[:3], str(tmp_path / "missing"), *argv[4:]]) == 2
    assert "missing" in capsys.readouterr().err
