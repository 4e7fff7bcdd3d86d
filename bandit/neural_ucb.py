"""NeuralUCB: an MLP predicts an arm's gain, a last-layer confidence ellipsoid adds the bonus.

Reconstruction [ours] (PAPER.md): the paper's scheduler is "a lightweight MLP
predicting the gain online"; its exploration mechanism is not public, so this
is NeuralUCB with last-layer features phi (Zhou et al. 2020, Xu et al. 2022):
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
- Training: `train_steps` Adam steps per `observe`, each on a minibatch drawn
  from a bounded replay of the most recent pairs (memory stays flat; old pairs
  from a policy long gone stop steering the fit).
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
from rollout_bandits.kernels.rollout_features import NUM_FEATURES
from rollout_bandits.kernels.ucb_score import ScorerWeights, ucb_score

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass
class NeuralUCBConfig:
    """`gamma` = 0.5 was the best of {0.1, 0.25, 0.5, 1, 2} on the synthetic regret benchmark
    (benchmarks/regret_plot.py); it is in units of the gain's running std."""

    feature_dim: int = NUM_FEATURES
    hidden: int = 64
    activation: str = "relu"
    gamma: float = 0.5
    ridge: float = 1.0
    bonus: str = "full"  # full: dense Z^-1 | diag: its diagonal approximation
    lr: float = 3e-3
    weight_decay: float = 1e-4
    train_steps: int = 8
    train_batch: int = 128
    replay_capacity: int = 4096
    feature_std_floor: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        o = "NeuralUCBConfig"
        check_int(o, "feature_dim", self.feature_dim, 1)
        check_int(o, "hidden", self.hidden, 1)
        check_choice(o, "activation", self.activation, tuple(_ACTIVATIONS))
        check_float(o, "gamma", self.gamma, 0.0)
        check_float(o, "ridge", self.ridge, 0.0, lo_open=True)
        check_choice(o, "bonus", self.bonus, ("full", "diag"))
        check_float(o, "lr", self.lr, 0.0, lo_open=True)
        check_float(o, "weight_decay", self.weight_decay, 0.0)
        check_int(o, "train_steps", self.train_steps, 0)
        check_int(o, "train_batch", self.train_batch, 1)
        check_int(o, "replay_capacity", self.replay_capacity, 1)
        check_float(o, "feature_std_floor", self.feature_std_floor, 0.0, lo_open=True)
        check_int(o, "seed", self.seed, 0)


class MLP(torch.nn.Module):
    """D -> H -> H -> 1 in the kernel's row-vector layout (w1 [D, H], ..., w3 [H], b3 0-d)."""

    def __init__(self, d: int, h: int, activation: str, generator: torch.Generator):
        super().__init__()

        def uniform(*shape: int, fan_in: int) -> torch.nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return torch.nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)

        # He-uniform for ReLU layers keeps phi's scale O(1) at init.
        self.w1 = torch.nn.Parameter(uniform(d, h, fan_in=d).data * math.sqrt(6.0))
        self.b1 = uniform(h, fan_in=d)
        self.w2 = torch.nn.Parameter(uniform(h, h, fan_in=h).data * math.sqrt(6.0))
        self.b2 = uniform(h, fan_in=h)
        self.w3 = uniform(h, fan_in=h)
        self.b3 = torch.nn.Parameter(torch.zeros(()))
        self.act = _ACTIVATIONS[activation]

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z1 = x @ self.w1 + self.b1
        h1 = self.act(z1)
        z2 = h1 @ self.w2 + self.b2
        return z1, h1, z2, self.act(z2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)[3] @ self.w3 + self.b3


class NeuralUCB:
    """The bandit learner behind the `ucb_score` kernel; also the scorer interface
    (`score`, `export_weights`, `observe`, `update_feature_stats`, `state_dict`)."""

    name = "neural_ucb"

    def __init__(self, config: NeuralUCBConfig | None = None):
        self.config = cfg = config or NeuralUCBConfig()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.mlp = MLP(cfg.feature_dim, cfg.hidden, cfg.activation, self.generator)
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.feature_stats = RunningMoments(cfg.feature_dim)
        self.label_stats = RunningMoments(1)
        self.replay = Replay(cfg.replay_capacity, cfg.feature_dim)
        h = cfg.hidden
        self.z = torch.eye(h, dtype=torch.float64) * cfg.ridge
        self.zinv = torch.eye(h, dtype=torch.float64) / cfg.ridge
        self.num_observed = 0
        self._version = 0
        self._export_cache: dict[str, tuple[int, ScorerWeights]] = {}

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    # ------------------------------------------------------------ standardization
    def _feature_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.feature_stats.mean, self.feature_stats.std(self.config.feature_std_floor)

    def _label_scale(self) -> tuple[float, float]:
        s = self.label_stats
        if s.count < 2 or float(s.m2[0]) <= 0.0:
            return (float(s.mean[0]) if s.count else 0.0), 1.0
        return float(s.mean[0]), math.sqrt(float(s.m2[0]) / s.count)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        mu, sd = self._feature_scale()
        return ((x.detach().to("cpu", torch.float64) - mu) / sd).to(torch.float32)

    def update_feature_stats(self, x: torch.Tensor) -> None:
        """Contexts seen at selection time (all candidates, not only pulled arms) set the scale."""
        check_contexts("NeuralUCB", x, self.feature_dim)
        self.feature_stats.update(x)
        self._version += 1

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

    def score(self, x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score, mean, bonus) [N] in raw gain units, via the `ucb_score` kernel."""
        check_contexts("NeuralUCB", x, self.feature_dim)
        if x.shape[0] == 0:
            e = torch.zeros(0, device=x.device)
            return e, e, e
        return ucb_score(x.float(), self.export_weights(x.device), backend=backend)

    # ----------------------------------------------------------------- learning
    def validate_observation(self, x: torch.Tensor, gains) -> tuple[torch.Tensor, torch.Tensor]:
        check_contexts("NeuralUCB", x, self.feature_dim)
        gains = check_gains("NeuralUCB", gains, x.shape[0])
        return x, gains

    def observe(self, x: torch.Tensor, gains) -> None:
        """Add pulled arms' (context, gain) pairs: update Z, then a few Adam steps on the replay.

        Everything is validated before any state changes, so a ValueError leaves the learner as it was.
        """
        x, gains = self.validate_observation(x, gains)
        if x.shape[0] == 0:
            return
        x = x.detach().to("cpu", torch.float32)
        gains = gains.detach().to("cpu", torch.float32)
        self.label_stats.update(gains[:, None])
        self.replay.add(x, gains)
        with torch.no_grad():
            phi = self.mlp.hidden(self.standardize(x))[3].double()
        self._update_design(phi)
        self._train()
        self.num_observed += x.shape[0]
        self._version += 1

    def _update_design(self, phi: torch.Tensor) -> None:
        if self.config.bonus == "diag":
            self.z = self.z + torch.diag((phi * phi).sum(0))
            self.zinv = torch.diag(1.0 / torch.diagonal(self.z))
            return
        self.z = self.z + phi.T @ phi
        self.z = 0.5 * (self.z + self.z.T)
        self.zinv = torch.cholesky_inverse(torch.linalg.cholesky(self.z))

    def _train(self) -> None:
        cfg = self.config
        ly, sy = self._label_scale()
        for _ in range(cfg.train_steps):
            idx = self.replay.sample(cfg.train_batch, self.generator)
            xs = self.standardize(self.replay.x[idx])
            ys = (self.replay.y[idx] - ly) / sy
            loss = F.mse_loss(self.mlp(xs), ys)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "kind": self.name,
            "config": asdict(self.config),
            "mlp": {k: v.detach().clone() for k, v in self.mlp.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "feature_stats": self.feature_stats.state_dict(),
            "label_stats": self.label_stats.state_dict(),
            "replay": self.replay.state_dict(),
            "z": self.z.clone(),
            "zinv": self.zinv.clone(),
            "generator": self.generator.get_state(),
            "num_observed": self.num_observed,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.name:
            fail("NeuralUCB", "state['kind']", repr(state.get("kind")), repr(self.name))
        if NeuralUCBConfig(**state["config"]) != self.config:
            fail("NeuralUCB", "state['config']", repr(state["config"]), f"this learner's config {asdict(self.config)}")
        self.mlp.load_state_dict(state["mlp"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.feature_stats.load_state_dict(state["feature_stats"])
        self.label_stats.load_state_dict(state["label_stats"])
        self.replay.load_state_dict(state["replay"])
        self.z = state["z"].to(torch.float64).clone()
        self.zinv = state["zinv"].to(torch.float64).clone()
        self.generator.set_state(state["generator"])
        self.num_observed = int(state["num_observed"])
        self._version += 1
        self._export_cache.clear()
