"""`triton` and `triton.language` where triton is installed, stand-ins where it is not.

The kernel modules import them from here, so RolloutBatch, the PyTorch references and the
Scheduler import with torch and numpy alone (triton ships Linux wheels only). The stand-ins
let the `@triton.jit` definitions load; `validation.resolve_backend` never picks the Triton
backend without triton, and a stand-in kernel that is launched anyway says why.
"""

from __future__ import annotations

from types import SimpleNamespace

from rollout_bandits.validation import triton_available

if triton_available():
    import triton
    import triton.language as tl
else:

    class _Unavailable:
        """A `@triton.jit` function without triton: loads, fails when launched."""

        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            raise ImportError(f"{self.fn.__name__} is a Triton kernel and the triton package is not installed")

        __call__ = __getitem__

    def _jit(fn=None, **_options):
        """`@triton.jit` and `@triton.jit(do_not_specialize=...)` alike."""
        return _Unavailable if fn is None else _Unavailable(fn)

    triton = SimpleNamespace(jit=_jit)
    tl = SimpleNamespace(constexpr=lambda value: value)

__all__ = ["tl", "triton"]
