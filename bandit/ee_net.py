"""EE-Net explorer: an exploitation MLP f1 plus an exploration MLP f2 on f1's gradient.

Reconstruction [ours] of EE-Net (Ban et al., ICLR 2022; the paper's last
author), offered because the paper's exploration mechanism is unconfirmed:
- f1(x) regresses the gain, exactly like NeuralUCB's MLP;
- f2 sees grad_theta f1(x), average-pooled to `grad_width` and scaled to unit
  RMS, and regresses the residual r - f1(x) measured when the arm was observed
  (before f1 trained on it): it learns where f1 is still wrong, in either
  direction, instead of a symmetric confidence width;
- score = f1(x) + explore_weight * f2(grad f1(x)); mean = f1, bonus = the f2 term
  (which may be negative).
The gradient of the 3-layer MLP is written out analytically (ReLU or GELU), so
scoring N contexts is a handful of batched matmuls. EE-Net does not fit the
`ucb_score` kernel, so `export_weights` returns None and the scheduler scores
with `score` (plain torch, on any device).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rollout_bandits.bandit._online import (
    Replay,
    RunningMoments,
    check_choice,
    check_contexts,
    check_float,
    check_gains,
    check_int,
    fail,
)
from rollout_bandits.bandit.neural_ucb import MLP
from rollout_bandits.kernels.rollout_features import NUM_FEATURES


@dataclass
class EENetConfig:
    feature_dim: int = NUM_FEATURES
    hidden: int = 64
    activation: str = "relu"
    grad_width: int = 64
    explore_hidden: int = 64
    explore_weight: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    train_steps: int = 8
    train_batch: int = 128
    replay_capacity: int = 4096
    feature_std_floor: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        o = "EENetConfig"
        check_int(o, "feature_dim", self.feature_dim, 1)
        check_int(o, "hidden", self.hidden, 1)
        check_choice(o, "activation", self.activation, ("relu", "gelu"))
        check_int(o, "grad_width", self.grad_width, 1)
        check_int(o, "explore_hidden", self.explore_hidden, 1)
        check_float(o, "explore_weight", self.explore_weight, 0.0)
        check_float(o, "lr", self.lr, 0.0, lo_open=True)
        check_float(o, "weight_decay", self.weight_decay, 0.0)
        check_int(o, "train_steps", self.train_steps, 0)
        check_int(o, "train_batch", self.train_batch, 1)
        check_int(o, "replay_capacity", self.replay_capacity, 1)
        check_float(o, "feature_std_floor", self.feature_std_floor, 0.0, lo_open=True)
        check_int(o, "seed", self.seed, 0)


def _act_grad(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return (z > 0).to(z.dtype)
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


class EENet:
    """Same scorer interface as NeuralUCB (score / observe / update_feature_stats / state_dict)."""

    name = "ee_net"

    def __init__(self, config: EENetConfig | None = None):
        self.config = cfg = config or EENetConfig()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.f1 = MLP(cfg.feature_dim, cfg.hidden, cfg.activation, self.generator)
        g = self.generator
        self.f2 = torch.nn.Sequential(torch.nn.Linear(cfg.grad_width, cfg.explore_hidden), torch.nn.ReLU(),
                                      torch.nn.Linear(cfg.explore_hidden, 1))
        with torch.no_grad():
            for p in self.f2.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else cfg.explore_hidden
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / math.sqrt(fan_in))
        self.opt1 = torch.optim.Adam(self.f1.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt2 = torch.optim.Adam(self.f2.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.feature_stats = RunningMoments(cfg.feature_dim)
        self.label_stats = RunningMoments(1)
        self.replay = Replay(cfg.replay_capacity, cfg.feature_dim,
                             extra={"grad": cfg.grad_width, "residual": 1})
        self.num_observed = 0

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def export_weights(self, device="cpu"):
        return None

    def update_feature_stats(self, x: torch.Tensor) -> None:
        check_contexts("EENet", x, self.feature_dim)
        self.feature_stats.update(x)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        sd = self.feature_stats.std(self.config.feature_std_floor)
        return ((x.detach().to("cpu", torch.float64) - self.feature_stats.mean) / sd).to(torch.float32)

    def _label_scale(self) -> tuple[float, float]:
        s = self.label_stats
        if s.count < 2 or float(s.m2[0]) <= 0.0:
            return (float(s.mean[0]) if s.count else 0.0), 1.0
        return float(s.mean[0]), math.sqrt(float(s.m2[0]) / s.count)

    def gradient_features(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1(xs), grad_theta f1(xs) pooled to grad_width, unit RMS per row), xs standardized."""
        m, act = self.f1, self.config.activation
        with torch.no_grad():
            z1, h1, z2, phi = m.hidden(xs)
            f = phi @ m.w3 + m.b3
            d2 = m.w3 * _act_grad(z2, act)  # df/dz2 [N, H]
            d1 = (d2 @ m.w2.T) * _act_grad(z1, act)  # df/dz1 [N, H]
            n = xs.shape[0]
            grads = torch.cat([
                (xs[:, :, None] * d1[:, None, :]).reshape(n, -1), d1,
                (h1[:, :, None] * d2[:, None, :]).reshape(n, -1), d2,
                phi, torch.ones(n, 1),
            ], dim=1)
            pooled = F.adaptive_avg_pool1d(grads[:, None, :], self.config.grad_width)[:, 0, :]
            rms = pooled.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        return f, pooled / rms

    def score(self, x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_contexts("EENet", x, self.feature_dim)
        if x.shape[0] == 0:
            e = torch.zeros(0, device=x.device)
            return e, e, e
        ly, sy = self._label_scale()
        f, g = self.gradient_features(self.standardize(x))
        with torch.no_grad():
            explore = self.f2(g)[:, 0]
        mean = (f * sy + ly).float()
        bonus = (self.config.explore_weight * explore * sy).float()
        return (mean + bonus).to(x.device), mean.to(x.device), bonus.to(x.device)

    def validate_observation(self, x, gains):
        check_contexts("EENet", x, self.feature_dim)
        return x, check_gains("EENet", gains, x.shape[0])

    def observe(self, x: torch.Tensor, gains) -> None:
        x, gains = self.validate_observation(x, gains)
        if x.shape[0] == 0:
            return
        x = x.detach().to("cpu", torch.float32)
        gains = gains.detach().to("cpu", torch.float32)
        self.label_stats.update(gains[:, None])
        ly, sy = self._label_scale()
        # The residual before f1 learns from these arms is what f2 must predict for unseen ones.
        f, g = self.gradient_features(self.standardize(x))
        residual = (gains - ly) / sy - f
        self.replay.add(x, gains, grad=g, residual=residual[:, None])
        cfg = self.config
        for _ in range(cfg.train_steps):
            idx = self.replay.sample(cfg.train_batch, self.generator)
            xs = self.standardize(self.replay.x[idx])
            ys = (self.replay.y[idx] - ly) / sy
            loss1 = F.mse_loss(self.f1(xs), ys)
            self.opt1.zero_grad(set_to_none=True)
            loss1.backward()
            self.opt1.step()
            loss2 = F.mse_loss(self.f2(self.replay.extra["grad"][idx])[:, 0], self.replay.extra["residual"][idx, 0])
            self.opt2.zero_grad(set_to_none=True)
            loss2.backward()
            self.opt2.step()
        self.num_observed += x.shape[0]

    def state_dict(self) -> dict:
        return {
            "kind": self.name,
            "config": asdict(self.config),
            "f1": {k: v.detach().clone() for k, v in self.f1.state_dict().items()},
            "f2": {k: v.detach().clone() for k, v in self.f2.state_dict().items()},
            "opt1": self.opt1.state_dict(),
            "opt2": self.opt2.state_dict(),
            "feature_stats": self.feature_stats.state_dict(),
            "label_stats": self.label_stats.state_dict(),
            "replay": self.replay.state_dict(),
            "generator": self.generator.get_state(),
            "num_observed": self.num_observed,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.name:
            fail("EENet", "state['kind']", repr(state.get("kind")), repr(self.name))
        if EENetConfig(**state["config"]) != self.config:
            fail("EENet", "state['config']", repr(state["config"]), f"this learner's config {asdict(self.config)}")
        self.f1.load_state_dict(state["f1"])
        self.f2.load_state_dict(state["f2"])
        self.opt1.load_state_dict(state["opt1"])
        self.opt2.load_state_dict(state["opt2"])
        self.feature_stats.load_state_dict(state["feature_stats"])
        self.label_stats.load_state_dict(state["label_stats"])
        self.replay.load_state_dict(state["replay"])
        self.generator.set_state(state["generator"])
        self.num_observed = int(state["num_observed"])
