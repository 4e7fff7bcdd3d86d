"""NeuralUCB: an MLP predicts an arm's gain, a last-layer confidence ellipsoid adds the bonus.

Reconstruction [ours] (docs/method.md, section 5): the paper's scheduler is "a lightweight
MLP predicting the gain online"; its exploration mechanism is not public, so this is
NeuralUCB with last-layer features phi (Zhou et al. 2020, Xu et al. 2022):
    score(x) = f(x) + gamma * sqrt(phi(x)^T Z^-1 phi(x)),  Z = ridge * I + sum phi phi^T.

Design choices, and why:
- Contexts and gains are standardized with running statistics, so one learning
  rate and one gamma work whatever the feature and gain scales; both
  standardizations are folded into the exported `ScorerWeights`, so the
  `ucb_score` kernel reads raw contexts and returns gains in raw units (gamma
  is therefore in units of the gain's running std).
- Z itself is kept in float64 and re-inverted by Cholesky after each observed
  batch: exact batched Woodbury in O(n H^2 + H^3) (H = 64: microseconds), and
  free of the drift that chained Sherman-Morrison updates accumulate.
- Training in proportion to the data (`LearnerConfig`): each observed pair is
  used `train_passes` times, in minibatches filled up from a bounded replay of the
  most recent pairs (memory stays flat; old pairs from a policy long gone stop
  steering the fit). A fixed number of steps per `observe` replays pairs hundreds
  of times when calls are small (the MLP memorises label noise) and under-trains
  when they are large.
- Z accumulates phi under the MLP of the time each pair was observed, so the bonus
  is approximate once the MLP moves; `NeuralLinear` (neural_linear.py) recomputes
  it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.bandit._online import (
    MLP,  # noqa: F401  (re-exported: the MLP was defined here first)
    LearnerConfig,
    OnlineLearner,
    check_choice,
    check_float,
    fail,
)
from rollout_bandits.kernels.ucb_score import ScorerWeights, ucb_score


@dataclass
class NeuralUCBConfig(LearnerConfig):
    """`gamma`: the bonus weight, in units of the gain's running std (chosen on the regret
    benchmark's tuning environments, benchmarks/regret_tune.py); `ridge`: Z's prior; `bonus`:
    "full" (dense Z^-1) or "diag" (its diagonal approximation)."""

    gamma: float = 0.1
    ridge: float = 1.0
    bonus: str = "full"

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "NeuralUCBConfig"
        check_float(o, "gamma", self.gamma, 0.0)
        check_float(o, "ridge", self.ridge, 0.0, lo_open=True)
        check_choice(o, "bonus", self.bonus, ("full", "diag"))


class NeuralUCB(OnlineLearner):
    """The bandit learner behind the `ucb_score` kernel."""

    name = "neural_ucb"

    def __init__(self, config: NeuralUCBConfig | None = None):
        super().__init__(config or NeuralUCBConfig())
        h = self.config.hidden
        self.z = torch.eye(h, dtype=torch.float64) * self.config.ridge
        self.zinv = torch.eye(h, dtype=torch.float64) / self.config.ridge
        self._export_cache: dict[str, tuple[int, ScorerWeights]] = {}

    def _tensors(self) -> tuple[str, ...]:
        return ("z", "zinv")

    # ------------------------------------------------------------------ scoring
    def export_weights(self, device: torch.device | str = "cpu") -> ScorerWeights:
        """The MLP with both standardizations folded in: score raw contexts in raw gain units."""
        key = str(device)
        hit = self._export_cache.get(key)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        cfg = self.config
        m = self.mlp
        mu, sd = self._feature_scale()
        ly, sy = self._label_scale()
        with torch.no_grad():
            w1 = m.w1.double() / sd[:, None]
            b1 = m.b1.double() - (mu / sd) @ m.w1.double()
            w3 = m.w3.double() * sy
            b3 = m.b3.double() * sy + ly
        diag = cfg.bonus == "diag"
        weights = ScorerWeights(
            w1=w1.float(), b1=b1.float(), w2=m.w2.detach().clone(), b2=m.b2.detach().clone(),
            w3=w3.float(), b3=b3.float(),
            zinv=None if diag else self.zinv.float(),
            zinv_diag=(1.0 / torch.diagonal(self.z)).float() if diag else None,
            gamma=float(cfg.gamma * sy), activation=cfg.activation,
        ).to(device)
        self._export_cache[key] = (self._version, weights)
        return weights

    def _score(self, x: torch.Tensor, backend: str):
        """Via the `ucb_score` kernel."""
        return ucb_score(x.float(), self.export_weights(x.device), backend=backend)

    # ----------------------------------------------------------------- learning
    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next Z and Z^-1 (from last-layer features under the current MLP)."""
        with torch.no_grad():
            phi = self.mlp.hidden(self.standardize(x))[3].double()
        self._check_finite(phi, "last-layer feature")
        if self.config.bonus == "diag":
            z = self.z + torch.diag((phi * phi).sum(0))
            return z, torch.diag(1.0 / torch.diagonal(z))
        z = self.z + phi.T @ phi
        z = 0.5 * (z + z.T)
        chol, info = torch.linalg.cholesky_ex(z)
        if int(info) != 0:
            fail(self.owner, "contexts", "contexts whose last-layer features make Z numerically singular",
                 "contexts within the range of those seen so far by a factor float64 can resolve")
        return z, torch.cholesky_inverse(chol)

    def _learn(self, x: torch.Tensor, gains: torch.Tensor, prepared) -> None:
        self.replay.add(x, gains)
        self.z, self.zinv = prepared
        self._train(x.shape[0])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._export_cache.clear()
