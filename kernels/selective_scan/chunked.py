"""Chunked PyTorch selective scan: the CPU training path.

The sequence is cut into chunks of T steps, laid out time-major as
(T, B, D, chunks, N) so that each step reads one contiguous slice:

1. scan every chunk from a zero state, all chunks at once, keeping only each
   chunk's end state (a loop over the T positions of a chunk);
2. carry the state across chunk boundaries (a loop over the chunks), giving
   the state entering each chunk;
3. scan every chunk again, now from its entering state, and contract with C
   at each step, so no (B, D, L, N) state history is ever built.

With T near sqrt(L) that is about 3 sqrt(L) Python iterations instead of L.
Every operation is differentiable, so autograd provides the backward pass.
All decays are exp of numbers with non-positive real part, so nothing can
overflow (unlike the cumsum-and-divide formulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .naive import check_scan_inputs, check_seq_idx, discretize, finish, sequence_starts

Tensor = torch.Tensor


def default_chunk_size(length: int) -> int:
    """A power of two near sqrt(length), between 8 and 256."""
    return int(min(256, max(8, 2 ** round(math.log2(max(length, 1)) / 2))))


def _time_major_chunks(x: Tensor, length: int, T: int) -> Tensor:
    """(b, d, L, n) -> (T, b, d, chunks, n), zero-padded in time; a time-broadcast (b, d, 1, n) stays broadcast."""
    b, d, steps, n = x.shape
    if steps == 1 and length != 1:
        return x.reshape(1, b, d, 1, n)
    n_chunks = -(-length // T)
    x = F.pad(x, (0, 0, 0, n_chunks * T - length))
    # contiguous, so the products built from these come out time-major too
    return x.reshape(b, d, n_chunks, T, n).permute(3, 0, 1, 2, 4).contiguous()


def selective_scan_chunked(
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
    chunk_size: int | None = None,
):
    """Selective scan with the semantics of ``selective_scan_ref`` in O(sqrt(L)) Python steps."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if seq_idx is not None:
        check_seq_idx(seq_idx, u)
    batch, dim, length = u.shape
    n = A.shape[1]
    T = chunk_size or default_chunk_size(length)
    t = discretize(u, delta, A, B, C, delta_bias, delta_softplus)

    # Padded steps have delta = 0: decay exp(0) = 1 and no input, so they leave the state unchanged.
    delta_c = _time_major_chunks(t.delta[..., None], length, T)  # (T, B, D, chunks, 1)
    dtA = delta_c * t.A[None, None, :, None, :]  # (T, B, D, chunks, N)
    decay = torch.exp(dtA)
    chunk_decay = torch.exp(dtA.sum(0))  # (B, D, chunks, N): decay across a whole chunk
    if seq_idx is not None:
        # a sequence start zeroes the decay into it, and with it the decay across its chunk
        keep = 1.0 - _time_major_chunks(sequence_starts(seq_idx)[:, None, :, None].float(), length, T)
        decay = decay * keep
        chunk_decay = chunk_decay * keep.prod(0)
    dBu = _time_major_chunks((t.delta * u.float())[..., None], length, T) * _time_major_chunks(t.B, length, T)
    C_c = _time_major_chunks(t.C, length, T)
    n_chunks = dtA.shape[3]

    # unbind, not indexing: its backward stacks the T slice gradients once instead of
    # scattering each into a fresh full-size zero tensor.
    decay_t, dBu_t, C_t = decay.unbind(0), dBu.unbind(0), C_c.unbind(0)
    C_t = C_t * T if len(C_t) == 1 else C_t  # time-invariant C: the same slice at every step

    # 1. Each chunk's end state when entered from zero.
    h = torch.zeros_like(dBu_t[0])
    for i in range(T):
        h = decay_t[i] * h + dBu_t[i]

    # 2. The state entering each chunk.
    state = torch.zeros(batch, dim, n, dtype=t.state_dtype, device=u.device)
    if initial_state is not None:
        state = state + initial_state.to(t.state_dtype)
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = chunk_decay[:, :, c] * state + h[:, :, c]
    h = torch.stack(entering, dim=2)  # (B, D, chunks, N)

    # 3. Rescan each chunk from its entering state, reading out y = C h at every step.
    ys = []
    for i in range(T):
        h = decay_t[i] * h + dBu_t[i]
        ys.append((h * C_t[i]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, dim, n_chunks * T)[:, :, :length]
    y = finish(y, u, D, z).to(u.dtype)
    return (y, state) if return_final_state else y
