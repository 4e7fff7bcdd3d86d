"""EE-Net explorer: an exploitation MLP f1 plus an exploration MLP f2 on f1's gradient.

Reconstruction [ours] of EE-Net (Ban et al., ICLR 2022; the paper's last
author), offered because the paper's exploration mechanism is unconfirmed
(docs/method.md, section 5):
- f1(x) (`mlp`) regresses the gain, exactly like NeuralUCB's MLP;
- f2 (`explore`) sees grad_theta f1(x), average-pooled to `grad_width` and scaled
  to unit RMS, and regresses the residual r - f1(x) measured when the arm was
  observed (before f1 trained on it): it learns where f1 is still wrong, in either
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rollout_bandits.bandit._online import (
    LearnerConfig,
    OnlineLearner,
    _adam_step,
    check_float,
    check_int,
)


@dataclass
class EENetConfig(LearnerConfig):
    """`grad_width`: the pooled gradient f2 reads; `explore_hidden`: f2's width;
    `explore_weight`: the weight of f2's term in the score."""

    grad_width: int = 64
    explore_hidden: int = 64
    explore_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "EENetConfig"
        check_int(o, "grad_width", self.grad_width, 1)
        check_int(o, "explore_hidden", self.explore_hidden, 1)
        check_float(o, "explore_weight", self.explore_weight, 0.0)


def _act_grad(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return (z > 0).to(z.dtype)
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


class EENet(OnlineLearner):
    """Same scorer interface as NeuralUCB; scores with `score` (no kernel)."""

    name = "ee_net"

    def __init__(self, config: EENetConfig | None = None):
        super().__init__(config or EENetConfig())
        cfg, g = self.config, self.generator
        self.explore = torch.nn.Sequential(torch.nn.Linear(cfg.grad_width, cfg.explore_hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(cfg.explore_hidden, 1))
        with torch.no_grad():
            for p in self.explore.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else cfg.explore_hidden
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / math.sqrt(fan_in))
        self.explore_optimizer = torch.optim.Adam(self.explore.parameters(), lr=cfg.lr,
                                                  weight_decay=cfg.weight_decay)

    def _replay_extra(self) -> dict[str, int]:
        return {"grad": self.config.grad_width, "residual": 1}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"mlp": self.mlp, "explore": self.explore}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer, "explore_optimizer": self.explore_optimizer}

    def gradient_features(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1(xs), grad_theta f1(xs) pooled to grad_width, unit RMS per row), xs standardized."""
        m, act = self.mlp, self.config.activation
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

    def _score(self, x: torch.Tensor, backend: str):
        ly, sy = self._label_scale()
        f, g = self.gradient_features(self.standardize(x))
        with torch.no_grad():
            explore = self.explore(g)[:, 0]
        mean = (f * sy + ly).float()
        bonus = (self.config.explore_weight * explore * sy).float()
        return (mean + bonus).to(x.device), mean.to(x.device), bonus.to(x.device)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, g = self.gradient_features(self.standardize(x))
        self._check_finite(f, "prediction")
        self._check_finite(g, "gradient")
        return f, g

    def _learn(self, x: torch.Tensor, gains: torch.Tensor, prepared) -> None:
        # The residual before f1 learns from these arms is what f2 must predict for unseen ones.
        f, g = prepared
        ly, sy = self._label_scale()
        residual = (gains - ly) / sy - f
        self.replay.add(x, gains, grad=g, residual=residual[:, None])
        self._train()

    def _train_extra(self, idx: torch.Tensor) -> None:
        r = self.replay.extra
        _adam_step(self.explore_optimizer, F.mse_loss(self.explore(r["grad"][idx])[:, 0], r["residual"][idx, 0]))
