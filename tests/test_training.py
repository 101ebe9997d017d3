"""The training loop: exact resume, gradient accumulation, EMA, logs, classification metrics, torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from mamba_audio.models import ClassifierConfig, LMConfig, SaShiMiClassifier, SaShiMiLM, backbone_preset
from mamba_audio.training import (
    ClassificationTask,
    LMTask,
    ResumableSampler,
    ResumeError,
    TrainConfig,
    Trainer,
    cosine_schedule,
)


class TokenClips(Dataset):
    """Random token clips with labels; with ``generator``, a random crop of each, like AudioFolder's."""

    def __init__(self, count=24, length=48, crop=None, generator=None, classes=2):
        g = torch.Generator().manual_seed(1)
        self.tokens = torch.randint(0, 256, (count, length), generator=g)
        self.labels = torch.arange(count) % classes
        self.crop, self.generator = crop, generator

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        tokens = self.tokens[i]
        if self.crop is not None:
            start = int(torch.randint(0, len(tokens) - self.crop + 1, (1,), generator=self.generator))
            tokens = tokens[start:start + self.crop]
        return {"tokens": tokens, "label": self.labels[i]}


def tiny_lm():
    torch.manual_seed(0)
    return SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", n_layers=1, d_model=16)))


def config(**overrides):
    base = dict(steps=6, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=3, save_every=3, log_every=1,
                device="cpu", tensorboard=False)
    return TrainConfig(**{**base, **overrides})


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class Preempted(Exception):
    pass


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run killed right after its step-3 checkpoint and resumed ends bitwise where an uninterrupted
    run ends (data order, random crops, optimizer, schedule and EMA all restored)."""
    options = dict(grad_accum_steps=2, ema_decay=0.9)
    data = lambda: TokenClips(crop=32, generator=torch.Generator())  # noqa: E731

    whole = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "whole", progress=False)
    whole.fit(data(), TokenClips(count=8))

    first = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "split", progress=False)
    save = first.save

    def save_then_die():
        save()
        raise Preempted

    monkeypatch.setattr(first, "save", save_then_die)
    with pytest.raises(Preempted):
        first.fit(data(), TokenClips(count=8))
    assert first.step == 3
    second = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "split", progress=False)
    second.fit(data(), TokenClips(count=8), resume=True)

    assert second.step == 6
    for key, value in weights(whole.model).items():
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for key in whole.ema:
        torch.testing.assert_close(second.ema[key], whole.ema[key], rtol=0, atol=0)
    # the inference checkpoint holds the EMA weights, not the raw ones
    saved = SaShiMiLM.from_pretrained(tmp_path / "whole" / "checkpoint")
    torch.testing.assert_close(saved.head.weight, whole.ema["head.weight"])
    assert not torch.equal(saved.head.weight, whole.model.head.weight)


def test_pause_after_minutes_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """stop_after_minutes pauses a call (state saved, no evaluation, the schedule not shortened); a resumed
    call finishes the run bitwise as one uninterrupted call does."""
    options = dict(ema_decay=0.9, eval_every=100)
    data = lambda: TokenClips(crop=32, generator=torch.Generator())  # noqa: E731
    whole = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "whole", progress=False)
    whole.fit(data(), TokenClips(count=8))
    assert not whole.paused

    first = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "split", progress=False)
    assert first.fit(data(), TokenClips(count=8), stop_after_minutes=1e-9) == {}  # past it after one step
    assert first.paused and first.step == 1
    assert json.loads((tmp_path / "split" / "trainer_state" / "state.json").read_text())["step"] == 1
    logged = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in logged] == ["train"]  # no evaluation at a pause
    assert first.scheduler.get_last_lr()[0] == whole.config.lr * cosine_schedule(1, whole.config)

    second = Trainer(tiny_lm(), LMTask(), config(**options), tmp_path / "split", progress=False)
    second.fit(data(), TokenClips(count=8), resume=True, stop_after_minutes=60)
    assert second.step == 6 and not second.paused
    for key, value in weights(whole.model).items():
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for key in whole.ema:
        torch.testing.assert_close(second.ema[key], whole.ema[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="stop_after_minutes"):
        second.fit(data(), stop_after_minutes=0)


def test_ema_update_moves_every_float_tensor_by_one_minus_decay_and_copies_the_rest(tmp_path):
    trainer = Trainer(tiny_lm(), LMTask(), config(ema_decay=0.75), tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.ema.items()}
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(torch.randn_like(param))
    trainer._update_ema()
    for key, value in trainer.model.state_dict().items():
        expected = before[key] + 0.25 * (value.float() - before[key]) if value.is_floating_point() else value
        torch.testing.assert_close(trainer.ema[key], expected.to(trainer.ema[key].dtype), msg=key)


def test_resume_refuses_other_settings(tmp_path):
    Trainer(tiny_lm(), LMTask(), config(steps=3), tmp_path, progress=False).fit(TokenClips())
    trainer = Trainer(tiny_lm(), LMTask(), config(batch_size=2), tmp_path, progress=False)
    with pytest.raises(ResumeError, match="batch_size=4, now 2"):
        trainer.fit(TokenClips(), resume=True)


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    """Two micro-batches of 2 give the optimizer the gradient of one batch of 4 (the same clips)."""

    def first_gradient(out, **options):
        trainer = Trainer(tiny_lm(), LMTask(), config(steps=1, grad_clip=0, **options), tmp_path / out,
                          progress=False)
        seen, step = [], trainer.optimizer.step
        trainer.optimizer.step = lambda: (seen.extend(p.grad.clone() for p in trainer.model.parameters()), step())
        trainer.fit(TokenClips())
        return seen

    big = first_gradient("a", batch_size=4)
    accumulated = first_gradient("b", batch_size=2, grad_accum_steps=2)
    assert len(big) == len(accumulated) > 0
    for a, b in zip(accumulated, big):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_logs_and_tensorboard(tmp_path):
    Trainer(tiny_lm(), LMTask(), config(tensorboard=True), tmp_path, progress=False).fit(TokenClips(), TokenClips(8))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and 0 < evals[-1]["nll_bits"] < 9
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "trainer_state" / "state.json").is_file()


def test_classifier_metrics_include_a_confusion_matrix(tmp_path):
    torch.manual_seed(0)
    model = SaShiMiClassifier(ClassifierConfig(backbone=backbone_preset("tiny", n_layers=1, d_model=16,
                                                                        bidirectional=True), num_classes=3))
    metrics = Trainer(model, ClassificationTask(), config(steps=2), tmp_path, progress=False).fit(
        TokenClips(classes=3), TokenClips(count=9, classes=3))
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 9
    assert confusion.sum(1).tolist() == [3, 3, 3]  # rows are the true classes
    assert metrics["accuracy"] == pytest.approx(float(confusion.diag().sum()) / 9)


def test_sampler_shards_cover_the_epoch_once_and_resume_mid_epoch():
    shards = [list(ResumableSampler(10, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    sampler = ResumableSampler(10, shuffle=True, seed=3)
    full = list(sampler)
    sampler.skip = 4
    assert list(sampler) == full[4:] and list(sampler) == full  # the skip applies once
    sampler.set_epoch(1)
    assert list(sampler) != full and sorted(sampler) == list(range(10))


def test_torchrun_two_processes_match_one_with_the_whole_batch(tmp_path):
    """DDP on CPU (gloo): 2 processes with batch 2 each take the same steps as 1 process with batch 4."""
    script = tmp_path / "train.py"
    script.write_text(f"""
import json, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_training import TokenClips, tiny_lm, config
from mamba_audio.training import LMTask, Trainer
trainer = Trainer(tiny_lm(), LMTask(), config(steps=3, batch_size=int(sys.argv[2])), sys.argv[1], progress=False)
metrics = trainer.fit(TokenClips(), TokenClips(count=8))
if trainer.is_main:
    torch.save(trainer.model.state_dict(), sys.argv[1] + "/final.pt")
    losses = [r["nll_bits"] for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl")) if r["split"] == "train"]
    print("losses", *losses)
    print("eval", metrics["nll_bits"], "world", trainer.world_size)
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, str(script), str(tmp_path / "two"), "2"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "4"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "world 2" in two.stdout and "world 1" in one.stdout
    a, b = torch.load(tmp_path / "two" / "final.pt"), torch.load(tmp_path / "one" / "final.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    eval_two = float(two.stdout.split("eval ")[1].split()[0])
    eval_one = float(one.stdout.split("eval ")[1].split()[0])
    assert eval_two == pytest.approx(eval_one, rel=1e-4)  # the eval shards add up to the whole split
    losses_two = [float(x) for x in two.stdout.split("losses ")[1].split("\n")[0].split()]
    losses_one = [float(x) for x in one.stdout.split("losses ")[1].split("\n")[0].split()]
    assert losses_two == pytest.approx(losses_one, rel=1e-4)  # logged: the mean over both processes' batches


def test_time_limit_stops_with_the_schedule_decayed(tmp_path, monkeypatch):
    """max_minutes: each optimizer step takes 10 s of a fake clock, so a 30 s limit stops after step 3,
    evaluated and saved, with the learning rate following the elapsed share of the time."""
    clock = [1000.0]
    monkeypatch.setattr("mamba_audio.training.time.time", lambda: clock[0])
    cfg = config(steps=100, warmup_steps=1, eval_every=50, save_every=50, max_minutes=0.5)
    trainer = Trainer(tiny_lm(), LMTask(), cfg, tmp_path, progress=False)
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (clock.__setitem__(0, clock[0] + 10.0), step())
    trainer.fit(TokenClips(), TokenClips(8))

    assert trainer.step == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    # after step s the schedule stands at step 100 * s / 3 (time), far beyond s (steps)
    assert train[0]["lr"] == pytest.approx(cfg.lr * cosine_schedule(33, cfg))
    assert train[1]["lr"] == pytest.approx(cfg.lr * cosine_schedule(66, cfg))
    assert [r["step"] for r in records if r["split"] == "eval"] == [3]
    state = json.loads((tmp_path / "trainer_state" / "state.json").read_text())
    assert state["step"] == 3 and state["train_seconds"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        config(max_minutes=0)


def test_time_limit_keeps_the_warmup_in_steps(tmp_path, monkeypatch):
    """However fast the clock runs, the first warmup_steps steps ramp the rate up linearly."""
    clock = [0.0]
    monkeypatch.setattr("mamba_audio.training.time.time", lambda: clock[0])
    cfg = config(steps=1000, warmup_steps=4, eval_every=50, save_every=50, max_minutes=1.0)
    trainer = Trainer(tiny_lm(), LMTask(), cfg, tmp_path, progress=False)
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (clock.__setitem__(0, clock[0] + 10.0), step())
    trainer.fit(TokenClips())
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in train if r["split"] == "train"]
    assert lrs[:3] == pytest.approx([cfg.lr * (s + 1) / 4 for s in (1, 2, 3)])  # the warmup, by steps
    assert lrs[3] == pytest.approx(cfg.lr * cosine_schedule(666, cfg))  # then the clock: 40 s of 60
    assert trainer.step == 6
