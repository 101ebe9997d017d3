"""SaShiMi-Mamba models: causality, streaming exactness, presets, checkpoints, sampling."""

import contextlib
import json

import pytest
import torch

from mamba_audio.models.sashimi import state_positions, state_tensors
from mamba_audio.models import (
    BackboneConfig,
    CheckpointError,
    ClassifierConfig,
    LMConfig,
    MixerConfig,
    SaShiMiClassifier,
    SaShiMiLM,
    backbone_preset,
    load_pretrained,
    sample_logits,
)


def tiny_lm(seed=0, **backbone_kw) -> SaShiMiLM:
    torch.manual_seed(seed)
    kw = dict(d_model=16, n_layers=1, pool=[4, 4], mixer=MixerConfig(d_state=4)) | backbone_kw
    return SaShiMiLM(LMConfig(backbone=BackboneConfig(**kw))).eval()


BACKBONES = {
    "mamba": {},
    "s4d-outer-mlp": dict(stage_mixers=["s4d", "mamba", "mamba"], mlp_expand=2, norm="rmsnorm"),
    "complex": dict(mixer=MixerConfig(d_state=4, complex=True)),
    "complex-s4d": dict(mixer=MixerConfig(d_state=4, complex=True, kind="s4d")),
    "pool-2-3": dict(pool=[2, 3]),
}


@pytest.mark.parametrize("name", BACKBONES)
def test_causal_changing_the_future_never_changes_the_past(name):
    model = tiny_lm(**BACKBONES[name])
    tokens = torch.randint(0, 256, (2, 45))
    with torch.no_grad():
        base = model(tokens)
        for t in (0, 3, 16, 31, 44):
            changed = tokens.clone()
            changed[:, t + 1:] = torch.randint(0, 256, changed[:, t + 1:].shape)
            out = model(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"output up to {t} changed"
            if t + 1 < tokens.shape[1]:
                assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("length", [37, 50])
def test_stepping_equals_parallel_forward(name, length):
    """Sample-by-sample ``step`` across all rates gives the parallel forward's logits (float32)."""
    model = tiny_lm(**BACKBONES[name])
    tokens = torch.randint(0, 256, (3, length))
    with torch.no_grad():
        parallel = model(tokens)
        state = model.allocate_inference_cache(3)
        stepped = torch.stack([model.step(tokens[:, t], state) for t in range(length)], dim=1)
    assert (stepped - parallel).abs().max().item() < 1e-4


def test_inner_steps_fork_to_a_second_stream_and_join_within_the_step(monkeypatch):
    """What ``OVERLAP_INNER_STEP`` sends to the second CUDA stream, checked on the CPU with a stand-in that records
    instead of switching streams: every block of a pooled stage's inner stages is stepped inside the fork, the
    stage's own up blocks outside it (beside it), the join comes before ``step`` returns, and the results are
    those of the steps in line."""
    from mamba_audio.models import sashimi

    model = tiny_lm()
    stages, stage = {}, model.backbone.stage
    while True:
        stages[id(stage.down_blocks)] = stage.level
        if stage.is_center:
            break
        stages[id(stage.up_blocks)] = stage.level
        stage = stage.inner
    log, depth = [], [0]  # depth: forks entered and not yet left (an inner stage forks again)

    class Recorder:
        def __init__(self, device, level):
            self.level = level

        @contextlib.contextmanager
        def side(self):
            log.append(("fork", self.level, depth[0]))
            depth[0] += 1
            yield
            depth[0] -= 1

        def join(self):
            log.append(("join", self.level, depth[0]))

    step_blocks = sashimi.step_blocks

    def recorded(blocks, states, x, stacks, tag):
        log.append((tag, stages[id(blocks)], depth[0]))
        return step_blocks(blocks, states, x, stacks, tag)

    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        state = model.allocate_inference_cache(2)
        in_line = torch.stack([model.step(tokens[:, t], state) for t in range(40)], dim=1)
        monkeypatch.setattr(sashimi, "step_blocks", recorded)
        monkeypatch.setattr(sashimi, "_overlap", lambda device, level: Recorder(device, level))
        state_forked = model.allocate_inference_cache(2)
        forked = torch.stack([model.step(tokens[:, t], state_forked) for t in range(40)], dim=1)
    assert torch.equal(forked, in_line)
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(state_forked), state_tensors(state)))
    # inside a fork of level l: only deeper stages' blocks; outside every fork: only the outer stage's
    assert all(level == 0 for tag, level, d in log if tag in ("down", "up") and d == 0)
    assert all(level > 0 for tag, level, d in log if tag in ("down", "up") and d > 0)
    forks = [i for i, e in enumerate(log) if e[0] == "fork"]
    assert len(forks) == 40 // 4 + 40 // 16  # every 4th step of the outer stage and of the middle one
    for i in forks:
        _, level, d = log[i]
        join = log.index(("join", level, d), i)
        # between fork and join: the inner stage's blocks, then this stage's up blocks (beside them)
        between = log[i + 1: join]
        assert ("up", level, d) == between[-1] and all(e[1] > level for e in between[:-1])


def test_stepping_follows_parameter_updates():
    """The mixer caches A, D and dt_bias, and in_proj's bias with the layer norm's folded in, for stepping; an
    in-place update of the parameters must reach the step."""
    model = tiny_lm(**BACKBONES["complex"])
    tokens = torch.randint(0, 256, (2, 20))

    def stepped():
        state = model.allocate_inference_cache(2)
        return torch.stack([model.step(tokens[:, t], state) for t in range(tokens.shape[1])], dim=1)

    with torch.no_grad():
        before = stepped()
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "A_imag", ".D", "dt_bias", "in_proj.weight")):
                p.mul_(1.5)
            elif name.endswith("norm.bias"):  # zero at initialisation
                p.add_(torch.randn_like(p))
        after, parallel = stepped(), model(tokens)
    assert not torch.allclose(after, before)
    assert (after - parallel).abs().max() < 1e-4


def test_block_step_tensors_fold_the_layer_norm_bias_where_the_kernels_advise():
    """Blocks whose Triton step holds every channel in one tile (the SC09 outer blocks, 64 x 128) pass the layer
    norm's bias inside in_proj's; the wider ones (split and tiled steps) pass it as it is."""
    from mamba_audio.kernels import block_step_folds_norm_bias
    from mamba_audio.models.blocks import ResidualBlock

    assert block_step_folds_norm_bias(64, 128)
    assert not block_step_folds_norm_bias(128, 256) and not block_step_folds_norm_bias(256, 512)
    torch.manual_seed(0)
    for hidden, folded in ((64, True), (128, False)):
        block = ResidualBlock(hidden, MixerConfig(d_state=4), BackboneConfig(d_model=hidden)).eval()
        with torch.no_grad():
            block.norm.bias.normal_()
            tensors = block.mixer.block_step_tensors(block.norm, block.mixer.allocate_inference_cache(1))
        if folded:
            assert tensors["norm_bias"] is None
            expected = block.mixer.in_proj.weight @ block.norm.bias
            assert torch.allclose(tensors["in_proj_bias"], expected, atol=1e-6)
        else:
            assert tensors["norm_bias"] is block.norm.bias and tensors["in_proj_bias"] is block.mixer.in_proj.bias


def assert_states_close(a, b, tol=1e-4):
    assert state_positions(a) == state_positions(b)
    ta, tb = state_tensors(a), state_tensors(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert (x - y).abs().max().item() < tol


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("prompt_length", [1, 7, 23, 38])
def test_prefill_then_step_equals_stepping_the_prompt(name, prompt_length):
    """The parallel prefill leaves every state (SSM, conv, pooling buffers, positions) as stepping would."""
    model = tiny_lm(**BACKBONES[name])
    tokens = torch.randint(0, 256, (2, prompt_length + 6))
    with torch.no_grad():
        stepped_state = model.allocate_inference_cache(2)
        stepped = torch.stack([model.step(tokens[:, t], stepped_state) for t in range(tokens.shape[1])], dim=1)
        state = model.allocate_inference_cache(2)
        prefilled = model.prefill(tokens[:, :prompt_length], state)
        assert (prefilled - stepped[:, :prompt_length]).abs().max() < 1e-4
        snapshot = model.allocate_inference_cache(2)
        for t in range(prompt_length):
            model.step(tokens[:, t], snapshot)
        assert_states_close(state, snapshot)
        after = torch.stack([model.step(tokens[:, t], state) for t in range(prompt_length, tokens.shape[1])], dim=1)
    assert (after - stepped[:, prompt_length:]).abs().max() < 1e-4


@pytest.mark.parametrize("pieces", [(3, 10, 5), (0, 4, 13), (6, 1, 1, 9)])
def test_prefill_continues_from_any_state(pieces):
    """Step, prefill, step, prefill...: pieces alternate between stepping and prefilling, mid-group included."""
    model = tiny_lm(**BACKBONES["pool-2-3"])
    total = sum(pieces)
    tokens = torch.randint(0, 256, (2, total))
    with torch.no_grad():
        reference = model(tokens)
        state = model.allocate_inference_cache(2)
        outputs, start = [], 0
        for i, length in enumerate(pieces):
            piece = tokens[:, start: start + length]
            if i % 2 == 0:
                outputs += [model.step(piece[:, t], state)[:, None] for t in range(length)]
            else:
                outputs.append(model.prefill(piece, state))
            start += length
        assert state_positions(state) == [total, total // 2, total // 6]
    assert (torch.cat(outputs, dim=1) - reference).abs().max() < 1e-4


def test_class_conditional_stepping_and_label_errors():
    torch.manual_seed(0)
    model = SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", d_model=16, n_layers=1), num_classes=3,
                               class_names=["a", "b", "c"])).eval()
    tokens, labels = torch.randint(0, 256, (2, 20)), torch.tensor([0, 2])
    with torch.no_grad():
        parallel = model(tokens, labels)
        state = model.allocate_inference_cache(2)
        stepped = torch.stack([model.step(tokens[:, t], state, labels) for t in range(20)], dim=1)
    assert (stepped - parallel).abs().max() < 1e-4
    with pytest.raises(ValueError, match="class-conditional"):
        model(tokens)
    with pytest.raises(ValueError, match=r"labels must be"):
        model(tokens, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_lm()(tokens, labels)


@pytest.mark.parametrize("preset,paper_millions", [("sc09-6m", 6.1), ("sc09-24m", 24.3)])
def test_paper_presets_match_parameter_counts(preset, paper_millions):
    model = SaShiMiLM(LMConfig(backbone=backbone_preset(preset)))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - paper_millions) / paper_millions < 0.03, count


def test_nll_is_bits_per_sample_and_loss_falls():
    model = tiny_lm().train()
    tokens = torch.randint(100, 156, (4, 64))
    first = model.nll_bits(tokens)
    assert 6.0 < first.item() < 10.0  # near log2(256) = 8 bits at initialisation
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss = model.nll_bits(tokens)
        loss.backward()
        opt.step()
    assert loss.item() < first.item() - 1.0


def test_generation_is_seeded_and_continues_prompts():
    model = tiny_lm()
    a = model.generate(30, batch_size=2, seed=3)
    assert a.shape == (2, 30) and a.dtype == torch.long
    assert torch.equal(a, model.generate(30, batch_size=2, seed=3))
    assert not torch.equal(a, model.generate(30, batch_size=2, seed=4))
    prompt = torch.randint(0, 256, (2, 13))
    greedy = model.generate(1, prompt=prompt, temperature=0)
    with torch.no_grad():
        expected = model(torch.cat([model.shift(prompt), prompt[:, -1:]], 1))[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 0], expected)
    with pytest.raises(ValueError, match="prompt must be"):
        model.generate(3, prompt=torch.zeros(5, dtype=torch.long))


def test_sampling_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).repeat(500, 1)
    assert set(sample_logits(logits, top_k=2, generator=g).tolist()) <= {0, 1}
    probs = logits[0].softmax(-1)  # top two hold > 0.9 of the mass
    assert set(sample_logits(logits, top_p=float(probs[:2].sum()) - 1e-3, generator=g).tolist()) <= {0, 1}
    assert set(sample_logits(logits, temperature=0).tolist()) == {0}
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(logits, top_p=1.5)


def test_classifier_is_bidirectional_and_masks_padding():
    torch.manual_seed(0)
    config = ClassifierConfig(backbone=backbone_preset("tiny", d_model=16, n_layers=1, bidirectional=True),
                              num_classes=4)
    model = SaShiMiClassifier(config).eval()
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (2, 4)
        changed = tokens.clone()
        changed[:, -1] = (changed[:, -1] + 7) % 256
        assert not torch.allclose(model(changed), logits)  # the last sample matters: it sees everything
        # padding beyond a clip's length must not change its prediction... only through pooling weights
        padded = torch.cat([tokens, torch.zeros(2, 8, dtype=torch.long)], 1)
        lengths = torch.tensor([40, 40])
        assert model(padded, lengths).shape == (2, 4)
    with pytest.raises(RuntimeError, match="bidirectional"):
        model.backbone.allocate_inference_cache(1)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_lm(**BACKBONES["s4d-outer-mlp"])
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    loaded = SaShiMiLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    tokens = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tokens), model(tokens))
    assert isinstance(load_pretrained(tmp_path / "ckpt"), SaShiMiLM)


def test_mismatched_and_broken_checkpoints_get_clear_errors(tmp_path):
    model = tiny_lm()
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((ckpt / "config.json").read_text())

    def write_config(mutate):
        data = json.loads(json.dumps(meta))
        mutate(data)
        (ckpt / "config.json").write_text(json.dumps(data))

    write_config(lambda d: d["config"]["backbone"].update(d_model=24))
    with pytest.raises(CheckpointError, match="shape mismatch: .*checkpoint .* vs config"):
        SaShiMiLM.from_pretrained(ckpt)
    write_config(lambda d: d["config"]["backbone"].update(n_layers=2))
    with pytest.raises(CheckpointError, match="missing: "):
        SaShiMiLM.from_pretrained(ckpt)
    write_config(lambda d: d["config"].update(colour="blue"))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['colour'\]"):
        SaShiMiLM.from_pretrained(ckpt)
    write_config(lambda d: d.update(model_type="sashimi_classifier"))
    with pytest.raises(CheckpointError, match="holds a 'sashimi_classifier' model"):
        SaShiMiLM.from_pretrained(ckpt)
    write_config(lambda d: None)
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        SaShiMiLM.from_pretrained(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SaShiMiLM.from_pretrained(ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        SaShiMiLM.from_pretrained(tmp_path / "nowhere")


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="mixer kind"):
        MixerConfig(kind="lstm")
    with pytest.raises(ValueError, match="stage_mixers needs one kind per stage"):
        BackboneConfig(stage_mixers=["s4d"])
    with pytest.raises(ValueError, match="causal backbone"):
        LMConfig(backbone=BackboneConfig(bidirectional=True))
    with pytest.raises(ValueError, match="unknown preset"):
        backbone_preset("huge")
