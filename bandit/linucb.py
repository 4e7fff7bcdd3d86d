"""LinUCB on standardized contexts: the linear explorer behind the scheduler's interface.

score(x) = z^T theta + alpha * sqrt(z^T A^-1 z), z = [(x - mu) / sd, 1],
A = ridge * I + sum z z^T, theta = A^-1 sum z y (Li et al. 2010, one shared theta),
with mu, sd the running context moments and y the gain standardized by its running
moments (alpha is in units of the gain's running std, as NeuralUCB's gamma).

Why it is exact whatever the running moments do: `LinearStats` keeps the raw sufficient
statistics G = sum u u^T and h = sum u g of u = [x - c, 1] (c: the context mean when it first
observed, which keeps G well conditioned), and z = S u for an affine S built from mu and sd,
so sum z z^T = S G S^T and sum z y = S (h - mean_g G[:, -1]) / std_g are rebuilt (a (D+1)^2
Cholesky) whenever a scale changes. Standardizing once and freezing the scale (the regret
benchmark's old LinUCB did) is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.bandit._online import Explorer, ExplorerConfig, check_float, fail


class LinearStats:
    """Raw sufficient statistics of a linear regression on [x - center, 1] (float64): the
    standardized Gram and moment vector follow exactly for any (mu, sd) and (mean_g, std_g)."""

    def __init__(self, d: int):
        self.gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        self.xy = torch.zeros(d + 1, dtype=torch.float64)
        self.center = torch.zeros(d, dtype=torch.float64)

    @property
    def count(self) -> float:
        return float(self.gram[-1, -1])

    def rows(self, x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        c = self.center if center is None else center
        return torch.cat([x.double() - c, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)

    def add(self, x: torch.Tensor, y: torch.Tensor, first_center: torch.Tensor) -> None:
        """Add pairs; the first ones fix the center (`first_center`, the running context mean)."""
        if x.shape[0] == 0:
            return
        if self.count == 0:
            self.center = first_center.detach().to(torch.float64).clone()
        u = self.rows(x)
        self.gram = self.gram + u.T @ u  # finite float32 contexts cannot overflow float64 here
        self.xy = self.xy + u.T @ y.double()

    def standardized(self, mu: torch.Tensor, sd: torch.Tensor, ly: float, sy: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum z z^T, sum z (g - ly) / sy) for z = [(x - mu) / sd, 1]."""
        d = mu.numel()
        s = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        s[:d, :d] = torch.diag(1.0 / sd)
        s[:d, d] = (self.center - mu) / sd
        s[d, d] = 1.0
        return s @ self.gram @ s.T, s @ (self.xy - ly * self.gram[:, -1]) / sy

    def state_dict(self) -> dict:
        return {"gram": self.gram.clone(), "xy": self.xy.clone(), "center": self.center.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.gram, self.xy, self.center = (s[k].to(torch.float64).clone() for k in ("gram", "xy", "center"))


@dataclass
class LinUCBConfig(ExplorerConfig):
    """`alpha`: the bonus weight, in units of the gain's running std; `ridge`: A's prior
    (chosen on the regret benchmark's tuning environments, bandit/regret.py)."""

    alpha: float = 0.5
    ridge: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "LinUCBConfig"
        check_float(o, "alpha", self.alpha, 0.0)
        check_float(o, "ridge", self.ridge, 0.0, lo_open=True)


class LinUCB(Explorer):
    """Scores with `score` (plain torch, float64 on the CPU)."""

    name = "linucb"

    def __init__(self, config: LinUCBConfig | None = None):
        super().__init__(config or LinUCBConfig())
        self.stats = LinearStats(self.feature_dim)
        self._solved: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _extra_state(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta, A^-1) in the current standardized coordinates (cached until the state changes)."""
        if self._solved is not None and self._solved[0] == self._version:
            return self._solved[1], self._solved[2]
        gram, zy = self.stats.standardized(*self._feature_scale(), *self._label_scale())
        a = torch.eye(self.feature_dim + 1, dtype=torch.float64) * self.config.ridge + 0.5 * (gram + gram.T)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:  # a PSD Gram plus ridge > 0: only rounding at extreme scales gets here
            fail(self.owner, "contexts", "contexts whose second moments make A numerically singular",
                 "contexts within the range of those seen so far by a factor float64 can resolve")
        a_inv = torch.cholesky_inverse(chol)
        self._solved = (self._version, a_inv @ zy, a_inv)
        return self._solved[1], a_inv

    def _score(self, x: torch.Tensor, backend: str):
        theta, a_inv = self.solve()
        ly, sy = self._label_scale()
        mu, sd = self._feature_scale()
        z = torch.cat([(x.detach().to("cpu", torch.float64) - mu) / sd,
                       torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
        mean = z @ theta * sy + ly
        bonus = self.config.alpha * sy * ((z @ a_inv) * z).sum(1).clamp_min(0.0).sqrt()
        mean, bonus = mean.float().to(x.device), bonus.float().to(x.device)
        return mean + bonus, mean, bonus

    def _prepare(self, x: torch.Tensor) -> None:
        return None

    def _learn(self, x: torch.Tensor, gains: torch.Tensor, prepared) -> None:
        self.stats.add(x, gains, self.feature_stats.mean)
