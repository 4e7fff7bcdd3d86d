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
The gradient of the 3-layer MLP is written out analytically (ReLU or GELU) and never
materialised: the flat gradient is a concatenation of outer products ([x, 1] (x) d1,
[h1, 1] (x) d2) and a vector ([phi, 1]), so each average-pooled bin is a sum over a few
rows of an outer product of u_i times a contiguous run of v (`PooledGradient`). Scoring N contexts costs O(N (D H + H^2)) like the forward
pass, not O(N D H + N H^2) memory traffic of the ~5k-wide gradient. EE-Net does not fit the
`ucb_score` kernel, so `export_weights` returns None and the scheduler scores
with `score` (plain torch, on any device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rollout_bandits.bandit._online import (
    FlatAdam,
    LearnerConfig,
    OnlineLearner,
    act_backward,
    check_float,
    check_int,
)


@dataclass
class EENetConfig(LearnerConfig):
    """`grad_width`: the pooled gradient f2 reads; `explore_hidden`: f2's width (both 32, so
    that f2's step costs no more than the MLP's: EE-Net's round stays near NeuralUCB's);
    `explore_weight`: the weight of f2's term in the score (chosen on the regret benchmark's
    tuning environments, benchmarks/regret_tune.py)."""

    grad_width: int = 32
    explore_hidden: int = 32
    explore_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "EENetConfig"
        check_int(o, "grad_width", self.grad_width, 1)
        check_int(o, "explore_hidden", self.explore_hidden, 1)
        check_float(o, "explore_weight", self.explore_weight, 0.0)


class PooledGradient:
    """adaptive_avg_pool1d(cat([u_k (x) v_k flattened row-major for each block k]), bins)
    without forming the outer products. Blocks are (rows P_k, cols Q_k) shapes; u_k None means a
    1-row block (the vector v_k itself). A bin's sum over block k is a sum over a few rows i of
    u_i times a contiguous run of v: `pieces` (bin, i, run), the runs summed by one matmul
    with a 0/1 matrix, the pieces averaged into their bins by another."""

    def __init__(self, blocks: list[tuple[int, int]], bins: int):
        sizes = [p * q for p, q in blocks]
        total = sum(sizes)
        starts = [sum(sizes[:k]) for k in range(len(blocks))]
        self.runs, self.rows, bin_of, lengths = [], [], [], []
        for k, ((_, q), s0, n) in enumerate(zip(blocks, starts, sizes, strict=True)):
            runs, rows = [], []
            for b in range(bins):  # torch's adaptive pooling bins: [floor(b L / B), ceil((b+1) L / B))
                lo, hi = (b * total) // bins, -((-(b + 1) * total) // bins)
                if k == 0:
                    lengths.append(hi - lo)
                a, e = max(lo, s0) - s0, min(hi, s0 + n) - s0
                for row in range(a // q, (e - 1) // q + 1) if a < e else ():
                    run = torch.zeros(q)
                    run[max(a, row * q) - row * q: min(e, (row + 1) * q) - row * q] = 1.0
                    runs.append(run)
                    rows.append(row)
                    bin_of.append(b)
            self.runs.append(torch.stack(runs, 1) if runs else torch.zeros(q, 0))  # [Q_k, pieces_k]
            self.rows.append(torch.tensor(rows, dtype=torch.int64))
        self.bins = bins
        self.bin_of = torch.tensor(bin_of, dtype=torch.int64)
        # [pieces, bins]: each piece into its bin, divided by the bin's length (the average).
        self.to_bins = torch.zeros(len(bin_of), bins)
        self.to_bins[torch.arange(len(bin_of)), self.bin_of] = 1.0 / torch.tensor(lengths, dtype=torch.float32)[self.bin_of]

    def __call__(self, blocks: list[tuple[torch.Tensor | None, torch.Tensor]]) -> torch.Tensor:
        parts = []
        for (u, v), runs, rows in zip(blocks, self.runs, self.rows, strict=True):
            part = v @ runs  # [N, pieces_k]: each piece's run of v summed
            parts.append(part if u is None else part * u.index_select(1, rows))
        return torch.cat(parts, 1) @ self.to_bins


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
        self.explore_optimizer = FlatAdam(self.explore, lr=cfg.lr, weight_decay=cfg.weight_decay)
        d, h = cfg.feature_dim, cfg.hidden
        # The flat gradient in parameter order: (w1, b1) = [x, 1] (x) d1, (w2, b2) = [h1, 1] (x) d2,
        # (w3, b3) = [phi, 1].
        self.pooling = PooledGradient([(d + 1, h), (h + 1, h), (1, h + 1)], cfg.grad_width)

    def _replay_extra(self) -> dict[str, int]:
        return {"grad": self.config.grad_width, "residual": 1}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"mlp": self.mlp, "explore": self.explore}

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {"optimizer": self.optimizer, "explore_optimizer": self.explore_optimizer}

    def gradient_features(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1(xs), grad_theta f1(xs) average-pooled to grad_width, unit RMS per row), xs standardized."""
        m, act = self.mlp, self.config.activation
        with torch.no_grad():
            z1, h1, z2, phi = m.hidden(xs)
            f = phi @ m.w3 + m.b3
            d2 = act_backward(m.w3.expand_as(z2), z2, act)  # df/dz2 [N, H]
            d1 = act_backward(d2 @ m.w2.T, z1, act)  # df/dz1 [N, H]
            one = torch.ones(xs.shape[0], 1)
            pooled = self.pooling([(torch.cat([xs, one], 1), d1), (torch.cat([h1, one], 1), d2),
                                   (None, torch.cat([phi, one], 1))])
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
        self._train(x.shape[0])

    def explore_gradients(self, g: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """d mean((f2(g) - r)^2) / d f2's (weight, bias, weight, bias), written out like the MLP's."""
        lin1, lin2 = self.explore[0], self.explore[2]
        with torch.no_grad():
            z = torch.addmm(lin1.bias, g, lin1.weight.T)
            h = torch.relu(z)
            e = (h @ lin2.weight[0] + lin2.bias - r) * (2.0 / g.shape[0])
            dz = act_backward(torch.outer(e, lin2.weight[0]), z, "relu")
            return dz.T @ g, dz.sum(0), (e @ h)[None, :], e.sum().reshape(1)

    def _train_extra(self, idx: torch.Tensor) -> None:
        """One Adam step of f2 on the same rows."""
        extra = self.replay.extra
        grads = self.explore_gradients(extra["grad"].index_select(0, idx), extra["residual"][:, 0].index_select(0, idx))
        self.explore_optimizer.step(grads)
