"""Launching a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args, **kwargs)`` binds and specializes every argument on every call. On the H100 machine's
host that cost 15-22 us for an empty kernel of one argument, 28-39 us for one of 41 and about 60 us for the
walk forward's 40 with its 14 constexprs, where the compiled kernel called directly took 12-16 us
(benchmarks/NOTES_scan.md, version 11): at short sequences more than the kernels' own time. ``launch`` keys
the compiled kernel on everything Triton specializes on (each tensor's dtype and 16-byte alignment; each
integer's width, whether it is 1 and whether 16 divides it; the keyword arguments; the current device), goes
through Triton once per key (which compiles or loads the kernel, and launches it), and from then on calls the
compiled kernel itself. The key is never coarser than Triton's, so a cached kernel is only reused where Triton
would pick the same one.

Under the interpreter (``TRITON_INTERPRET=1``) there is nothing compiled: Triton's path, every call.
"""

from __future__ import annotations

import torch
from triton.runtime.jit import JITFunction

_COMPILED: dict = {}
_I32 = (-(2**31), 2**31)


def _spec(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or arg is None or isinstance(arg, float):
        return type(arg)
    if isinstance(arg, int):
        return arg == 1, arg % 16 == 0, _I32[0] <= arg < _I32[1]
    raise TypeError(f"launch takes tensors, ints, floats, bools and None as positional arguments, got {type(arg)}")


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``: constexprs and launch options (num_warps, maxnreg, ...) by keyword,
    every other argument by position."""
    if not isinstance(kernel, JITFunction):  # the interpreter's function
        kernel[grid](*args, **kwargs)
        return
    key = (kernel, torch.cuda.current_device(), tuple(kwargs.items()), *map(_spec, args))
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **kwargs)  # Triton's path: compiles or loads, then launches
        # the compiled launcher takes every parameter in order, constexprs included (unpassed: their defaults)
        _COMPILED[key] = compiled, tuple(kwargs[p.name] if p.name in kwargs else p.default
                                         for p in kernel.params[len(args):])
        return
    compiled, constexprs = entry
    grid3 = (*grid, 1, 1)[:3]
    compiled[grid3](*args, *constexprs)
