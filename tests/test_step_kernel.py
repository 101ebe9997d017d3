"""The fused Mamba step: the Triton kernel against the PyTorch reference, the reference against the scan oracle.

On the CPU the kernel runs through Triton's interpreter, so shapes are small; odd
channel counts with an 8-channel tile cover several tiles and a ragged last one.
Outputs, the conv state and the SSM state are compared after three consecutive
steps (so the conv window has shifted), by the relative error of the whole tensor.
"""

from __future__ import annotations

import functools
import importlib
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

from mamba_audio.kernels import BlockStack, mamba_block_step, mamba_blocks_step, mamba_step, step_backends  # noqa: E402
from mamba_audio.kernels.selective_scan import selective_scan_ref  # noqa: E402
from conftest import run_compiled  # noqa: E402
from mamba_audio.kernels.selective_scan.step_ref import (  # noqa: E402
    mamba_block_step_ref, mamba_blocks_step_ref, mamba_step_ref)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # y is rounded to the input dtype
STEPS = 3


def triton_step_module():
    triton_step = importlib.import_module("mamba_audio.kernels.selective_scan.triton_step")
    if not torch.cuda.is_available():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(triton_step._mamba_step_kernel, InterpretedFunction):
            # imported earlier in this process without the interpreter: define the kernel again
            os.environ["TRITON_INTERPRET"] = "1"
            triton_step = importlib.reload(triton_step)
    return triton_step


def make_step_inputs(batch, dim, n_state=5, width=4, rank=3, dtype=torch.float32, *, selective=True, has_D=True,
                     has_z=True, has_bias=True, steps=STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    inputs = dict(
        xs=[rand(batch, dim) for _ in range(steps)],
        zs=[rand(batch, dim) if has_z else None for _ in range(steps)],
        conv_state=rand(batch, dim, width),
        ssm_state=rand(batch, dim, n_state, dt=torch.float32),
        conv_weight=rand(dim, width, scale=0.5),
        conv_bias=rand(dim, dt=torch.float32) if has_bias else None,
        A=(-0.1 - 2 * torch.rand(dim, n_state, generator=g)).to(DEVICE),
        D=rand(dim, dt=torch.float32) if has_D else None,
        dt_bias=rand(dim, scale=0.5, dt=torch.float32) - 2 if has_bias else None,
    )
    if selective:
        inputs.update(x_proj_weight=rand(rank + 2 * n_state, dim, scale=dim**-0.5),
                      dt_proj_weight=rand(dim, rank, scale=rank**-0.5))
    else:
        inputs.update(B=rand(dim, n_state, dt=torch.float32), C=rand(dim, n_state, dt=torch.float32))
    return inputs


def run_steps(fn, inputs, **kw):
    """Step ``fn`` through the inputs' time steps on copies of the states; (y (B, E, steps), conv, ssm)."""
    conv, ssm = inputs["conv_state"].clone(), inputs["ssm_state"].clone()
    params = {k: v for k, v in inputs.items() if k not in ("xs", "zs", "conv_state", "ssm_state")}
    ys = [fn(x, z, conv, ssm, **params, **kw) for x, z in zip(inputs["xs"], inputs["zs"])]
    return torch.stack(ys, dim=-1), conv, ssm


def rel_err(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)).item()


CASES = [
    pytest.param(dict(batch=1, dim=7), id="B1-E7"),
    pytest.param(dict(batch=3, dim=19), id="B3-E19"),
    pytest.param(dict(batch=5, dim=37, n_state=16, rank=4), id="B5-E37-N16"),
    pytest.param(dict(batch=2, dim=9, width=3, rank=1), id="B2-E9-W3-R1"),
    pytest.param(dict(batch=2, dim=11, has_D=False, has_z=False, has_bias=False), id="no-D-z-bias"),
    pytest.param(dict(batch=3, dim=13, selective=False), id="time-invariant"),
    pytest.param(dict(batch=2, dim=10, selective=False, has_D=False, has_z=False, has_bias=False),
                 id="time-invariant-bare"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_triton_step_matches_reference(case, dtype):
    triton_step = triton_step_module()
    inputs = make_step_inputs(**case, dtype=dtype)
    y_ref, conv_ref, ssm_ref = run_steps(mamba_step_ref, inputs)
    y, conv, ssm = run_steps(triton_step.mamba_step_triton, inputs, block_e=8)
    assert y.dtype == dtype and conv.dtype == dtype and ssm.dtype == torch.float32
    assert torch.equal(conv, conv_ref)  # a shift of stored values: exact
    assert rel_err(ssm, ssm_ref) < 2e-5
    assert rel_err(y, y_ref) < TOL[dtype]


def test_dispatch_registers_the_triton_step():
    assert step_backends() == ["auto", "reference", "triton"]
    inputs = make_step_inputs(2, 6)
    y_ref, _, ssm_ref = run_steps(mamba_step_ref, inputs)
    y, _, ssm = run_steps(mamba_step, inputs, backend="triton")
    assert rel_err(y, y_ref) < 2e-5 and rel_err(ssm, ssm_ref) < 2e-5
    with pytest.raises(ValueError, match="unknown backend"):
        run_steps(mamba_step, inputs, backend="cuda-magic")


def test_triton_step_rejects_complex_A_and_bad_shapes():
    triton_step = triton_step_module()
    inputs = make_step_inputs(2, 6)
    complex_inputs = dict(inputs, A=torch.complex(inputs["A"], inputs["A"]),
                          ssm_state=inputs["ssm_state"].to(torch.complex64),
                          x_proj_weight=torch.randn(3 + 4 * 5, 6))
    with pytest.raises(ValueError, match="complex A"):
        run_steps(triton_step.mamba_step_triton, complex_inputs)
    with pytest.raises(ValueError, match="conv_state must be"):
        run_steps(triton_step.mamba_step_triton, dict(inputs, conv_state=inputs["conv_state"][:, :, :3]))
    with pytest.raises(ValueError, match="x_proj_weight must be"):
        run_steps(mamba_step_ref, dict(inputs, x_proj_weight=inputs["x_proj_weight"][1:]))
    with pytest.raises(ValueError, match="either x_proj_weight"):
        run_steps(mamba_step_ref, dict(inputs, B=torch.zeros(6, 5), C=torch.zeros(6, 5)))
    with pytest.raises(ValueError, match="ssm_state must be float32"):
        run_steps(mamba_step_ref, dict(inputs, ssm_state=inputs["ssm_state"].half()))


def make_block_inputs(batch, hidden, dim, *, rms_norm=False, norm_bias=None, proj_bias=True, dtype=torch.float32,
                      seed=1, **kw):
    """A residual stream x per step plus the block's norm and projections around ``make_step_inputs``; the layer
    norm has a bias unless ``norm_bias`` is False (an RMS norm never has one)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    inputs = make_step_inputs(batch, dim, dtype=dtype, seed=seed, **kw)
    inputs.pop("zs")
    inputs["xs"] = [rand(batch, hidden) for _ in range(STEPS)]
    with_bias = not rms_norm and norm_bias is not False
    inputs.update(norm_weight=1 + rand(hidden, scale=0.1), norm_bias=rand(hidden, scale=0.1) if with_bias else None,
                  norm_eps=1e-5, rms_norm=rms_norm,
                  in_proj_weight=rand(2 * dim, hidden, scale=hidden**-0.5),
                  in_proj_bias=rand(2 * dim, scale=0.1) if proj_bias else None,
                  out_proj_weight=rand(hidden, dim, scale=dim**-0.5),
                  out_proj_bias=rand(hidden, scale=0.1) if proj_bias else None)
    return inputs


def run_block_steps(fn, inputs, **kw):
    conv, ssm = inputs["conv_state"].clone(), inputs["ssm_state"].clone()
    params = {k: v for k, v in inputs.items() if k not in ("xs", "conv_state", "ssm_state")}
    outs = [fn(x, conv_state=conv, ssm_state=ssm, **params, **kw) for x in inputs["xs"]]
    return torch.stack(outs, dim=-1), conv, ssm


BLOCK_CASES = [
    pytest.param(dict(batch=1, hidden=12, dim=23), id="B1-H12-E23-layernorm"),
    pytest.param(dict(batch=3, hidden=20, dim=40, rms_norm=True, proj_bias=False), id="B3-H20-E40-rmsnorm"),
    # the models' blocks: a layer norm's bias is folded into in_proj's (MambaMixer.block_step_tensors)
    pytest.param(dict(batch=2, hidden=12, dim=23, norm_bias=False), id="B2-H12-E23-layernorm-no-bias"),
    pytest.param(dict(batch=2, hidden=9, dim=17, n_state=16, rank=2, has_z=False), id="B2-H9-E17-N16"),
    pytest.param(dict(batch=2, hidden=16, dim=32, selective=False, has_D=False, has_bias=False),
                 id="time-invariant-bare"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("block_e,split", [(8, False), (64, False), (8, True), (16, True)],
                         ids=["tiles-of-8", "one-tile", "split-slices-of-8", "split-slices-of-16"])
def test_triton_block_step_matches_reference(case, dtype, block_e, split):
    """Every path of the block step: one program per stream in two passes over tiles of 8 channels or in one
    pass over a tile of all; and split, a program per slice of 8 or 16 channels (the last one partial where
    they do not divide the channels) in three launches."""
    triton_step = triton_step_module()
    inputs = make_block_inputs(**case, dtype=dtype)
    out_ref, conv_ref, ssm_ref = run_block_steps(mamba_block_step_ref, inputs)
    out, conv, ssm = run_block_steps(triton_step.mamba_block_step_triton, inputs, block_e=block_e, split=split)
    assert out.dtype == dtype and conv.dtype == dtype
    # the SSM input is rounded to the conv state's dtype: a last-bit difference there is one ulp of it
    assert rel_err(conv, conv_ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert rel_err(ssm, ssm_ref) < (2e-5 if dtype == torch.float32 else 1e-2)
    assert rel_err(out, out_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", BLOCK_CASES + [
    pytest.param(dict(batch=20, hidden=24, dim=40, n_state=16), id="B20-H24-E40-two-tiles-of-streams")])
@pytest.mark.parametrize("block_e", [16, 32], ids=["slices-of-16", "slices-of-32"])
def test_triton_block_step_tiles_of_streams(case, dtype, block_e):
    """The split step with 16 streams a program (matrix products; rows past the batch masked, as are channels
    past the last slice and every side padded to 16) against the reference."""
    triton_step = triton_step_module()
    inputs = make_block_inputs(**case, dtype=dtype)
    out_ref, conv_ref, ssm_ref = run_block_steps(mamba_block_step_ref, inputs)
    out, conv, ssm = run_block_steps(triton_step.mamba_block_step_triton, inputs, block_e=block_e, split=True,
                                     block_m=16)
    assert out.dtype == dtype and conv.dtype == dtype
    assert rel_err(conv, conv_ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert rel_err(ssm, ssm_ref) < (2e-5 if dtype == torch.float32 else 1e-2)
    assert rel_err(out, out_ref) < TOL[dtype]


def test_block_step_config_tiles_of_streams_only_when_switched_on(monkeypatch):
    triton_step = triton_step_module()
    for hidden, dim in ((64, 128), (128, 256), (256, 512)):
        assert triton_step.block_step_config(hidden, dim, 256)[2:] == (False, 1)  # a program per stream
        with monkeypatch.context() as patch:
            patch.setattr(triton_step, "STREAM_TILES", True)
            assert triton_step.block_step_config(hidden, dim, 256) == (32, 4, True, 16)
            assert triton_step.block_step_config(hidden, dim, 16)[3] == 1  # a few streams: never tiles
    assert triton_step.block_step_config(64, 128, 1)[2:] == (False, 1)
    inputs = make_block_inputs(2, 16, 32)
    with pytest.raises(ValueError, match="block_m"):
        run_block_steps(triton_step.mamba_block_step_triton, inputs, split=True, block_m=8)
    with pytest.raises(ValueError, match="block_e must be at least 16"):
        run_block_steps(triton_step.mamba_block_step_triton, inputs, split=True, block_m=16, block_e=8)
    with pytest.raises(ValueError, match="setting of the split step"):
        run_block_steps(triton_step.mamba_block_step_triton, inputs, split=False, block_m=16)
    # block_m alone asks for the split step
    out, _, _ = run_block_steps(triton_step.mamba_block_step_triton, inputs, block_m=16)
    assert rel_err(out, run_block_steps(mamba_block_step_ref, inputs)[0]) < TOL[torch.float32]


def test_reference_block_step_is_norm_step_and_residual():
    """The block reference against its parts: a LayerNorm module, the projections, the fused step reference."""
    inputs = make_block_inputs(2, 12, 23)
    out, conv, ssm = run_block_steps(mamba_block_step_ref, inputs)
    norm = torch.nn.LayerNorm(12).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(inputs["norm_weight"])
        norm.bias.copy_(inputs["norm_bias"])
    conv2, ssm2 = inputs["conv_state"].clone(), inputs["ssm_state"].clone()
    step_params = {k: inputs[k] for k in ("conv_weight", "conv_bias", "A", "D", "dt_bias", "x_proj_weight",
                                          "dt_proj_weight")}
    for t, x in enumerate(inputs["xs"]):
        u, z = torch.nn.functional.linear(norm(x), inputs["in_proj_weight"], inputs["in_proj_bias"]).chunk(2, -1)
        y = mamba_step_ref(u, z, conv2, ssm2, **step_params)
        expected = x + torch.nn.functional.linear(y, inputs["out_proj_weight"], inputs["out_proj_bias"])
        assert rel_err(out[..., t], expected) < 1e-6
    assert rel_err(ssm, ssm2) < 1e-6 and torch.equal(conv, conv2)


@pytest.mark.parametrize("selective", [True, False], ids=["selective", "time-invariant"])
def test_reference_step_equals_the_scan_oracle(selective):
    """Stepping the fused reference from zero states reproduces conv1d + selective_scan_ref over a sequence."""
    batch, dim, n_state, width, rank, length = 2, 6, 4, 4, 2, 9
    inputs = make_step_inputs(batch, dim, n_state, width, rank, selective=selective, steps=length)
    inputs["conv_state"].zero_()
    inputs["ssm_state"].zero_()
    y_step, _, ssm_step = run_steps(mamba_step_ref, inputs)

    x, z = torch.stack(inputs["xs"], -1), torch.stack(inputs["zs"], -1)  # (B, E, L)
    conv = F.conv1d(x, inputs["conv_weight"][:, None], inputs["conv_bias"], padding=width - 1, groups=dim)
    xc = F.silu(conv[..., :length])
    if selective:
        dt_low, B, C = torch.split(torch.einsum("rd,bdl->brl", inputs["x_proj_weight"], xc),
                                   [rank, n_state, n_state], dim=1)
        delta = torch.einsum("dr,brl->bdl", inputs["dt_proj_weight"], dt_low)
    else:
        delta, B, C = torch.zeros_like(xc), inputs["B"], inputs["C"]
    y_scan, ssm_scan = selective_scan_ref(xc, delta, inputs["A"], B, C, inputs["D"], z, inputs["dt_bias"],
                                          delta_softplus=True, return_final_state=True)
    assert rel_err(y_step, y_scan) < 1e-5
    assert rel_err(ssm_step, ssm_scan) < 1e-5


@pytest.mark.parametrize("stacked", [False, True], ids=["block-by-block", "stacked"])
@pytest.mark.parametrize("stage_mixers", [None, ["s4d", "mamba"]], ids=["mamba", "s4d-outer"])
def test_model_steps_through_the_triton_kernel(monkeypatch, stage_mixers, stacked):
    """A SaShiMi LM stepped with the fused block step on the Triton backend gives the parallel forward, with
    each stage's blocks stepped one launch each or (``stacked``) all in one ``mamba_blocks_step``."""
    from mamba_audio.models import BackboneConfig, LMConfig, MixerConfig, SaShiMiLM
    from mamba_audio.models import blocks as blocks_module
    from mamba_audio.models import mixer as mixer_module

    triton_step_module()
    monkeypatch.setattr(mixer_module, "mamba_step", functools.partial(mamba_step, backend="triton"))
    monkeypatch.setattr(mixer_module, "mamba_block_step", functools.partial(mamba_block_step, backend="triton"))
    monkeypatch.setattr(blocks_module, "mamba_blocks_step", functools.partial(mamba_blocks_step, backend="triton"))
    monkeypatch.setattr(blocks_module, "STACKED_STEP", stacked)
    torch.manual_seed(0)
    backbone = BackboneConfig(d_model=8, n_layers=2, pool=[2], mixer=MixerConfig(d_state=4),
                              stage_mixers=stage_mixers, norm="rmsnorm" if stage_mixers else "layernorm")
    model = SaShiMiLM(LMConfig(backbone=backbone)).eval().to(DEVICE)
    tokens = torch.randint(0, 256, (2, 6), device=DEVICE)
    with torch.no_grad():
        parallel = model(tokens)
        state = model.allocate_inference_cache(2)
        stepped = torch.stack([model.step(tokens[:, t], state) for t in range(tokens.shape[1])], dim=1)
    assert (stepped - parallel).abs().max().item() < 1e-4
    assert sorted(state.stacks) == (["down", "up"] if stacked else [])
    assert sorted(state.inner.stacks) == (["down"] if stacked else [])


COMPILE_FOR_SM90 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba_audio.kernels.selective_scan import triton_step

kernel_name, act, selective, flags = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
# optional: the stack's offset multiple, and "1" to specialise pointers and sizes as divisible by 16 (as a launch
# of the SC09 shapes is), which is what lets Triton emit 128-bit loads
multiple, divisible = (int(sys.argv[5]), sys.argv[6] == "1") if len(sys.argv) > 5 else (16, False)
fn = getattr(triton_step, kernel_name)
in_act_dtype = {"x_ptr", "z_ptr", "y_ptr", "out_ptr", "conv_ptr", "convw_ptr", "xproj_ptr", "dtproj_ptr", "win_ptr",
                "wout_ptr", "normw_ptr", "normb_ptr", "bin_ptr", "bout_ptr"}
constants = dict(HAS_Z=flags, HAS_CONV_BIAS=flags, HAS_D=flags, HAS_DT_BIAS=flags, SELECTIVE=selective,
                 PDL=flags, DT_SOFTPLUS=True, RMS_NORM=not flags, HAS_NORM_BIAS=flags, HAS_IN_BIAS=flags, HAS_OUT_BIAS=flags,
                 BLOCK_H=64, BLOCK_E=64, BLOCK_N=16, BLOCK_R=8, BLOCK_W=4, BLOCK_S=8, N_TENSORS=17,
                 OFFSET_MULTIPLE=multiple)
constants = {k: v for k, v in constants.items() if k in fn.arg_names}
signature = {}
for name in fn.arg_names:
    if name in constants:
        signature[name] = "constexpr"
    elif name == "offsets_ptr":
        signature[name] = "*i64"
    elif name.endswith("_ptr"):
        signature[name] = f"*{act}" if name in in_act_dtype else "*fp32"
    else:
        signature[name] = "fp32" if name == "eps" else "i32"
unit_strides = ("s_xh", "s_oh", "s_wih", "s_woe", "s_ce", "s_cw", "s_hn", "s_ww", "s_an", "s_xpe", "s_dpr")
attrs = {}
if divisible:
    for name in unit_strides:
        if name in signature:
            signature[name], constants[name] = "constexpr", 1
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name] != "constexpr"
             and (name.endswith("_ptr") or name in ("hidden", "dim", "n_state") or name.startswith("s_"))}
kernel = triton.compile(ASTSource(fn, signature, constexprs=constants, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4))
assert "bar.sync" in kernel.asm["ptx"]  # the barriers around rewriting the conv window
loads = [line for line in kernel.asm["ptx"].splitlines() if "ld.global" in line]
print("compiled", sum(".v4." in line for line in loads), "of", len(loads))
"""


@pytest.mark.parametrize("kernel,act,selective,flags", [
    ("_mamba_step_kernel", "bf16", "1", "1"),
    ("_mamba_step_kernel", "fp32", "0", "0"),
    ("_mamba_block_step_kernel", "bf16", "1", "1"),
    ("_mamba_block_step_kernel", "fp32", "0", "0"),
    ("_mamba_blocks_step_kernel", "bf16", "1", "1"),
    ("_mamba_blocks_step_kernel", "fp32", "0", "0"),
    ("_split_in_kernel", "bf16", "1", "1"),
    ("_split_out_kernel", "fp32", "0", "0"),
], ids=["step-bf16-selective-all-operands", "step-fp32-time-invariant-bare", "block-bf16-selective-layernorm",
        "block-fp32-time-invariant-rmsnorm-bare", "stacked-blocks-bf16-selective-layernorm",
        "stacked-blocks-fp32-time-invariant-rmsnorm-bare", "split-in-bf16-selective-layernorm",
        "split-out-fp32-time-invariant-rmsnorm-bare"])
def test_triton_kernels_compile_for_sm90_without_a_gpu(kernel, act, selective, flags):
    """The interpreter runs the kernels as Python; this compiles them to PTX (layouts, constexpr branches, types)."""
    assert "compiled" in run_compiled(COMPILE_FOR_SM90, kernel, act, selective, flags, timeout=300)


def make_block_stack(n_blocks, batch, hidden, dim, dtype=torch.float32, **kw):
    """``n_blocks`` blocks of one shape with their own weights and states, and per-step inputs x."""
    blocks = []
    for index in range(n_blocks):
        inputs = make_block_inputs(batch, hidden, dim, dtype=dtype, seed=10 + index, **kw)
        xs = inputs.pop("xs")
        norm_eps, rms_norm = inputs.pop("norm_eps"), inputs.pop("rms_norm")
        blocks.append(inputs)
    return blocks, xs, norm_eps, rms_norm


def step_stack(fn, blocks, xs, norm_eps, rms_norm):
    """Step copies of the blocks' states through xs with ``fn(x, stack)``: (out (B, H, steps), states)."""
    blocks = [dict(b, conv_state=b["conv_state"].clone(), ssm_state=b["ssm_state"].clone()) for b in blocks]
    stack = BlockStack(blocks, norm_eps, rms_norm)
    outs = torch.stack([fn(x, stack) for x in xs], dim=-1)
    return outs, [(b["conv_state"], b["ssm_state"]) for b in blocks]


STACK_CASES = [
    pytest.param(dict(batch=2, hidden=12, dim=23), id="B2-H12-E23-layernorm"),
    pytest.param(dict(batch=3, hidden=20, dim=40, rms_norm=True, proj_bias=False, has_z=False), id="rmsnorm-bare"),
    pytest.param(dict(batch=1, hidden=16, dim=32, selective=False), id="time-invariant"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", STACK_CASES)
@pytest.mark.parametrize("block_e", [8, None], ids=["tiles-of-8", "one-tile"])
def test_triton_stacked_blocks_step_matches_the_blocks_one_by_one(case, dtype, block_e):
    """Three blocks in one launch, the residual stream in registers between them, against the reference
    stepping them one after another: outputs and every block's states after three steps; both block paths."""
    triton_step = triton_step_module()
    blocks, xs, norm_eps, rms_norm = make_block_stack(3, **case, dtype=dtype)
    out_ref, states_ref = step_stack(mamba_blocks_step_ref, blocks, xs, norm_eps, rms_norm)
    out, states = step_stack(functools.partial(triton_step.mamba_blocks_step_triton, block_e=block_e), blocks, xs,
                             norm_eps, rms_norm)
    assert out.dtype == dtype
    assert rel_err(out, out_ref) < TOL[dtype]
    for (conv, ssm), (conv_ref, ssm_ref) in zip(states, states_ref):
        assert rel_err(conv, conv_ref) < (1e-6 if dtype == torch.float32 else 1e-2)
        assert rel_err(ssm, ssm_ref) < (2e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("kernel,multiple", [("_mamba_block_step_kernel", 16), ("_mamba_blocks_step_kernel", 16),
                                             ("_mamba_blocks_step_kernel", 1)])
def test_block_kernels_load_weights_in_128_bit_vectors_where_aligned(kernel, multiple):
    """Compiled for sm_90 with the pointers and sizes divisible by 16: the one-block kernel loads in 128-bit
    vectors, and so does the stacked one when its offsets are declared multiples of 16 (without that
    declaration it fell back to scalar loads, 3.5x slower on the H100: benchmarks/NOTES_streaming.md)."""
    stdout = run_compiled(COMPILE_FOR_SM90, kernel, "bf16", "1", "1", str(multiple), "1", timeout=300)
    assert "compiled" in stdout
    vectors = int(stdout.split()[1])
    assert (vectors > 0) == (multiple == 16), stdout


def test_a_stack_of_views_at_odd_offsets_declares_no_alignment_and_steps_correctly():
    """Blocks whose D lies in one buffer at an odd distance: the stack promises nothing beyond one element
    (``offset_multiple`` 1), and the kernel still steps them as the reference does; separate tensors give 16."""
    triton_step = triton_step_module()
    blocks, xs, norm_eps, rms_norm = make_block_stack(2, 2, 12, 23)
    assert BlockStack(blocks, norm_eps, rms_norm).offset_multiple == 16
    shared = torch.cat([blocks[0]["D"], blocks[1]["D"]])  # block 1's D starts 23 elements after block 0's
    blocks = [dict(blocks[0], D=shared[:23]), dict(blocks[1], D=shared[23:])]
    assert BlockStack(blocks, norm_eps, rms_norm).offset_multiple == 1
    out_ref, _ = step_stack(mamba_blocks_step_ref, blocks, xs, norm_eps, rms_norm)
    out, _ = step_stack(triton_step.mamba_blocks_step_triton, blocks, xs, norm_eps, rms_norm)
    assert rel_err(out, out_ref) < TOL[torch.float32]


def test_blocks_step_reference_is_block_after_block():
    blocks, xs, norm_eps, rms_norm = make_block_stack(2, 2, 12, 23)
    out, states = step_stack(mamba_blocks_step_ref, blocks, xs, norm_eps, rms_norm)
    copies = [dict(b, conv_state=b["conv_state"].clone(), ssm_state=b["ssm_state"].clone()) for b in blocks]
    for t, x in enumerate(xs):
        for block in copies:
            x = mamba_block_step_ref(x, norm_eps=norm_eps, rms_norm=rms_norm, **block)
        assert torch.equal(out[..., t], x)
    assert all(torch.equal(s, c[k]) for (conv, ssm), c in zip(states, copies)
               for s, k in ((conv, "conv_state"), (ssm, "ssm_state")))


def test_block_stack_rejects_blocks_that_differ():
    blocks, *_ = make_block_stack(2, 2, 12, 23)
    with pytest.raises(ValueError, match="at least one block"):
        BlockStack([], 1e-5, False)
    with pytest.raises(ValueError, match="unknown block tensors"):
        BlockStack([dict(blocks[0], gate_weight=blocks[0]["D"])], 1e-5, False)
    with pytest.raises(ValueError, match="block 1 lacks D"):
        BlockStack([blocks[0], dict(blocks[1], D=None)], 1e-5, False)
    with pytest.raises(ValueError, match="block 1's conv_weight is"):
        BlockStack([blocks[0], dict(blocks[1], conv_weight=blocks[1]["conv_weight"].t().contiguous().t())], 1e-5,
                   False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_add_keep_kernel_matches_the_reference(dtype):
    """add_keep on a stage's pooling buffers: other and keep are a column (slot) of (B, p, H) buffers; the sum
    is rounded once to the dtype, as torch's, and the rest of the buffers is left alone."""
    from mamba_audio.kernels.selective_scan.step_ref import add_keep_ref

    g = torch.Generator().manual_seed(3)
    batch, pool, width = 5, 4, 24
    x = torch.randn(batch, width, generator=g).to(dtype).to(DEVICE)
    pool_out = torch.randn(batch, pool, width, generator=g).to(dtype).to(DEVICE)
    results = []
    for fn in (add_keep_ref, triton_step_module().add_keep_triton):
        pool_in = torch.full((batch, pool, width), float("nan"), dtype=dtype, device=DEVICE)
        out = fn(x, pool_out[:, 2], pool_in[:, 2])
        results.append((out.cpu(), pool_in.cpu()))
    (out_ref, kept_ref), (out, kept) = results
    assert out.dtype == dtype and out.shape == (batch, width)
    assert torch.equal(kept_ref[:, 2], x.cpu()) and kept_ref[:, [0, 1, 3]].isnan().all()
    assert torch.equal(kept.cpu().nan_to_num(7.0), kept_ref.nan_to_num(7.0))
    if dtype == torch.bfloat16 and DEVICE == "cpu":  # the interpreter rounds to bfloat16 toward zero: one unit
        torch.testing.assert_close(out, out_ref, rtol=2**-7, atol=0)
    else:
        assert torch.equal(out, out_ref)
    with pytest.raises(ValueError, match="one shape"):
        triton_step_module().add_keep_triton(x, pool_out[:, 2, :-1], pool_out[:, 1])
