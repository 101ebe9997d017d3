"""Sequential PyTorch oracle for the selective scan and its single-step update.

Semantics follow mamba_ssm's ``selective_scan_fn`` / ``selective_state_update``
(Gu and Dao, 2023), plus two things streaming needs: an optional initial state
and the final state. Everything is accumulated in float32 (complex64 for complex
``A``) whatever the input dtype; outputs are cast back to ``u.dtype``.

Shapes (B batch, D channels, L length, N state size, G groups):

    u, delta, z       (B, D, L)
    A                 (D, N)       real or complex
    B, C              (B, N, L)    input-dependent
                      (B, G, N, L) input-dependent, grouped (D divisible by G)
                      (D, N)       time-invariant
    D, delta_bias     (D,)
    initial_state     (B, D, N)
    seq_idx           (B, L)       int32 or int64, non-decreasing along L

Variable-length packed batches: ``seq_idx`` names the sequence each position
belongs to. Where it changes (a sequence starts at t > 0) the state is reset to
zero before step t, so no information crosses from one sequence to the next.
``initial_state`` is the state before position 0, i.e. of the first sequence of
each batch row only; the final state is the last sequence's. The depthwise
convolution in front of the scan is the model's job, not the scan's.

With complex ``A`` the output is ``2 * Re(C h)``, the conjugate-pair convention
of mamba_ssm and S4D, so a model with N complex states behaves like one with 2N
real states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Discretized(NamedTuple):
    """The scan's inputs after bias and softplus, in float32 (or complex64 for complex A)."""

    delta: Tensor  # (B, D, L) float32
    A: Tensor  # (D, N)
    B: Tensor  # broadcastable to (B, D, L, N)
    C: Tensor  # broadcastable to (B, D, L, N)
    state_dtype: torch.dtype


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None) -> None:
    """Raise ValueError naming the first argument whose shape does not fit the others."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        if X.dim() == 2:
            ok = X.shape == (dim, n)
        elif X.dim() == 3:
            ok = X.shape == (batch, n, length)
        elif X.dim() == 4:
            ok = X.shape[0] == batch and X.shape[2:] == (n, length) and dim % X.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (dim, N)=({dim}, {n}), (batch, N, L)=({batch}, {n}, {length}) or "
                f"(batch, G, N, L) with dim divisible by G; got {tuple(X.shape)}"
            )
    for name, X in (("D", D), ("delta_bias", delta_bias)):
        if X is not None and X.shape != (dim,):
            raise ValueError(f"{name} must be (dim,)=({dim},), got {tuple(X.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must match u {tuple(u.shape)}, got {tuple(z.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, n):
        raise ValueError(
            f"initial_state must be (batch, dim, N)=({batch}, {dim}, {n}), got {tuple(initial_state.shape)}"
        )


def check_seq_idx(seq_idx: Tensor, u: Tensor) -> None:
    """Raise ValueError unless seq_idx is a (B, L) integer tensor on u's device, non-decreasing along L."""
    batch, _, length = u.shape
    if seq_idx.shape != (batch, length):
        raise ValueError(f"seq_idx must be (batch, length)=({batch}, {length}), got {tuple(seq_idx.shape)}")
    if seq_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"seq_idx must be int32 or int64, got {seq_idx.dtype}")
    if seq_idx.device != u.device:
        raise ValueError(f"seq_idx must be on {u.device} like u, got {seq_idx.device}")
    if length > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):  # one host sync per call
        raise ValueError("seq_idx must be non-decreasing along the sequence (packed sequences in order)")


def sequence_starts(seq_idx: Tensor) -> Tensor:
    """(B, L) bool: True at t > 0 where seq_idx changes, the positions whose incoming state is reset."""
    starts = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def seq_idx_from_cu_seqlens(cu_seqlens: Tensor, length: int | None = None) -> Tensor:
    """(1, L) int32 seq_idx for one packed row from cumulative lengths [0, l0, l0 + l1, ..., L].

    Positions past ``cu_seqlens[-1]`` (padding up to ``length``) form one more sequence.
    """
    cu = cu_seqlens.to("cpu", torch.int64)
    if cu.dim() != 1 or cu.numel() < 2 or cu[0] != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be 1-D, start at 0 and be non-decreasing, got {cu_seqlens.tolist()}")
    total = int(cu[-1])
    length = total if length is None else length
    if length < total:
        raise ValueError(f"length {length} is shorter than the packed sequences ({total})")
    positions = torch.arange(length)
    seq_idx = torch.searchsorted(cu[1:], positions, right=True)
    return seq_idx.to(device=cu_seqlens.device, dtype=torch.int32)[None]


def _channelwise(X: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """B or C as a tensor broadcastable to (B, D, L, N)."""
    X = X.to(dtype)
    if X.dim() == 2:  # (D, N), time-invariant
        return X[None, :, None, :]
    if X.dim() == 3:  # (B, N, L), shared by all channels
        return X.transpose(1, 2)[:, None]
    groups = X.shape[1]  # (B, G, N, L): channel d reads group d // (D / G)
    return X.transpose(2, 3).repeat_interleave(dim // groups, dim=1)


def discretize(u, delta, A, B, C, delta_bias=None, delta_softplus=False) -> Discretized:
    """The front half shared by every reference implementation: bias, softplus, dtypes, layouts."""
    state_dtype = torch.complex64 if A.is_complex() else torch.float32
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]
    return Discretized(delta, A.to(state_dtype), _channelwise(B, dim, state_dtype),
                       _channelwise(C, dim, state_dtype), state_dtype)


def finish(y: Tensor, u: Tensor, D=None, z=None) -> Tensor:
    """From y = C h (B, D, L) to the scan's output: real part, D skip, silu(z) gate; float32."""
    if y.is_complex():
        y = 2 * y.real
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    seq_idx: Tensor | None = None,
):
    """Selective scan, one time step at a time. The oracle: slow, simple, exact.

    Returns ``y`` (B, D, L) in ``u.dtype``, and with ``return_final_state`` also
    the state after the last step, (B, D, N) float32 (complex64 for complex A).
    With ``seq_idx`` the state restarts from zero at every sequence start.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, length = u.shape
    t = discretize(u, delta, A, B, C, delta_bias, delta_softplus)
    decay = torch.exp(t.delta[..., None] * t.A[:, None, :])  # (B, D, L, N)
    if seq_idx is not None:
        check_seq_idx(seq_idx, u)
        decay = torch.where(sequence_starts(seq_idx)[:, None, :, None], 0.0, decay)
    dBu = (t.delta * u.float())[..., None] * t.B  # (B, D, L, N)
    C_t = t.C.expand(batch, dim, length, A.shape[1])
    h = torch.zeros(batch, dim, A.shape[1], dtype=t.state_dtype, device=u.device)
    if initial_state is not None:
        h = h + initial_state.to(t.state_dtype)
    ys = []
    for i in range(length):
        h = decay[:, :, i] * h + dBu[:, :, i]
        ys.append((h * C_t[:, :, i]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape, dtype=t.state_dtype)
    y = finish(y, u, D, z).to(u.dtype)
    return (y, h) if return_final_state else y


def selective_state_update_ref(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """One step of the selective scan for a batch of streams, updating ``state`` in place.

    state (B, D, N) float32 or complex64; x, dt, z (B, D); A (D, N);
    B, C (B, N) or grouped (B, G, N); D, dt_bias (D,). Returns y (B, D) in x.dtype.
    Per-channel time-invariant B/C are the grouped case with G = D.
    """
    batch, dim = x.shape
    if state.shape != (batch, dim, A.shape[1]):
        raise ValueError(f"state must be (batch, dim, N)=({batch}, {dim}, {A.shape[1]}), got {tuple(state.shape)}")
    # The step is the scan at L = 1: it shares the scan's discretization and output stage.
    t = discretize(x[..., None], dt[..., None], A, B[..., None], C[..., None], dt_bias, dt_softplus)
    decay = torch.exp(t.delta[..., None] * t.A[:, None, :])[:, :, 0]
    dBx = ((t.delta * x[..., None].float())[..., None] * t.B)[:, :, 0]
    h = decay * state.to(t.state_dtype) + dBx
    state.copy_(h)
    y = (h * t.C[:, :, 0]).sum(-1)
    return finish(y[..., None], x[..., None], D, None if z is None else z[..., None])[..., 0].to(x.dtype)
