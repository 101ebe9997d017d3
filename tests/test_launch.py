"""kernels.launch: the key it caches compiled kernels under is never coarser than Triton's specialization,
and a launch through it computes what ``kernel[grid]`` does (the interpreter's path on the CPU, the
compiled kernel's own launcher from the second call on a GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel below is defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from mamba_audio.kernels import launch as launch_module  # noqa: E402
from mamba_audio.kernels.launch import _spec, launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr, NEGATE: tl.constexpr = False):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = i < n
    r = a * tl.load(x_ptr + i, mask=keep) + tl.load(y_ptr + i, mask=keep)
    tl.store(out_ptr + i, -r if NEGATE else r, mask=keep)


def test_the_key_tells_apart_what_triton_specializes_on():
    x = torch.zeros(64)
    assert _spec(x) != _spec(x[1:])  # 16-byte alignment of the address
    assert _spec(x) != _spec(x.double())  # pointer type
    assert len({_spec(v) for v in (1, 16, 17, 2**31, True)}) == 5  # == 1, divisible by 16, int64, bool
    assert _spec(3) == _spec(5)  # what Triton does not specialize on shares a key
    with pytest.raises(TypeError, match="positional"):
        _spec("text")


@pytest.mark.parametrize("offset", [0, 1])
def test_launch_computes_what_the_kernel_does(offset):
    g = torch.Generator().manual_seed(offset)
    x, y = (torch.randn(101, generator=g).to(DEVICE)[offset:] for _ in range(2))
    for negate in (False, True, False):  # the second launch of a key takes the cached kernel on a GPU
        out = torch.empty_like(x)
        launch(_axpy_kernel, (triton.cdiv(x.numel(), 32),), x, y, out, 2.5, x.numel(), BLOCK=32, NEGATE=negate)
        want = 2.5 * x + y
        torch.testing.assert_close(out, -want if negate else want)
    if DEVICE == "cuda":
        assert any(key[0] is _axpy_kernel for key in launch_module._COMPILED)
