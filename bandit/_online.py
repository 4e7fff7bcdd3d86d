"""Shared pieces of the online learners: context/gain checks, running moments, bounded replay."""

from __future__ import annotations

import torch

from rollout_bandits.validation import (  # noqa: F401  (re-exported for the learners)
    check_choice,
    check_float,
    check_int,
    fail,
    shape_str,
)


def check_contexts(owner: str, x, feature_dim: int) -> torch.Tensor:
    """Contexts must be finite [N, D] with the learner's D; a mismatch means the wrong feature set."""
    if not isinstance(x, torch.Tensor):
        fail(owner, "contexts", type(x).__name__, f"a torch.Tensor [N, {feature_dim}]")
    if x.dim() != 2 or x.shape[1] != feature_dim:
        fail(owner, "contexts", f"shape {shape_str(x)}", f"[N, {feature_dim}] (the learner's feature width)")
    if not x.dtype.is_floating_point:
        fail(owner, "contexts", f"dtype {x.dtype}", "a floating dtype")
    if x.numel() and not bool(torch.isfinite(x).all()):
        row = int(torch.nonzero(~torch.isfinite(x))[0, 0])
        fail(owner, "contexts", f"NaN or inf in row {row}", "finite contexts")
    return x


def check_gains(owner: str, gains, n: int) -> torch.Tensor:
    if not isinstance(gains, torch.Tensor):
        gains = torch.as_tensor(gains, dtype=torch.float32)
    if gains.dim() != 1 or gains.numel() != n:
        fail(owner, "gains", f"shape {shape_str(gains)}", f"[{n}] (one per arm)")
    if not gains.dtype.is_floating_point:
        fail(owner, "gains", f"dtype {gains.dtype}", "a floating dtype")
    if n and not bool(torch.isfinite(gains).all()):
        i = int(torch.nonzero(~torch.isfinite(gains))[0])
        fail(owner, "gains", f"{gains[i].item()} at position {i}", "finite gains")
    return gains


class RunningMoments:
    """Per-column mean and variance over every row ever seen (Chan's parallel update, float64)."""

    def __init__(self, width: int):
        self.count = 0.0
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.m2 = torch.zeros(width, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to("cpu", torch.float64).reshape(-1, self.mean.numel())
        n = x.shape[0]
        if n == 0:
            return
        bm = x.mean(0)
        bm2 = ((x - bm) ** 2).sum(0)
        tot = self.count + n
        delta = bm - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + bm2 + delta**2 * (self.count * n / tot)
        self.count = tot

    def std(self, floor: float) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / self.count).sqrt().clamp_min(floor)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.clone(), "m2": self.m2.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.count = float(s["count"])
        self.mean = s["mean"].to(torch.float64).clone()
        self.m2 = s["m2"].to(torch.float64).clone()


class Replay:
    """Ring buffer of the most recent (context, gain, extra columns) pairs: bounded memory."""

    def __init__(self, capacity: int, width: int, extra: dict[str, int] | None = None):
        self.capacity = capacity
        self.x = torch.zeros(capacity, width)
        self.y = torch.zeros(capacity)
        self.extra = {k: torch.zeros(capacity, w) for k, w in (extra or {}).items()}
        self.size = 0
        self.pos = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> None:
        n = x.shape[0]
        if n > self.capacity:  # only the newest fit
            x, y = x[-self.capacity:], y[-self.capacity:]
            extra = {k: v[-self.capacity:] for k, v in extra.items()}
            n = self.capacity
        idx = (self.pos + torch.arange(n)) % self.capacity
        self.x[idx] = x.detach().to("cpu", torch.float32)
        self.y[idx] = y.detach().to("cpu", torch.float32)
        for k, v in extra.items():
            self.extra[k][idx] = v.detach().to("cpu", torch.float32).reshape(n, -1)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.size, (min(n, self.size),), generator=generator)

    def state_dict(self) -> dict:
        return {"x": self.x[: self.size].clone(), "y": self.y[: self.size].clone(),
                "extra": {k: v[: self.size].clone() for k, v in self.extra.items()},
                "size": self.size, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        n = int(s["size"])
        if n > self.capacity:
            raise ValueError(f"Replay: found {n} stored pairs, expected at most the capacity {self.capacity}")
        self.x.zero_()
        self.y.zero_()
        self.x[:n] = s["x"]
        self.y[:n] = s["y"]
        for k, v in self.extra.items():
            v.zero_()
            v[:n] = s["extra"][k]
        self.size, self.pos = n, int(s["pos"])
