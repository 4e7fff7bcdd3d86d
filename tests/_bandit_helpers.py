"""Helpers shared by the bandit tests (not a test module)."""

from __future__ import annotations

import io

import pytest
import torch


def states_equal(a, b, path: str = "state") -> list[str]:
    """Paths where two nested state dicts differ (NaN == NaN); empty when identical."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [path]
        if a.shape != b.shape or a.dtype != b.dtype:
            return [path]
        if a.dtype.is_floating_point:
            return [] if torch.equal(torch.nan_to_num(a, nan=1234.5), torch.nan_to_num(b, nan=1234.5)) else [path]
        return [] if torch.equal(a, b) else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [path]
        return [p for k in a for p in states_equal(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [path]
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in states_equal(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return []
    return [] if a == b else [path]


def roundtrip(state):
    """Through torch.save / torch.load (weights_only) on a BytesIO, as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    return n


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: threads only add contention on a shared machine. Autouse in every module
    that imports it."""
    n = one_thread()
    yield
    torch.set_num_threads(n)
