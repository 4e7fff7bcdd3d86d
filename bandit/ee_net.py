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
    with a 0/1 matrix, the pieces averaged into their bins by another.
    `implicit_one`: each block's last row of u (of v, for a 1-row block) is the constant 1 of a
    bias and is not passed (no [x, 1] concatenations: they cost as much as the pooling)."""

    def __init__(self, blocks: list[tuple[int, int]], bins: int, implicit_one: bool = False):
        sizes = [p * q for p, q in blocks]
        total = sum(sizes)
        starts = [sum(sizes[:k]) for k in range(len(blocks))]
        lengths = [-((-(b + 1) * total) // bins) - (b * total) // bins for b in range(bins)]
        self.implicit_one = implicit_one
        self.runs, self.rows, self.to_bins, self.scaled = [], [], [], []
        for (p, q), s0, n in zip(blocks, starts, sizes, strict=True):
            pieces = []  # (row, bin, run)
            for b in range(bins):  # torch's adaptive pooling bins: [floor(b L / B), ceil((b+1) L / B))
                lo, hi = (b * total) // bins, -((-(b + 1) * total) // bins)
                a, e = max(lo, s0) - s0, min(hi, s0 + n) - s0
                for row in range(a // q, (e - 1) // q + 1) if a < e else ():
                    run = torch.zeros(q)
                    run[max(a, row * q) - row * q: min(e, (row + 1) * q) - row * q] = 1.0
                    pieces.append((row, b, run))
            # The pieces of u's rows first, those of the bias row (u = 1) last: `scaled` of them
            # are multiplied by u.
            bias_row = p - 1 if implicit_one and p > 1 else -1
            pieces.sort(key=lambda t: t[0] == bias_row)
            runs = torch.stack([t[2] for t in pieces], 1) if pieces else torch.zeros(q, 0)  # [Q_k, pieces_k]
            to_bins = torch.zeros(len(pieces), bins)  # each piece into its bin, / the bin's length
            for i, (_, b, _) in enumerate(pieces):
                to_bins[i, b] = 1.0 / lengths[b]
            self.runs.append(runs)
            self.rows.append(torch.tensor([t[0] for t in pieces if t[0] != bias_row], dtype=torch.int64))
            self.scaled.append(sum(t[0] != bias_row for t in pieces))
            self.to_bins.append(to_bins)
        self.bins = bins

    def __call__(self, blocks: list[tuple[torch.Tensor | None, torch.Tensor]]) -> torch.Tensor:
        out = None
        for (u, v), runs, rows, scaled, to_bins in zip(blocks, self.runs, self.rows, self.scaled, self.to_bins,
                                                      strict=True):
            if u is None and self.implicit_one:  # v's implicit last entry 1 adds the last row of runs
                part = torch.addmm(runs[-1], v, runs[:-1])
            else:
                part = v @ runs  # [N, pieces_k]: each piece's run of v summed
            if u is not None:
                part[:, :scaled] *= u.index_select(1, rows)
            out = part @ to_bins if out is None else out.addmm_(part, to_bins)
        return out


GRAD_BLOCK = 1024  # rows of gradient features computed at a time (see gradient_features)


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
        self._explore_work: dict[int, tuple[torch.Tensor, ...]] = {}
        d, h = cfg.feature_dim, cfg.hidden
        # The flat gradient in parameter order: (w1, b1) = [x, 1] (x) d1, (w2, b2) = [h1, 1] (x) d2,
        # (w3, b3) = [phi, 1].
        self.pooling = PooledGradient([(d + 1, h), (h + 1, h), (1, h + 1)], cfg.grad_width, implicit_one=True)

    def _replay_extra(self) -> dict[str, int]:
        return {"grad": self.config.grad_width, "residual": 1}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"mlp": self.mlp, "explore": self.explore}

    def _optimizers(self) -> dict[str, FlatAdam]:
        return {"optimizer": self.optimizer, "explore_optimizer": self.explore_optimizer}

    def gradient_features(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1(xs), grad_theta f1(xs) average-pooled to grad_width, unit RMS per row), xs
        standardized. In row blocks of GRAD_BLOCK: each block's dozen intermediates stay in
        the core's cache (all rows at once they spilled it, about 3x slower)."""
        m, act = self.mlp, self.config.activation
        n = xs.shape[0]
        f = torch.empty(n)
        g = torch.empty(n, self.config.grad_width)
        with torch.no_grad():
            for lo in range(0, n, GRAD_BLOCK):
                xb = xs[lo:lo + GRAD_BLOCK]
                z1, h1, z2, phi = m.hidden(xb)
                torch.addmv(m.b3, phi, m.w3, out=f[lo:lo + GRAD_BLOCK])
                d2 = act_backward(m.w3.expand_as(z2), z2, act)  # df/dz2 [B, H]
                d1 = act_backward(d2 @ m.w2.T, z1, act)  # df/dz1 [B, H]
                pooled = self.pooling([(xb, d1), (h1, d2), (None, phi)])  # the biases' 1s implicit
                rms = torch.linalg.vector_norm(pooled, dim=1, keepdim=True).div_(pooled.shape[1] ** 0.5)
                torch.div(pooled, rms.clamp_min_(1e-12), out=g[lo:lo + GRAD_BLOCK])
        return f, g

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

    def explore_gradients(self, g: torch.Tensor, r: torch.Tensor,
                          out: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
        """d mean((f2(g) - r)^2) / d f2's (weight, bias, weight, bias), written out like the MLP's
        (into `out` when given; intermediates in buffers kept per batch size)."""
        lin1, lin2 = self.explore[0], self.explore[2]
        w1, b1, w2, b2 = lin1.weight.detach(), lin1.bias.detach(), lin2.weight.detach()[0], lin2.bias.detach()
        n = g.shape[0]
        if out is None:
            out = tuple(torch.empty_like(p) for p in self.explore.parameters())
        work = self._explore_work.get(n)
        if work is None:
            work = self._explore_work[n] = (*(torch.empty(n, lin1.out_features) for _ in range(4)), torch.empty(n))
        z, h, t, dz, e = work
        g_w1, g_b1, g_w2, g_b2 = out
        with torch.no_grad():
            torch.addmm(b1, g, w1.T, out=z)
            torch.clamp_min(z, 0.0, out=h)
            torch.addmv(r, h, w2, beta=-2.0 / n, alpha=2.0 / n, out=e).add_(b2, alpha=2.0 / n)
            torch.outer(e, w2, out=t)
            act_backward(t, z, "relu", out=dz)  # dL/dz [B, H]
            torch.mm(dz.T, g, out=g_w1)
            torch.sum(dz, 0, out=g_b1)
            torch.mv(h.T, e, out=g_w2[0])
            torch.sum(e, 0, keepdim=True, out=g_b2)
        return out

    def _train_extra(self, idx: torch.Tensor, counts: list[int]) -> None:
        """f2's Adam steps, one on each of the MLP's steps' rows (gathered once)."""
        extra, opt = self.replay.extra, self.explore_optimizer
        g_all = extra["grad"].index_select(0, idx)
        r_all = extra["residual"][:, 0].index_select(0, idx)
        for g, r in zip(g_all.split(counts), r_all.split(counts), strict=True):
            opt.step(self.explore_gradients(g, r, out=opt.grads))
