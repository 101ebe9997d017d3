"""The chunked scan and the step update against the sequential oracle."""

import itertools

import pytest
import torch

from mamba_audio.kernels import selective_scan, selective_state_update
from mamba_audio.kernels.selective_scan import selective_scan_chunked, selective_scan_ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_err(a, b):
    """Relative error of the whole tensor, in float32 (complex64 for complex tensors)."""
    a, b = (a.to(torch.complex64), b.to(torch.complex64)) if b.is_complex() else (a.float(), b.float())
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_inputs(batch=2, dim=6, length=37, n=4, bc="variable", complex_a=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta, z = r(batch, dim, length).to(dtype), (0.5 * r(batch, dim, length)).to(dtype), r(batch, dim, length).to(dtype)
    if complex_a:
        A = torch.complex(-torch.rand(dim, n, generator=g) - 0.1, r(dim, n))
    else:
        A = -torch.rand(dim, n, generator=g) - 0.1
    if bc == "variable":
        B, C = r(batch, n, length).to(dtype), r(batch, n, length).to(dtype)
    elif bc == "grouped":
        B, C = r(batch, 2, n, length).to(dtype), r(batch, 3, n, length).to(dtype)
    else:
        B, C = r(dim, n), r(dim, n)
        if complex_a:
            B, C = torch.complex(B, r(dim, n)), torch.complex(C, r(dim, n))
    extras = dict(D=r(dim), z=z, delta_bias=0.1 * r(dim))
    state_dtype = torch.complex64 if complex_a else torch.float32
    h0 = r(batch, dim, n).to(state_dtype) if not complex_a else torch.complex(r(batch, dim, n), r(batch, dim, n))
    return (u, delta, A, B, C), extras, h0


OPTIONS = list(itertools.product(["variable", "grouped", "invariant"], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("bc,use_extras,softplus,complex_a", OPTIONS,
                         ids=[f"{b}-extras{e}-sp{s}-cplx{c}" for b, e, s, c in OPTIONS])
@pytest.mark.parametrize("length", [1, 37, 64])
def test_chunked_matches_sequential_all_options(bc, use_extras, softplus, complex_a, length):
    if complex_a and bc != "invariant":
        bc = "invariant"  # complex B/C are per-channel parameters, as in S4D
    args, extras, h0 = make_inputs(length=length, bc=bc, complex_a=complex_a)
    kw = dict(extras if use_extras else {}, delta_softplus=softplus, initial_state=h0 if use_extras else None,
              return_final_state=True)
    y_ref, s_ref = selective_scan_ref(*args, **kw)
    y, s = selective_scan_chunked(*args, **kw, chunk_size=16)
    assert rel_err(y, y_ref) < 1e-5
    assert (s - s_ref).abs().max() < 1e-4 * (1 + s_ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length,chunk", [(63, 8), (5, 16), (200, 32)])
def test_chunked_dtypes_and_odd_lengths(dtype, length, chunk):
    args, extras, _ = make_inputs(length=length, dtype=dtype, dim=5, n=3)
    y_ref = selective_scan_ref(*args, **extras, delta_softplus=True)
    y = selective_scan_chunked(*args, **extras, delta_softplus=True, chunk_size=chunk)
    assert y.dtype == dtype and y_ref.dtype == dtype
    assert rel_err(y, y_ref) < TOL[dtype]


@pytest.mark.parametrize("impl", [selective_scan_ref, selective_scan_chunked])
def test_state_carries_across_halves(impl):
    (u, delta, A, B, C), extras, h0 = make_inputs(length=50, bc="variable")
    kw = dict(D=extras["D"], delta_softplus=True, return_final_state=True)
    y_full, s_full = impl(u, delta, A, B, C, z=extras["z"], initial_state=h0, **kw)
    cut = 23
    y1, s1 = impl(u[..., :cut], delta[..., :cut], A, B[..., :cut], C[..., :cut], z=extras["z"][..., :cut],
                  initial_state=h0, **kw)
    y2, s2 = impl(u[..., cut:], delta[..., cut:], A, B[..., cut:], C[..., cut:], z=extras["z"][..., cut:],
                  initial_state=s1, **kw)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s_full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bc", ["variable", "grouped", "invariant"])
def test_chunked_gradients_match_sequential(bc):
    args, extras, h0 = make_inputs(length=45, bc=bc)
    leaves = [t.clone().requires_grad_() for t in (*args, extras["D"], extras["z"], extras["delta_bias"], h0)]

    def grads(impl, **kw):
        u, delta, A, B, C, D, z, bias, init = [t.detach().clone().requires_grad_() for t in leaves]
        y, s = impl(u, delta, A, B, C, D, z, bias, True, init, True, **kw)
        (y.square().sum() + s.sum()).backward()
        return [t.grad for t in (u, delta, A, B, C, D, z, bias, init)]

    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    for name, g, g_ref in zip(names, grads(selective_scan_chunked, chunk_size=8), grads(selective_scan_ref)):
        assert rel_err(g, g_ref) < 1e-4, name


def test_complex_gradients_match_sequential():
    (u, delta, A, B, C), _, h0 = make_inputs(length=30, bc="invariant", complex_a=True)

    def grads(impl, **kw):
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        impl(*leaves, delta_softplus=True, **kw).square().sum().backward()
        return [t.grad for t in leaves]

    for g, g_ref in zip(grads(selective_scan_chunked, chunk_size=8), grads(selective_scan_ref)):
        assert rel_err(g, g_ref) < 1e-4


@pytest.mark.parametrize("bc", ["variable", "grouped"])
def test_step_update_equals_scan(bc):
    """Stepping the recurrence one position at a time reproduces the scan and its final state."""
    (u, delta, A, B, C), extras, h0 = make_inputs(length=12, bc=bc)
    y_ref, s_ref = selective_scan_ref(u, delta, A, B, C, **extras, delta_softplus=True, initial_state=h0,
                                      return_final_state=True)
    state = h0.clone()
    ys = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], extras["D"],
                                 extras["z"][..., t], extras["delta_bias"], True) for t in range(u.shape[-1])]
    torch.testing.assert_close(torch.stack(ys, -1), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, s_ref, rtol=1e-5, atol=1e-5)


def test_dispatch_defaults_to_chunked_on_cpu_and_rejects_unknown_backend():
    args, extras, _ = make_inputs()
    torch.testing.assert_close(selective_scan(*args, **extras), selective_scan_chunked(*args, **extras))
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        selective_scan(*args, backend="nope")


@pytest.mark.parametrize("bad,match", [
    (dict(delta=torch.zeros(2, 6, 36)), "delta must match u"),
    (dict(A=torch.zeros(5, 4)), "A must be"),
    (dict(B=torch.zeros(2, 4, 36)), "B must be"),
    (dict(C=torch.zeros(2, 4, 4, 37)), "C must be"),
    (dict(D=torch.zeros(7)), "D must be"),
    (dict(initial_state=torch.zeros(2, 6, 5)), "initial_state must be"),
])
def test_shape_errors_name_the_argument(bad, match):
    (u, delta, A, B, C), _, _ = make_inputs()
    kw = dict(u=u, delta=delta, A=A, B=B, C=C) | bad
    with pytest.raises(ValueError, match=match):
        selective_scan(**kw)


def _packed_row(length, starts):
    row = torch.zeros(length, dtype=torch.int32)
    for t in starts:
        row[t:] += 1
    return row


@pytest.mark.parametrize("impl", [selective_scan_ref, selective_scan_chunked])
def test_packed_row_equals_sequences_run_alone(impl):
    """seq_idx semantics: each packed sequence starts from zero, except the first of a row, which starts
    from initial_state; the final state is the last sequence's."""
    (u, delta, A, B, C), extras, h0 = make_inputs(batch=2, length=40, bc="grouped")
    starts = [[8, 9, 31], [16]]
    seq_idx = torch.stack([_packed_row(40, s) for s in starts])
    y, final = impl(u, delta, A, B, C, **extras, delta_softplus=True, initial_state=h0, return_final_state=True,
                    seq_idx=seq_idx)
    for b, cuts in enumerate(starts):
        bounds = [0, *cuts, 40]
        state = h0[b:b + 1]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = [x[b:b + 1, ..., lo:hi] for x in (u, delta)] + [A] + [x[b:b + 1, ..., lo:hi] for x in (B, C)]
            y_alone, state = selective_scan_ref(*part, D=extras["D"], z=extras["z"][b:b + 1, :, lo:hi],
                                                delta_bias=extras["delta_bias"], delta_softplus=True,
                                                initial_state=state if lo == 0 else None, return_final_state=True)
            torch.testing.assert_close(y[b:b + 1, :, lo:hi], y_alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final[b:b + 1], state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length,chunk,starts", [(37, 8, [[8, 16], [3, 4, 36]]), (9, 16, [[1], []])],
                         ids=["on-and-inside-chunks", "short"])
def test_chunked_packed_matches_sequential_with_gradients(length, chunk, starts):
    args, extras, h0 = make_inputs(length=length, bc="variable")
    seq_idx = torch.stack([_packed_row(length, s) for s in starts]).long()
    leaves = [t.clone().requires_grad_() for t in (*args, extras["D"], extras["z"], extras["delta_bias"], h0)]

    def run(impl, **kw):
        ts = [t.detach().clone().requires_grad_() for t in leaves]
        y, s = impl(*ts[:8], True, ts[8], True, seq_idx=seq_idx, **kw)
        (y.square().sum() + s.sum()).backward()
        return [y, s] + [t.grad for t in ts]

    for got, want in zip(run(selective_scan_chunked, chunk_size=chunk), run(selective_scan_ref)):
        assert rel_err(got, want) < 1e-4


def test_seq_idx_from_cu_seqlens_and_errors():
    from mamba_audio.kernels import seq_idx_from_cu_seqlens

    seq_idx = seq_idx_from_cu_seqlens(torch.tensor([0, 3, 3, 7]), length=9)
    assert seq_idx.dtype == torch.int32
    assert seq_idx.tolist() == [[0, 0, 0, 2, 2, 2, 2, 3, 3]]  # the empty second sequence takes no position
    with pytest.raises(ValueError, match="cu_seqlens must"):
        seq_idx_from_cu_seqlens(torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="shorter"):
        seq_idx_from_cu_seqlens(torch.tensor([0, 5]), length=4)
    (u, delta, A, B, C), _, _ = make_inputs(batch=1, length=9)
    with pytest.raises(ValueError, match="non-decreasing"):
        selective_scan(u, delta, A, B, C, seq_idx=torch.tensor([[0, 1, 0, 1, 1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="int32 or int64"):
        selective_scan(u, delta, A, B, C, seq_idx=seq_idx.float())
    with pytest.raises(ValueError, match="seq_idx must be"):
        selective_scan(u, delta, A, B, C, seq_idx=seq_idx[:, :5], backend="reference")
