"""What a launcher decides for one launch, as a value.

Each kernel module has a plan function that maps the sizes its caller already
knows on the host (N, the token count, H, ...) to a `LaunchConfig`: the
kernel's constexpr block sizes and flags, its warps and pipeline stages. The
launcher launches with it, and the ahead-of-time check (kernels/aot.py) sweeps
the plan functions over the input range and compiles every config they
return, for sm_90 and sm_80: one copy of the choice logic. Plans read no
device data, so a launch never waits on the GPU, and they return a bounded
set of configs, so every kernel is compiled once (`kernels.warm_up` compiles
them up front).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LaunchConfig:
    """`meta`: (name, value) pairs of the kernel's constexpr arguments, sorted by name."""

    meta: tuple[tuple[str, object], ...]
    num_warps: int = 4
    num_stages: int = 1

    def kwargs(self) -> dict:
        return {**dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.meta) + f" warps={self.num_warps} stages={self.num_stages}"


def launch_config(num_warps: int = 4, num_stages: int = 1, **meta) -> LaunchConfig:
    return LaunchConfig(tuple(sorted(meta.items())), num_warps, num_stages)


def new_output(shape, poison: bool, device, dtype=torch.float32) -> torch.Tensor:
    """An output buffer: NaN-poisoned (so a test sees an element the kernel never wrote) when the
    call validates, uninitialised (no fill launch) on the trusted hot path."""
    if poison:
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
