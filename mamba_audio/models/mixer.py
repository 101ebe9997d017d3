"""The Mamba mixer: in-projection, causal depthwise conv, SSM scan, gating, out-projection.

One class serves both SSM kinds of ``MixerConfig``: the selective "mamba" (S6)
computes delta, B and C from the input; the time-invariant "s4d" learns them
as parameters. Both run on the same scan kernel and the same step update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_audio.kernels import block_step_folds_norm_bias, mamba_block_step, mamba_step, selective_scan

from .config import MixerConfig

Tensor = torch.Tensor


@dataclass
class MixerState:
    """Streaming state of one mixer for a batch of streams."""

    conv: Tensor  # (B, E, d_conv): the last d_conv inputs of the depthwise conv
    ssm: Tensor  # (B, E, N) float32, or complex64 for complex A


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


class MambaMixer(nn.Module):
    """Mamba mixer over (B, L, H) sequences, with ``step`` for one position of a batch of streams."""

    def __init__(self, d_model: int, config: MixerConfig):
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.d_inner = E = config.expand * d_model
        self.d_state = N = config.d_state
        self.selective = config.kind == "mamba"
        self.is_complex = config.complex
        self.dt_rank = math.ceil(d_model / 16) if config.dt_rank == "auto" else int(config.dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * E, bias=config.bias)
        self.conv1d = nn.Conv1d(E, E, config.d_conv, groups=E, padding=config.d_conv - 1, bias=config.conv_bias)
        self.out_proj = nn.Linear(E, d_model, bias=config.bias)

        # delta = softplus(. + dt_bias), initialised log-uniformly in [dt_min, dt_max]
        dt = torch.exp(torch.rand(E) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
        self.dt_bias = nn.Parameter(_inverse_softplus(dt.clamp_min(1e-4)))
        parts = 2 if self.is_complex else 1  # complex B and C are stored as (real, imag) pairs
        if self.selective:
            self.x_proj = nn.Linear(E, self.dt_rank + 2 * parts * N, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, E, bias=False)
            nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        else:
            self.B = nn.Parameter(torch.randn(E, N, parts) * N**-0.5 if self.is_complex else torch.ones(E, N))
            self.C = nn.Parameter(torch.randn(E, N, parts) * N**-0.5 if self.is_complex else torch.randn(E, N) * N**-0.5)

        if self.is_complex:  # S4D-Lin: A_n = -1/2 + i pi n
            self.A_log = nn.Parameter(torch.full((E, N), math.log(0.5)))
            self.A_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float32).repeat(E, 1))
        else:  # S4D-Real: A_n = -(n + 1)
            self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self._step_caches: dict[str, tuple] = {}  # see _per_parameter_version

    # -- parameters of the SSM ------------------------------------------------------------------
    def A(self) -> Tensor:
        """(E, N) real or complex, with negative real part."""
        real = -torch.exp(self.A_log.float())
        return torch.complex(real, self.A_imag.float()) if self.is_complex else real

    def _per_parameter_version(self, name: str, params: tuple, compute):
        """``compute()``, computed once per version of ``params`` outside autograd (an in-place update or a move
        makes a new one), so that a step, or a CUDA graph of steps, launches nothing for it; under autograd every
        call computes it."""
        if torch.is_grad_enabled():
            return compute()
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        cached = self._step_caches.get(name)
        if cached is None or cached[0] != key:
            cached = self._step_caches[name] = (key, compute())
        return cached[1]

    def _step_constants(self) -> tuple[Tensor, Tensor, Tensor]:
        """A, D and dt_bias in float32 for ``step``, per version of the parameters."""
        params = (self.A_log, self.D, self.dt_bias) + ((self.A_imag,) if self.is_complex else ())
        return self._per_parameter_version("constants", params,
                                           lambda: (self.A(), self.D.float(), self.dt_bias.float()))

    def _block_step_in_bias(self, norm_bias: Tensor) -> Tensor:
        """in_proj's bias with a layer norm's bias folded in, float32 (2E,): in_proj(n + b) = in_proj_weight n +
        (in_proj_weight b + in_proj_bias); per version of the parameters."""
        in_bias = self.in_proj.bias
        params = (norm_bias, self.in_proj.weight) + ((in_bias,) if in_bias is not None else ())
        return self._per_parameter_version("in_proj_bias", params, lambda: F.linear(
            norm_bias.float(), self.in_proj.weight.float(), in_bias.float() if in_bias is not None else None))

    def _as_state_values(self, x: Tensor) -> Tensor:
        """Trailing (real, imag) pairs to complex; real values unchanged."""
        return torch.view_as_complex(x.float().contiguous()) if self.is_complex else x

    def _delta_B_C(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From conv output x (B, E, L): delta (B, E, L) before bias, B and C (B, N, L) or (E, N)."""
        if not self.selective:
            return torch.zeros_like(x), self._as_state_values(self.B), self._as_state_values(self.C)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2 parts N)
        n_bc = (x_dbl.shape[-1] - self.dt_rank) // 2
        dt, B, C = torch.split(x_dbl, [self.dt_rank, n_bc, n_bc], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2)
        if self.is_complex:
            B = torch.view_as_complex(B.float().unflatten(-1, (-1, 2)).contiguous())
            C = torch.view_as_complex(C.float().unflatten(-1, (-1, 2)).contiguous())
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    # -- parallel forward -----------------------------------------------------------------------
    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (B, L, H) -> (B, L, H), causal."""
        return self._mix(hidden)

    def _mix(self, hidden: Tensor, state: MixerState | None = None) -> Tensor:
        """The parallel path; with ``state``, continue from it and leave the state after the last position in it."""
        length = hidden.shape[1]
        if length == 0:
            return torch.zeros_like(hidden)
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        if state is None:
            x_conv = self.conv1d(x)[..., :length]
        else:  # the conv sees the last d_conv - 1 inputs before this sequence
            window = torch.cat([state.conv[..., 1:].to(x.dtype), x], dim=-1)
            x_conv = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
            state.conv.copy_(torch.cat([state.conv, x.to(state.conv.dtype)], dim=-1)[..., -self.config.d_conv:])
        x = F.silu(x_conv)
        delta, B, C = self._delta_B_C(x)
        scan_args = (x, delta, self.A(), B, C, self.D.float(), z, self.dt_bias.float())
        if state is None:
            y = selective_scan(*scan_args, delta_softplus=True)
        else:
            y, final = selective_scan(*scan_args, delta_softplus=True, initial_state=state.ssm,
                                      return_final_state=True)
            state.ssm.copy_(final)
        return self.out_proj(y.transpose(1, 2))

    # -- streaming ------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> MixerState:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        state_dtype = torch.complex64 if self.is_complex else torch.float32
        return MixerState(
            conv=torch.zeros(batch_size, self.d_inner, self.config.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype),
        )

    def prefill(self, hidden: Tensor, state: MixerState) -> Tensor:
        """Positions (B, L, H) -> (B, L, H) by the parallel scan, continuing from ``state`` and updating it in
        place, so that the state afterwards equals the state after ``step`` through the same positions."""
        return self._mix(hidden, state)

    def _step_ssm(self) -> dict[str, Tensor]:
        """How the fused step gets delta, B and C: the two projections (selective) or B and C (time-invariant)."""
        if self.selective:
            return dict(x_proj_weight=self.x_proj.weight, dt_proj_weight=self.dt_proj.weight)
        return dict(B=self._as_state_values(self.B), C=self._as_state_values(self.C))

    def step(self, hidden: Tensor, state: MixerState) -> Tensor:
        """One position: hidden (B, H) -> (B, H); updates ``state`` in place.

        Everything between the two projections (conv, x/dt projections, state update, D skip,
        gate) is one fused ``mamba_step``: a single Triton launch on CUDA, the reference on the CPU.
        """
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, E) each
        A, D, dt_bias = self._step_constants()
        y = mamba_step(x, z, state.conv, state.ssm, self.conv1d.weight[:, 0, :], self.conv1d.bias, A, D, dt_bias,
                       dt_softplus=True, **self._step_ssm())
        return self.out_proj(y)

    def block_step_tensors(self, norm: nn.Module, state: MixerState) -> dict[str, Tensor | None]:
        """The tensors of ``norm`` + this mixer's step on ``state``, named as ``mamba_block_step`` takes them
        (``kernels.selective_scan.step_ref.BLOCK_TENSORS``). ``norm`` is an affine ``nn.LayerNorm`` or an
        RMSNorm over H (``block_step_rms_norm`` tells which). Where the kernels advise it
        (``block_step_folds_norm_bias``), a layer norm's bias goes into in_proj's (``_block_step_in_bias``;
        the same function, float32 rounding aside)."""
        A, D, dt_bias = self._step_constants()
        norm_bias = None if block_step_rms_norm(norm) else norm.bias
        in_bias = self.in_proj.bias
        if norm_bias is not None and block_step_folds_norm_bias(self.d_model, self.d_inner):
            norm_bias, in_bias = None, self._block_step_in_bias(norm_bias)
        return dict(norm_weight=norm.weight, norm_bias=norm_bias,
                    in_proj_weight=self.in_proj.weight, in_proj_bias=in_bias,
                    out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias,
                    conv_state=state.conv, ssm_state=state.ssm, conv_weight=self.conv1d.weight[:, 0, :],
                    conv_bias=self.conv1d.bias, A=A, D=D, dt_bias=dt_bias, **self._step_ssm())

    def step_residual(self, hidden: Tensor, norm: nn.Module, state: MixerState) -> Tensor:
        """``hidden + self.step(norm(hidden))`` for one position (B, H), as one fused ``mamba_block_step``
        (a single Triton launch on CUDA). ``norm`` is an affine ``nn.LayerNorm`` or an RMSNorm over H."""
        return mamba_block_step(hidden, norm_eps=norm.eps, rms_norm=block_step_rms_norm(norm), dt_softplus=True,
                                **self.block_step_tensors(norm, state))


def block_step_rms_norm(norm: nn.Module) -> bool:
    """Whether the fused block step treats ``norm`` as an RMSNorm (weight only) rather than a LayerNorm."""
    return not isinstance(norm, nn.LayerNorm)
