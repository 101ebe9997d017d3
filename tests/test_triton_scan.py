"""The Triton selective scan against the sequential oracle, on the CPU through Triton's interpreter.

Forward output, final state and every gradient (u, delta, A, B, C, D, z,
delta_bias, initial state, through y and the final state) are compared with
``selective_scan_ref`` on fresh random inputs, by the relative error of the
whole tensor, with a tolerance per dtype. Chunks are 16 steps here, so small L
covers: L shorter than a chunk, several chunks, a ragged last chunk.

The interpreter runs every tile element of a scan through Python, so shapes are
tiny; the same comparisons at full size run on the GPU in benchmarks/scan.py.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

import triton  # noqa: E402,F401  (a Linux dependency of the package: its absence is an error, not a skip)

from mamba_audio.kernels.selective_scan import triton_scan  # noqa: E402
from mamba_audio.kernels import selective_scan  # noqa: E402
from mamba_audio.kernels.selective_scan import selective_scan_ref  # noqa: E402
from conftest import run_compiled  # noqa: E402

if not torch.cuda.is_available():
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton_scan._scan_fwd_kernel, InterpretedFunction):
        # imported earlier in this process without the interpreter: define the kernels again
        os.environ["TRITON_INTERPRET"] = "1"
        triton_scan = importlib.reload(triton_scan)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CHUNK = 16
# relative error of the whole tensor; low-precision inputs differ from the oracle only in output rounding
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make_inputs(batch, dim, length, n_state, groups=None, dtype=torch.float32, *, has_D=True, has_z=True,
                has_bias=True, has_h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(DEVICE)

    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    return dict(
        u=rand(batch, dim, length),
        delta=rand(batch, dim, length, scale=0.5),
        A=(-0.1 - 2 * torch.rand(dim, n_state, generator=g)).to(DEVICE),
        B=rand(*bc_shape),
        C=rand(*bc_shape),
        D=rand(dim, dt=torch.float32) if has_D else None,
        z=rand(batch, dim, length) if has_z else None,
        delta_bias=rand(dim, scale=0.3, dt=torch.float32) if has_bias else None,
        initial_state=rand(batch, dim, n_state, dt=torch.float32) if has_h0 else None,
    )


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# the forwards: the walk (one segment, or several joined by summaries and the carry), and the tiled kernels,
# walking the chunks in order or chunk summaries + carry + scan
FORWARDS = {
    "walk": dict(walk=True, walk_segments=1),
    "walk-segments": dict(walk=True, walk_segments=3),
    "sequential": dict(walk=False, sequential=True),
    "chunk-parallel": dict(walk=False, sequential=False),
}


def run_both(inputs, softplus, want_final, forward="chunk-parallel", seed=1, seq_idx=None, unroll=None, bwd_BD=None,
             switches=None):
    """Forward and backward through ours and the oracle with the same upstream gradients."""
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    ref_leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    if seq_idx is not None:
        leaves["seq_idx"] = ref_leaves["seq_idx"] = seq_idx
    results = []
    g = torch.Generator().manual_seed(seed)
    grad_y = grad_h = None
    config = {**dict(T=CHUNK, unroll=unroll, bwd_BD=bwd_BD), **FORWARDS[forward], **(switches or {})}
    for fn, lv, extra in ((triton_scan.selective_scan_triton, leaves, dict(config=config)),
                          (selective_scan_ref, ref_leaves, {})):
        out = fn(**lv, delta_softplus=softplus, return_final_state=want_final, **extra)
        y, final = out if want_final else (out, None)
        if grad_y is None:
            grad_y = torch.randn(y.shape, generator=g).to(y)
            grad_h = torch.randn(final.shape, generator=g).to(final) if want_final else None
        loss = (y.float() * grad_y.float()).sum()
        if want_final:
            loss = loss + (final * grad_h).sum()
        loss.backward()
        results.append((y, final, {k: v.grad for k, v in lv.items() if v is not None and k != "seq_idx"}))
    return results


def check_against_ref(inputs, dtype, softplus=True, want_final=True, forward="chunk-parallel", seq_idx=None,
                      unroll=None, bwd_BD=None, switches=None):
    (y, final, grads), (y_ref, final_ref, grads_ref) = run_both(inputs, softplus, want_final, forward,
                                                                seq_idx=seq_idx, unroll=unroll, bwd_BD=bwd_BD,
                                                                switches=switches)
    tol = TOL[dtype]
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert torch.isfinite(y).all()
    errors = {"y": rel_err(y, y_ref)}
    if want_final:
        assert final.dtype == torch.float32
        errors["final_state"] = rel_err(final, final_ref)
    for name, g_ref in grads_ref.items():
        assert grads[name] is not None, f"no gradient for {name}"
        assert grads[name].dtype == g_ref.dtype, name
        assert torch.isfinite(grads[name]).all(), name
        errors["d" + name] = rel_err(grads[name], g_ref)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors over {tol}: {bad} (all: {errors})"


# (batch, dim, length, N, groups): L shorter than a chunk, exactly one, ragged several, one step
SHAPES = [
    pytest.param(2, 3, 7, 4, None, id="L7-short"),
    pytest.param(1, 4, 16, 3, None, id="L16-one-chunk"),
    pytest.param(2, 3, 37, 4, None, id="L37-three-chunks"),
    pytest.param(1, 4, 41, 5, 2, id="L41-grouped"),
    pytest.param(1, 2, 1, 4, None, id="L1"),
]


@pytest.mark.parametrize("forward", list(FORWARDS))
@pytest.mark.parametrize("batch, dim, length, n_state, groups", SHAPES)
def test_all_options_float32(batch, dim, length, n_state, groups, forward):
    inputs = make_inputs(batch, dim, length, n_state, groups, seed=length)
    check_against_ref(inputs, torch.float32, forward=forward)


# every optional input switched off one at a time, and all at once, on three chunks
OPTIONS = [
    pytest.param(dict(has_D=False), True, True, id="no-D"),
    pytest.param(dict(has_z=False), True, True, id="no-z"),
    pytest.param(dict(has_bias=False), False, True, id="no-bias-no-softplus"),
    pytest.param(dict(has_h0=False), True, False, id="no-initial-state-no-final"),
    pytest.param(dict(has_D=False, has_z=False, has_bias=False, has_h0=False), False, False, id="bare"),
]


@pytest.mark.parametrize("forward", ["walk-segments", "chunk-parallel"])
@pytest.mark.parametrize("options, softplus, want_final", OPTIONS)
def test_option_combinations(options, softplus, want_final, forward):
    inputs = make_inputs(1, 3, 35, 4, seed=7, **options)
    check_against_ref(inputs, torch.float32, softplus=softplus, want_final=want_final, forward=forward)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("groups, forward", [(None, "sequential"), (2, "chunk-parallel"), (None, "walk"),
                                            (2, "walk-segments")])
def test_low_precision(dtype, groups, forward):
    inputs = make_inputs(1, 4, 37, 4, groups, dtype=dtype, seed=3)
    check_against_ref(inputs, dtype, forward=forward)


def test_non_contiguous_inputs():
    base = make_inputs(2, 3, 29, 4, seed=11)
    inputs = dict(base)
    # u, delta, z as (B, L, D) tensors seen as (B, D, L); B and C with a stride-2 time axis
    for k in ("u", "delta", "z"):
        inputs[k] = base[k].transpose(1, 2).contiguous().transpose(1, 2)
    for k in ("B", "C"):
        wide = torch.stack([base[k], torch.randn_like(base[k])], dim=-1).flatten(-2)
        inputs[k] = wide[..., ::2]
    inputs["A"] = base["A"].t().contiguous().t()
    assert not inputs["u"].is_contiguous() and not inputs["B"].is_contiguous()
    # the backward also with several channels per tile (its sums over channels inside the tile)
    check_against_ref(inputs, torch.float32, forward="chunk-parallel", bwd_BD=1)
    check_against_ref(inputs, torch.float32, forward="sequential", unroll=2, bwd_BD=4)
    check_against_ref(inputs, torch.float32, forward="walk-segments")


def test_inputs_strided_along_l_are_copied_and_broadcasts_are_not(monkeypatch):
    """The model's delta and z are (B, L, D) tensors seen as (B, D, L), and B and C columns of a wider
    tensor: the kernels get unit-stride copies of those (their reads along L are vectors); a broadcast L
    axis (the S4D mixer's B and C) and unit-stride inputs are passed as they are, and the gradients reach
    the original views."""
    base = make_inputs(2, 3, 29, 4, seed=13)
    inputs = dict(base)
    for k in ("u", "delta", "z"):
        inputs[k] = base[k].transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    wide = torch.stack([base["B"], torch.randn_like(base["B"])], dim=-1).flatten(-2)
    inputs["B"] = wide[..., ::2].detach().requires_grad_()
    inputs["C"] = base["C"][..., :1].expand_as(base["C"]).detach().requires_grad_()  # a broadcast L axis
    seen = {}
    forward = triton_scan._forward

    def spy(u, delta, A, B, C, D, z, *rest):
        seen.update(u=u, delta=delta, B=B, C=C, z=z)
        return forward(u, delta, A, B, C, D, z, *rest)

    monkeypatch.setattr(triton_scan, "_forward", spy)
    y = triton_scan.selective_scan_triton(**inputs, delta_softplus=True)
    assert all(seen[k].stride(-1) == 1 for k in ("u", "delta", "z", "B")), {k: t.stride() for k, t in seen.items()}
    assert seen["C"].stride(-1) == 0 and seen["C"].data_ptr() == inputs["C"].data_ptr()
    weight = torch.randn(y.shape[0], y.shape[2], y.shape[1], generator=torch.Generator().manual_seed(2)).to(DEVICE)
    (y.transpose(1, 2) * weight).sum().backward()  # the gradient of y arrives strided along L too
    ref_inputs = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) and v.requires_grad else v)
                  for k, v in inputs.items()}
    y_ref = selective_scan_ref(**ref_inputs, delta_softplus=True)
    (y_ref.transpose(1, 2) * weight).sum().backward()
    assert rel_err(y, y_ref) < TOL[torch.float32]
    for k in ("u", "delta", "z", "B", "C"):
        assert rel_err(inputs[k].grad, ref_inputs[k].grad) < TOL[torch.float32], k
    assert triton_scan.unit_stride_along_l(None) is None


@pytest.mark.parametrize("forward", ["chunk-parallel", "walk-segments"])
def test_deterministic_and_dispatch(forward):
    inputs = make_inputs(1, 4, 37, 4, 2, seed=5)
    first = run_both(inputs, True, True, forward)[0]
    second = run_both(inputs, True, True, forward)[0]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name
    y = selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert rel_err(y, selective_scan_ref(**inputs, delta_softplus=True)) < TOL[torch.float32]


@pytest.mark.parametrize("invariant", ["B", "C", "BC"])
def test_time_invariant_B_C_dispatch_to_the_kernels_as_per_channel_groups(invariant, monkeypatch):
    """The S4D mixer's (D, N) B and C reach the Triton kernels (not the chunked scan, whose B*D*L*N
    tensors ran out of memory on long crops) and equal the reference, gradients included."""
    calls, kernel = [], triton_scan.selective_scan_triton

    def spy(u, delta, A, B, C, *rest, **kwargs):
        calls.append(B.shape)
        return kernel(u, delta, A, B, C, *rest, **kwargs)

    monkeypatch.setattr(triton_scan, "selective_scan_triton", spy)
    inputs = make_inputs(2, 4, 37, 4, 2, seed=11)
    dim, n = inputs["u"].shape[1], inputs["A"].shape[1]
    g = torch.Generator().manual_seed(3)
    for name in invariant:
        inputs[name] = torch.randn(dim, n, generator=g).to(DEVICE)
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value.requires_grad_()
    y = selective_scan(**inputs, delta_softplus=True, backend="triton")
    y_ref = selective_scan_ref(**inputs, delta_softplus=True)
    assert calls == [(2, 4, 4, 37)]  # (batch, one group per channel, N, L)
    assert rel_err(y, y_ref) < TOL[torch.float32]
    grad = torch.randn_like(y_ref)
    leaves = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    ours = torch.autograd.grad(y, [inputs[k] for k in leaves], grad)
    ref = torch.autograd.grad(y_ref, [inputs[k] for k in leaves], grad)
    for name, a, b in zip(leaves, ours, ref):
        assert rel_err(a, b) < TOL[torch.float32], name


def test_rejects_what_it_does_not_cover():
    inputs = make_inputs(1, 2, 5, 4, has_h0=False, seed=2)
    with pytest.raises(ValueError, match="complex A"):
        triton_scan.selective_scan_triton(**{**inputs, "A": inputs["A"].to(torch.complex64)})
    with pytest.raises(ValueError, match="delta must match"):
        triton_scan.selective_scan_triton(**{**inputs, "delta": inputs["delta"][..., :-1]})


def seq_idx_from_starts(length, starts_per_row, first=0):
    """(B, L) int32 seq_idx with a new sequence at each listed position of each row."""
    rows = []
    for starts in starts_per_row:
        row = torch.zeros(length, dtype=torch.int32)
        for t in starts:
            row[t:] += 1
        rows.append(row + first)
    return torch.stack(rows).to(DEVICE)


# sequence starts (chunks of 16 here): on chunk boundaries, inside chunks, right after position 0,
# at the last position, several in one chunk; rows of a batch differ; odd L
PACKINGS = [
    pytest.param(2, 37, [[16, 32], [5, 21]], id="L37-boundary-and-inside"),
    pytest.param(2, 37, [[1, 36], []], id="L37-first-and-last-step"),
    pytest.param(1, 33, [[2, 3, 4, 16, 17]], id="L33-many-in-a-chunk"),
    pytest.param(2, 7, [[3], [1, 6]], id="L7-one-chunk"),
]


@pytest.mark.parametrize("forward", ["sequential", "chunk-parallel"])  # packed sequences never take the walk
@pytest.mark.parametrize("batch, length, starts", PACKINGS)
def test_packed_sequences(batch, length, starts, forward):
    inputs = make_inputs(batch, 3, length, 4, seed=length + len(starts[0]))
    # seq_idx need not start at 0: position 0 never resets, initial_state feeds each row's first sequence
    seq_idx = seq_idx_from_starts(length, starts, first=3)
    check_against_ref(inputs, torch.float32, forward=forward, seq_idx=seq_idx)


@pytest.mark.parametrize("unroll", [1, 2], ids=["states-one-by-one", "states-two-at-a-time"])
def test_packed_sequences_grouped_low_precision_int64(unroll):
    inputs = make_inputs(1, 4, 41, 4, 2, dtype=torch.bfloat16, seed=9)
    seq_idx = seq_idx_from_starts(41, [[16, 20, 40]]).long()
    check_against_ref(inputs, torch.bfloat16, seq_idx=seq_idx, unroll=unroll, bwd_BD=2)


# the backward's switches (choose_config's bwd_*; the GPU sweep picks among them): each value away from
# the default at least once, with and without packed sequences (SCAN2 has its own shifted sequence starts)
SWITCHES = [
    pytest.param(dict(bwd_flip=False, bwd_reload=False), id="versions-5-to-7"),
    pytest.param(dict(bwd_scan2=True, bwd_flip=False), id="scan2-reverse-scan"),
    pytest.param(dict(bwd_early_dbc=False), id="late-dBC"),
    pytest.param(dict(bwd_scan2=True, bwd_maxnreg=128), id="scan2-flip"),
    pytest.param(dict(bwd_split=3), id="split-override"),  # 3 channels: 2 splits of a 2-channel tile
]


@pytest.mark.parametrize("switches", SWITCHES)
def test_backward_switches(switches):
    inputs = make_inputs(2, 3, 37, 4, seed=21)
    check_against_ref(inputs, torch.float32, switches=switches)
    seq_idx = seq_idx_from_starts(37, [[16, 17, 36], [5, 31]])
    check_against_ref(inputs, torch.float32, forward="sequential", seq_idx=seq_idx, bwd_BD=4, switches=switches)


@pytest.fixture
def gpu_sized_splits(monkeypatch):
    """Launch parameters as on a GPU of 8 multiprocessors: the backward splits the channels of a short sequence
    (on the CPU, counted as one multiprocessor, it hardly ever does)."""
    monkeypatch.setattr(triton_scan, "_sm_count", lambda device: 8)


# the backward's gradient sums: dB, dC over channel splits for B and C of each dtype, grouped or not; dD and
# d delta_bias absent; the gradient of a 16-bit initial state (a cast in the same launch)
SPLITS = [
    pytest.param(2, torch.float32, {}, torch.float32, "sequential", id="grouped-fp32"),
    pytest.param(2, torch.bfloat16, dict(has_D=False, has_bias=False), torch.bfloat16, "chunk-parallel",
                 id="grouped-bf16-no-D-no-bias-h0-bf16"),
    pytest.param(2, torch.float16, dict(has_z=False), torch.float16, "walk-segments", id="grouped-fp16-h0-fp16"),
    pytest.param(None, torch.bfloat16, dict(has_D=False), torch.float32, "sequential", id="bf16-no-D"),
]


@pytest.mark.usefixtures("gpu_sized_splits")
@pytest.mark.parametrize("groups, bc_dtype, options, h0_dtype, forward", SPLITS)
def test_backward_channel_splits_and_gradient_dtypes(groups, bc_dtype, options, h0_dtype, forward):
    assert triton_scan.choose_config(1, 8, 37, 4, groups or 1, sm_count=8, T=CHUNK, bwd_BD=1)["bwd_n_split"] > 1
    inputs = make_inputs(1, 8, 37, 4, groups, seed=17, **options)
    inputs.update(B=inputs["B"].to(bc_dtype), C=inputs["C"].to(bc_dtype),
                  initial_state=inputs["initial_state"].to(h0_dtype))
    lowest = max((bc_dtype, h0_dtype), key=TOL.get)
    check_against_ref(inputs, lowest, forward=forward, bwd_BD=1)
    check_against_ref(inputs, lowest, forward=forward, bwd_BD=1, want_final=False)


def nan_filled(make):
    def filled(*args, **kwargs):
        x = make(*args, **kwargs)
        return x.fill_(float("nan")) if x.is_floating_point() else x
    return filled


@pytest.mark.usefixtures("gpu_sized_splits")
@pytest.mark.parametrize("forward, length, given_ends", [
    *[(forward, 37, given) for forward in FORWARDS for given in (False, True)],
    ("chunk-parallel", 9, False),  # one chunk
])
def test_every_buffer_is_written_before_it_is_read(forward, length, given_ends, monkeypatch):
    """The same bits again where every buffer the scan allocates starts as NaN: nothing is read that no kernel
    wrote (the zero state entering the first chunk and the zero adjoint leaving the last, without an initial
    state and a final state's gradient, come from the carry pass and the sequential forward; the gradient sums
    read only partials), so results are also the same run to run."""
    inputs = make_inputs(1, 4, length, 4, 2, has_h0=given_ends, seed=19)
    first = run_both(inputs, True, given_ends, forward, bwd_BD=1)[0]
    monkeypatch.setattr(torch, "empty", nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", nan_filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", nan_filled(torch.Tensor.new_empty))
    second = run_both(inputs, True, given_ends, forward, bwd_BD=1)[0]
    assert torch.equal(first[0], second[0])
    assert given_ends == (first[1] is not None) and (not given_ends or torch.equal(first[1], second[1]))
    assert first[2].keys() == second[2].keys()
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name


def test_gradient_sums_over_many_partials():
    """``_grad_sums_kernel`` where a sum takes several trips of rows (70 partials, 75 for dA, 32 a trip; 5 splits
    in a trip of 8) and no block width divides the gradient's: float32 sums as exact as float32 allows, the casts as
    PyTorch's (16 bits: the rounding of one cast), nothing written past the end."""
    g = torch.Generator().manual_seed(23)
    n_split, n_bc, n_parts, n_parts_A, dim, n_state, n_h0 = 5, 1000, 70, 75, 23, 5, 300
    rows_widths = [(n_split, n_bc), (n_split, n_bc), (n_parts_A, dim * n_state), (n_parts, dim), (n_parts, dim),
                   (1, n_h0)]
    dtypes = [torch.float16, torch.float32, torch.float32, torch.bfloat16, torch.float32, torch.float16]
    parts = [torch.randn(r * w, generator=g).to(DEVICE) for r, w in rows_widths]
    outs = [torch.full((w + 7,), float("nan"), dtype=dt, device=DEVICE) for (_, w), dt in zip(rows_widths, dtypes)]
    tile, split_rb, part_rb = 256, 8, 32
    cdiv = triton.cdiv  # a program for each block of each gradient
    blocks = 2 * cdiv(n_bc, tile // split_rb) + cdiv(dim * n_state, tile // part_rb) + 2 * cdiv(dim, tile // part_rb)
    blocks += cdiv(n_h0, tile)
    triton_scan.launch(triton_scan._grad_sums_kernel, (blocks,), *parts, *outs, n_split, n_bc, n_parts, n_parts_A,
                       dim, n_state, n_h0, SUM_B=True, SUM_C=True, HAS_D=True, HAS_BIAS=True, CAST_H0=True, SPLIT_RB=split_rb,
                       PART_RB=part_rb, TILE=tile, num_warps=4)
    for (r, w), part, out, tol in zip(rows_widths, parts, outs, [1e-3, 1e-6, 1e-6, 8e-3, 1e-6, 1e-3]):
        assert out[w:].isnan().all()
        exact = part.view(r, w).double().sum(0)
        assert rel_err(out[:w], exact) <= tol, (r, w, out.dtype)
    assert torch.equal(outs[-1][:n_h0], parts[-1].to(torch.float16))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("zero_start", [False, True])
def test_carry_tiles_agree_with_the_recurrence(reverse, zero_start):
    """The carry pass in the narrow tiles it takes where 64 rows a program would leave the GPU idle (8 rows x 512
    chunks: two runs of chunks, the last ragged, rows past the end masked) and in the default 64 x 64, against the
    recurrence stepped in float64; reversed, also with zeros written over r_0 (ZERO_R0, as the backward asks)."""
    batch, K, rows = 2, 700, 20
    g = torch.Generator().manual_seed(41)
    decay = torch.rand(batch, K, rows, generator=g) * 0.6 + 0.4
    local = torch.randn(batch, K, rows, generator=g)
    given = torch.zeros(batch, rows) if zero_start else torch.randn(batch, rows, generator=g)
    expect = torch.empty(batch, K + 1, rows, dtype=torch.float64)
    order = range(K - 1, -1, -1) if reverse else range(K)
    at = K if reverse else 0
    expect[:, at] = given
    for k in order:
        expect[:, k if reverse else k + 1] = decay[:, k] * expect[:, k + 1 if reverse else k] + local[:, k]
    for tile, zero_r0 in [((8, 512), False), ((64, 64), False)] + [((8, 512), True)] * reverse:
        states = torch.full((batch, K + 1, rows), float("nan"))
        if not zero_start:
            states[:, at] = given
        states = states.to(DEVICE)
        triton_scan.launch(triton_scan._carry_kernel, (triton.cdiv(rows, tile[0]), batch), decay.to(DEVICE),
                           local.to(DEVICE), states, K, rows, REVERSE=reverse, ZERO_START=zero_start,
                           ROWS=tile[0], CB=tile[1], ZERO_R0=zero_r0, num_warps=4)
        if zero_r0:
            assert states[:, 0].eq(0).all()
            assert rel_err(states[:, 1:].cpu(), expect[:, 1:]) < 1e-6, tile
        else:
            assert rel_err(states.cpu(), expect) < 1e-6, tile


def test_carry_tile_rule():
    """64 rows a program where that gives a program a multiprocessor, else down to 8, with 4096 entries a tile."""
    assert triton_scan._carry_tile(1, 2048, 2048, 132) == (8, 512)  # one long sequence: 32 programs of 64 rows
    assert triton_scan._carry_tile(8, 1024, 2048, 132) == (64, 64)  # 256 programs already
    assert triton_scan._carry_tile(16, 8, 8192, 132) == (64, 8)  # fewer chunks than a tile's run
    assert triton_scan._carry_tile(1, 2048, 2048, 1) == (64, 64)  # the interpreter: the fewest programs
    assert triton_scan._carry_tile(1, 5, 12, 132) == (8, 8)


@pytest.mark.usefixtures("gpu_sized_splits")
def test_training_call_dispatches_only_allocations(monkeypatch):
    """A training forward and backward (the sequential forward; D, z, delta_bias; no initial or final state)
    dispatches no PyTorch operation besides allocating its outputs and scratch: each costs 8-22 us of host time
    on the H100 machine, where at short sequences the GPU waits on the host."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counting, self.ops = True, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.counting:
                self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    launches, mode, launch = [], Count(), triton_scan.launch

    def uncounted(kernel, grid, *args, **kwargs):  # the interpreter's own copies are not the call's
        launches.append(getattr(kernel, "__name__", None) or kernel.fn.__name__)
        mode.counting = False
        launch(kernel, grid, *args, **kwargs)
        mode.counting = True

    monkeypatch.setattr(triton_scan, "launch", uncounted)
    inputs = make_inputs(1, 8, 37, 4, has_h0=False, seed=29)
    leaves = {k: v.requires_grad_() for k, v in inputs.items() if v is not None}
    dy = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    config = dict(T=CHUNK, bwd_BD=1, **FORWARDS["sequential"])
    with mode:
        y = triton_scan.selective_scan_triton(**leaves, delta_softplus=True, config=config)
        forward_ops, mode.ops = mode.ops, []
        torch.autograd.grad(y, list(leaves.values()), dy)
    assert sorted(forward_ops) == ["empty"] * 2  # y and the states
    # adjoints, chunk summaries (2), du, d delta, dz, dB, dC, dA, dD, d delta_bias, the partials (one and a split)
    assert sorted(mode.ops) == ["empty"] * 11 + ["empty_like", "split_with_sizes"], mode.ops
    assert launches == ["_scan_fwd_kernel", "_chunk_summary_kernel", "_carry_kernel", "_scan_bwd_kernel",
                        "_grad_sums_kernel"]


def test_packed_sequences_are_independent():
    """A packed row gives each sequence exactly what it gets alone (with a zero start)."""
    inputs = make_inputs(1, 3, 30, 4, has_h0=False, seed=4)
    seq_idx = seq_idx_from_starts(30, [[11, 16]])
    y = triton_scan.selective_scan_triton(**inputs, delta_softplus=True, seq_idx=seq_idx,
                                          config=dict(T=CHUNK, walk=False, sequential=False))
    for lo, hi in ((0, 11), (11, 16), (16, 30)):
        part = {k: (v[..., lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
        alone = triton_scan.selective_scan_triton(**part, delta_softplus=True, config=dict(T=CHUNK))
        assert rel_err(y[..., lo:hi], alone) < TOL[torch.float32], (lo, hi)


def test_rejects_bad_seq_idx_and_devices_and_dtypes():
    inputs = make_inputs(1, 2, 5, 4, has_h0=False, seed=2)
    scan = triton_scan.selective_scan_triton
    with pytest.raises(ValueError, match="non-decreasing"):
        scan(**inputs, seq_idx=torch.tensor([[0, 1, 1, 0, 2]], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="seq_idx must be \\(batch, length\\)"):
        scan(**inputs, seq_idx=torch.zeros(1, 4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="int32 or int64"):
        scan(**inputs, seq_idx=torch.zeros(1, 5, device=DEVICE))
    with pytest.raises(ValueError, match="A must be float32"):
        scan(**{**inputs, "A": inputs["A"].double()})
    with pytest.raises(ValueError, match="u must be float32, bfloat16 or float16"):
        scan(**{**inputs, "u": inputs["u"].double()})
    with pytest.raises(ValueError, match="is on meta"):
        scan(**{**inputs, "D": inputs["D"].to("meta")})


def test_the_walk_is_the_default_but_never_with_packed_sequences(monkeypatch):
    calls = []
    walk = triton_scan._walk
    monkeypatch.setattr(triton_scan, "_walk", lambda *a, **k: calls.append(1) or walk(*a, **k))
    inputs = make_inputs(1, 3, 20, 4, has_h0=False, seed=6)
    y = triton_scan.selective_scan_triton(**inputs, delta_softplus=True)
    assert calls == [1] and rel_err(y, selective_scan_ref(**inputs, delta_softplus=True)) < TOL[torch.float32]
    triton_scan.selective_scan_triton(**inputs, delta_softplus=True, config=dict(walk=False))
    assert calls == [1]
    seq_idx = seq_idx_from_starts(20, [[9]])
    y = triton_scan.selective_scan_triton(**inputs, delta_softplus=True, seq_idx=seq_idx)
    assert calls == [1] and rel_err(y, selective_scan_ref(**inputs, delta_softplus=True, seq_idx=seq_idx)) < 2e-5


@pytest.mark.parametrize("shape, segments, walk", [
    ((8, 2048, 2048), 1, True),  # 512 warps of one channel per thread: no summary pass
    ((16, 128, 16384), 16, True),  # 64 warps: the fewest segments for 1024, each 1024 steps
    ((16, 256, 4096), 8, False),  # segments of 512 steps: the tiles
    ((16, 512, 1024), 4, False),
    ((1, 128, 262144), 256, True),
    ((2, 64, 100), 1, True),  # never more segments than chunks
])
def test_walk_segments_rule(shape, segments, walk):
    batch, dim, length = shape
    for training in (False, True):
        cfg = triton_scan.choose_config(batch, dim, length, 16, 1, sm_count=132, training=training)
        assert cfg["walk"] == walk and cfg["walk_BD"] == 32
        assert cfg["walk_segments"] == segments
        assert cfg["walk_seg"] % cfg["T"] == 0 and cfg["walk_segments"] * cfg["walk_seg"] >= length
        assert (cfg["walk_segments"] - 1) * cfg["walk_seg"] < length
    assert triton_scan.choose_config(batch, dim, length, 16, 1, sm_count=132, walk=not walk)["walk"] != walk


@pytest.mark.parametrize("shape, training, T, BD", [
    ((16, 512, 1024), True, 128, 8),  # chunks in order, 8-channel tiles still 3 programs an SM
    ((16, 512, 1024), False, 128, 8),
    ((16, 256, 4096), True, 256, 4),  # long chunks with gradients: 4 channels
    ((16, 256, 4096), False, 128, 8),
    ((1, 128, 262144), True, 128, 4),  # chunk-parallel
    ((2, 64, 100), True, 128, 4),
])
def test_forward_tile_rule(shape, training, T, BD):
    batch, dim, length = shape
    cfg = triton_scan.choose_config(batch, dim, length, 16, 1, sm_count=132, training=training)
    assert (cfg["T"], cfg["BD"]) == (T, BD)


COMPILE_WALK_FOR_SM90 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba_audio.kernels.selective_scan import triton_scan

act, summary, save = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
fn = triton_scan._scan_walk_kernel
consts = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SUMMARY=summary, SAVE=save, FAST=True, NS=4, NP=4,
              BD=64, TW=16 // (4 if act == "fp32" else 2), T=64, s_u_l=1, s_dt_l=1, s_z_l=1, s_y_l=1)
signature = {name: "constexpr" if name in consts else
             (f"*{act}" if name in ("u_ptr", "dt_ptr", "z_ptr", "y_ptr") else "*fp32") if name.endswith("_ptr")
             else "i32" for name in fn.arg_names}
# as a launch of tensors from the allocator is specialised: pointers and strides divisible by 16
attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
         if signature[name] != "constexpr" and name not in fn.do_not_specialize}
kernel = triton.compile(ASTSource(fn, signature, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=2))
ptx = kernel.asm["ptx"]
loads = [line for line in ptx.splitlines() if "ld.global" in line]
print("shfl", ptx.count("shfl.sync"), "bar", ptx.count("bar.sync"), "v4", sum(".v4." in line for line in loads),
      "prefetch", ptx.count("prefetch.global.L1"), "rcp", ptx.count("rcp.approx.ftz"))
"""


@pytest.mark.parametrize("act, summary, save", [("bf16", "0", "0"), ("bf16", "0", "1"), ("fp32", "1", "0")],
                         ids=["bf16-walk", "bf16-walk-saving-chunk-states", "fp32-summary"])
def test_walk_compiles_for_sm90_with_whole_rows_per_thread(act, summary, save):
    """What the walk's speed rests on, checked in its PTX without a GPU: every step of a channel in one thread
    (not one shuffle or barrier: the interpreter cannot tell), 16-byte loads, the L1 prefetch, the fast
    reciprocal. The GPU runs the same comparisons as the tests above in benchmarks/scan.py."""
    counts = dict(zip(*[iter(run_compiled(COMPILE_WALK_FOR_SM90, act, summary, save).split())] * 2))
    assert counts["shfl"] == "0" and counts["bar"] == "0", counts
    assert int(counts["v4"]) >= 8 and counts["prefetch"] == "1", counts
    assert (counts["rcp"] != "0") == (summary == "0"), counts  # the gate's reciprocal; a summary writes no y


@pytest.mark.parametrize("groups, length, tw", [(None, 37, 8), (2, 41, 4), (None, 3, 8)], ids=["L37", "grouped-L41", "L3"])
def test_pack_bc_lays_out_each_trip_as_one_block(groups, length, tw):
    inputs = make_inputs(2, 4, length, 5, groups, dtype=torch.bfloat16, seed=8)
    B, C = inputs["B"], inputs["C"]
    B = B[..., :1].expand_as(B) if groups else B  # a broadcast L axis too (time-invariant B)
    packed = triton_scan._pack_bc(B, C, tw)  # ungrouped (B, N, L): one group
    n_sub = -(-length // tw)
    for i, X in enumerate((B, C)):
        X = X if groups else X.unsqueeze(1)
        padded = torch.nn.functional.pad(X.float(), (0, n_sub * tw - length)).unflatten(-1, (n_sub, tw))
        assert torch.equal(packed[:, :, :, i], padded.permute(0, 1, 3, 2, 4))  # (B, G, trips, N, TW)


@pytest.mark.parametrize("length, refine, used", [(256, 2, 2), (250, 2, 2), (250, 4, 4), (250, 3, 1), (250, None, 4),
                                                  (250, 1, 1)])
def test_walk_summary_on_finer_segments(length, refine, used):
    """walk_refine: the summary pass on segments refine times shorter than the walk's (4 segments of 4 chunks;
    refine 3 does not divide them and falls back to 1; 4 by default); the result as the reference's, gradients
    included."""
    cfg = triton_scan.choose_config(2, 8, length, 4, 1, sm_count=1, T=CHUNK, walk=True, walk_segments=4,
                                    walk_refine=refine)
    assert cfg["walk_segments"] == 4 and cfg["walk_refine"] == used
    assert triton_scan.choose_config(2, 8, length, 4, 1, sm_count=1, T=CHUNK, walk=True, walk_segments=1,
                                     walk_refine=refine)["walk_refine"] == 1  # one segment: no summary pass
    inputs = make_inputs(2, 8, length, 4, has_h0=True, seed=length + (refine or 0))
    check_against_ref(inputs, torch.float32, forward="walk", switches=dict(walk_segments=4, walk_refine=refine))


def test_config_errors_name_the_key():
    inputs = make_inputs(1, 3, 20, 4, has_h0=False, seed=7)
    with pytest.raises(ValueError, match=r"unknown scan config keys \['wlak'\]"):
        triton_scan.selective_scan_triton(**inputs, config=dict(wlak=True))
    with pytest.raises(ValueError, match="scan config T must be an int"):
        triton_scan.selective_scan_triton(**inputs, config=dict(T=[128]))
    with pytest.raises(ValueError, match="unknown scan config keys"):
        triton_scan.choose_config(1, 3, 20, 4, 1, bwd_bd=2)


def test_backward_split_override():
    """``bwd_split`` asks for that many channel splits of the backward, in whole tiles of its channels."""
    cfg = triton_scan.choose_config(16, 512, 1024, 16, 1)
    assert (cfg["bwd_n_split"], cfg["bwd_DS"]) == (8, 64)  # the rule: about four programs a multiprocessor
    cfg = triton_scan.choose_config(16, 512, 1024, 16, 1, bwd_split=4)
    assert (cfg["bwd_n_split"], cfg["bwd_DS"]) == (4, 128)
    cfg = triton_scan.choose_config(1, 6, 100, 4, 1, bwd_split=4)  # 2-channel tiles: 3 splits of 2 channels
    assert (cfg["bwd_n_split"], cfg["bwd_DS"]) == (3, 2)
