"""Neural-linear UCB: a ridge/UCB head on the MLP's last-layer features.

Reconstruction [ours] (docs/method.md, section 5; Riquelme et al. 2018, Xu et al. 2022):
the MLP (trained as NeuralUCB's) supplies features phi(x); the score is a Bayesian linear
head on f(x) = [phi(x), z, 1] (z: the standardized context itself):
    score(x) = f^T theta + gamma * sqrt(f^T A^-1 f),  A = ridge * I + sum f f^T,  theta = A^-1 sum f y,
both sums over the replay under the *current* MLP and standardization; pairs the replay
has evicted still count in the [z, 1] block (their raw sufficient statistics, `LinearStats`,
are exact in any standardization), so the linear part never forgets.

Why:
- NeuralUCB's Z sums phi under the MLP of the time each pair arrived; once the MLP moves,
  the bonus no longer measures the current features' uncertainty. Here A is exact for the
  replay, and the mean is the ridge fit on the same features, so mean and bonus agree (the
  MLP's own output layer is only its training target).
- An MLP trained on a few thousand noisy pairs memorises part of their noise, and a head fit
  on those same pairs trusts phi for it: on a linear bandit it then ranks worse than LinUCB.
  So a `holdout` share of the pairs never trains the MLP, and `head="auto"` keeps phi only
  while the full head's leave-one-out squared error on those held-out pairs (exact for
  ridge: (y - f theta) / (1 - f^T A^-1 f)) is below that of the linear head on [z, 1]
  (LinUCB on the replay) by `margin` standard errors of the paired difference. Early on, and on linear rewards, the linear head scores; once the MLP has learned
  structure a linear head misses, phi takes over.
- Cost: one MLP forward over the replay, an (H + D + 1)^2 Gram and two Cholesky factorizations
  each time the MLP or the statistics change (the first `score` after them: once a round);
  scoring is the forward pass plus one [N, F] x [F, F] product.
It does not fit the `ucb_score` kernel (the head reads z and a bias), so `export_weights`
returns None and the scheduler scores with `score` (plain torch on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.bandit._online import (
    LearnerConfig,
    OnlineLearner,
    check_choice,
    check_float,
)
from rollout_bandits.bandit.linucb import LinearStats
from rollout_bandits.validation import all_finite

HEADS = ("auto", "full", "linear")
MIN_HELD_OUT = 30  # held-out pairs before the paired test may choose phi (its normal approximation)
SCORE_BLOCK = 512  # rows scored at a time (see _score)
FLOAT32_SAFE = 1e30  # a bound on the head features below this: none overflows float32 (3.4e38)


@dataclass
class NeuralLinearConfig(LearnerConfig):
    """`gamma`: the bonus weight, in units of the gain's running std; `ridge`: A's prior;
    `head`: "auto" (full or linear, by held-out error), "full" ([phi, z, 1]) or "linear"
    ([z, 1]); `holdout`: the share of observed pairs kept from the MLP to choose the head;
    `margin`: how many standard errors the full head's mean held-out gain must clear (chosen
    on the regret benchmark's tuning environments, bandit/regret.py)."""

    gamma: float = 0.5
    ridge: float = 1.0
    head: str = "auto"
    holdout: float = 0.1
    margin: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "NeuralLinearConfig"
        check_float(o, "gamma", self.gamma, 0.0)
        check_float(o, "ridge", self.ridge, 0.0, lo_open=True)
        check_choice(o, "head", self.head, HEADS)
        check_float(o, "holdout", self.holdout, 0.0, 1.0, hi_open=True)
        check_float(o, "margin", self.margin, 0.0)


class NeuralLinear(OnlineLearner):
    """Scores with `score` (plain torch on the CPU)."""

    name = "neural_linear"

    def __init__(self, config: NeuralLinearConfig | None = None):
        super().__init__(config or NeuralLinearConfig())
        cfg = self.config
        self.head_dim = cfg.hidden + cfg.feature_dim + 1
        self.evicted = LinearStats(cfg.feature_dim)  # pairs the replay no longer holds
        self._head: tuple[int, torch.Tensor, torch.Tensor, bool] | None = None

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "evicted": self.evicted.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        self.evicted.load_state_dict(state["evicted"])

    def _replay_extra(self) -> dict[str, int]:
        return {"holdout": 1}

    def _trainable(self) -> torch.Tensor:
        return self.replay.extra["holdout"][:, 0] == 0

    def head_features(self, xs: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """f = [phi, z, 1] of standardized contexts xs, [N, head_dim]."""
        with torch.no_grad():
            phi = self.mlp.hidden(xs)[3]
            return torch.cat([phi, xs, torch.ones(xs.shape[0], 1)], 1).to(dtype)

    def head(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(theta, A^-1, whether phi is used) for the current MLP and standardizations: a cache
        refit when either changed (after an observe, or new context statistics), so the head
        is never in the coordinates of an older standardization; not part of the state."""
        if self._head is None or self._head[0] != self._version:
            self._head = (self._version, *self._fit_head())
        return self._head[1], self._head[2], self._head[3]

    @property
    def uses_phi(self) -> bool:
        return self.head()[2]

    def _score(self, x: torch.Tensor, backend: str):
        theta, a_inv, _ = self.head()
        ly, sy = self._label_scale()
        mean = torch.empty(x.shape[0], dtype=torch.float64)
        quad = torch.empty(x.shape[0], dtype=torch.float64)
        # In row blocks: the float64 temporaries of thousands of rows at once (megabytes) were
        # returned to the OS and faulted back in on every call (3-5 ms of system time a round).
        for lo in range(0, x.shape[0], SCORE_BLOCK):
            f = self.head_features(self.standardize(x[lo:lo + SCORE_BLOCK]))
            torch.mv(f, theta, out=mean[lo:lo + SCORE_BLOCK])
            torch.sum((f @ a_inv).mul_(f), 1, out=quad[lo:lo + SCORE_BLOCK])
        mean = (mean * sy + ly).float().to(x.device)
        bonus = (self.config.gamma * sy * quad.clamp_min_(0.0).sqrt_()).float().to(x.device)
        return mean + bonus, mean, bonus

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.standardize(x)
        lo, hi = torch.aminmax(xs)
        if not self.mlp.hidden_bound(max(-float(lo), float(hi))) < FLOAT32_SAFE:  # (NaN: check)
            self._check_finite(self.head_features(xs, dtype=torch.float32), "last-layer feature")
        held = torch.rand(x.shape[0], generator=self.generator) < self.config.holdout
        return held.float()

    def _learn(self, x: torch.Tensor, gains: torch.Tensor, prepared) -> None:
        r = self.replay
        over = max(0, x.shape[0] - r.capacity)  # new pairs that never fit
        old = r.oldest(min(r.size, max(0, r.size + x.shape[0] - r.capacity)))
        self.evicted.add(torch.cat([r.x.index_select(0, old), x[:over]]),
                         torch.cat([r.y.index_select(0, old), gains[:over]]), self.feature_stats.mean)
        r.add(x, gains, holdout=prepared[:, None])
        self._train(x.shape[0])

    def _fit_head(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """theta and A^-1 from every replay pair under the current MLP and standardizations;
        with head="auto", phi's columns only if they lower the held-out pairs' LOO error."""
        cfg = self.config
        n = self.replay.size
        ly, sy = self._label_scale()
        y = (self.replay.y[:n] - ly) / sy
        held = self.replay.extra["holdout"][:n, 0] > 0
        gram = torch.zeros(self.head_dim, self.head_dim, dtype=torch.float64)
        fy = torch.zeros(self.head_dim, dtype=torch.float64)
        f_held = [torch.zeros(0, self.head_dim)]
        for lo in range(0, n, SCORE_BLOCK):  # in row blocks, as _score
            f = self.head_features(self.standardize(self.replay.x[lo:min(lo + SCORE_BLOCK, n)]), dtype=torch.float32)
            gram += (f.T @ f).double()  # float32 products (4x faster here), float64 from the sums on
            fy += (f.T @ y[lo:lo + SCORE_BLOCK]).double()
            f_held.append(f[held[lo:lo + SCORE_BLOCK]])
        lin = slice(cfg.hidden, self.head_dim)
        # Pairs evicted from the replay still inform the [z, 1] block (their phi is gone).
        g_old, zy_old = self.evicted.standardized(*self._feature_scale(), ly, sy)
        gram[lin, lin] += g_old
        fy[lin] += zy_old
        full = _ridge(gram, fy, cfg.ridge) if cfg.head != "linear" else None
        linear = _ridge(gram[lin, lin], fy[lin], cfg.ridge) if cfg.head != "full" else None
        use_full = full is not None
        if full is not None and linear is not None:
            fh, yh = torch.cat(f_held).double(), y[held].double()
            gain = _loo_sq(fh[:, lin], yh, *linear) - _loo_sq(fh, yh, *full)  # per held-out pair
            use_full = gain.numel() >= MIN_HELD_OUT and \
                float(gain.mean()) > cfg.margin * float(gain.std()) / gain.numel() ** 0.5
        if use_full and full is not None:
            return full[0], full[1], True
        theta = torch.zeros(self.head_dim, dtype=torch.float64)
        a_inv = torch.zeros(self.head_dim, self.head_dim, dtype=torch.float64)
        if linear is None:  # cannot happen for finite features: _ridge only fails on overflow
            linear = (theta[lin], torch.eye(self.head_dim - cfg.hidden, dtype=torch.float64) / cfg.ridge)
        theta[lin], a_inv[lin, lin] = linear
        return theta, a_inv, False


def _ridge(gram: torch.Tensor, fy: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(theta, A^-1) of A = ridge I + gram. PSD plus ridge: only rounding at extreme feature
    scales can stop the Cholesky, so a jitter relative to A's scale is tried; None when even
    that fails (non-finite features of a diverged MLP: the caller falls back)."""
    d = gram.shape[0]
    a = torch.eye(d, dtype=torch.float64) * ridge + 0.5 * (gram + gram.T)
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        chol, info = torch.linalg.cholesky_ex(a + torch.eye(d, dtype=torch.float64) * jitter * float(a.diagonal().mean()))
        if int(info) == 0 and all_finite(chol):
            a_inv = torch.cholesky_inverse(chol)
            return a_inv @ fy, a_inv
    return None


def _loo_sq(f: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, a_inv: torch.Tensor) -> torch.Tensor:
    """Squared leave-one-out residuals of these rows (which are in the ridge fit)."""
    lev = ((f @ a_inv) * f).sum(1).clamp(max=1.0 - 1e-9)
    return ((y - f @ theta) / (1.0 - lev)) ** 2
