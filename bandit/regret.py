"""Regret check: a synthetic contextual bandit shaped like rollout scheduling.

Each round brings `num_groups` prompt groups of `group_size` arms whose contexts are the real
rollout features (`rollout_features` of a seeded `synthetic_batch`); the learner pulls `k` arms
per group and sees noisy rewards h(x) + N(0, noise^2) from a known nonlinear h. The per-round
regret is sum over groups of (best k true means - chosen true means), so the oracle is known
exactly. Runners: NeuralUCB (the scheduler's learner, unchanged), LinUCB, epsilon-greedy (the
same MLP without a bonus, random k with probability epsilon per group) and random.

Used by tests/test_regret.py (small T) and benchmarks/regret_plot.py (the curves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from rollout_bandits.bandit.baselines import random_k
from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.kernels.group_topk import group_topk
from rollout_bandits.kernels.rollout_features import NUM_FEATURES, rollout_features_reference
from rollout_bandits.synthetic import synthetic_batch
from rollout_bandits.validation import check_field_types, check_float, check_int, fail


@dataclass(frozen=True)
class RegretEnvConfig:
    num_groups: int = 8
    group_size: int = 8
    k: int = 2
    noise: float = 0.1
    mean_len: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)
        o = "RegretEnvConfig"
        for name in ("num_groups", "group_size", "k", "mean_len"):
            check_int(o, name, getattr(self, name), 1)
        check_float(o, "noise", self.noise, 0.0)
        check_int(o, "seed", self.seed, 0)


class RolloutBanditEnv:
    """h(z) = cos(2 a.z) + 0.5 (b.z)^2 on contexts z standardized by a fixed warm-up sample;
    a, b random unit directions. Neither a linear model nor a greedy fit without exploration
    recovers it quickly; a small MLP can."""

    def __init__(self, config: RegretEnvConfig | None = None):
        self.config = cfg = config or RegretEnvConfig()
        g = torch.Generator().manual_seed(10_007 + cfg.seed)
        warm = torch.cat([self._contexts(-1 - i)[0] for i in range(8)])
        self.mu = warm.mean(0)
        self.sd = warm.std(0).clamp_min(1e-3)
        a = torch.randn(NUM_FEATURES, generator=g)
        b = torch.randn(NUM_FEATURES, generator=g)
        self.a = a / a.norm()
        self.b = b / b.norm()
        self.noise_gen = torch.Generator().manual_seed(20_011 + cfg.seed)

    def _contexts(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        batch = synthetic_batch(cfg.num_groups, cfg.group_size, cfg.mean_len,
                                seed=1_000_003 * (cfg.seed + 1) + 7919 * t)
        return rollout_features_reference(batch, validate=False), batch.group_offsets

    def true_mean(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.sd
        return torch.cos(2.0 * (z @ self.a)) + 0.5 * (z @ self.b) ** 2

    def round(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(contexts [N, D], group_offsets [G+1], true means [N]) of round t (same for every runner)."""
        x, go = self._contexts(t)
        return x, go, self.true_mean(x)

    def pull(self, means: torch.Tensor) -> torch.Tensor:
        return means + self.config.noise * torch.randn(means.shape, generator=self.noise_gen)

    def oracle_value(self, means: torch.Tensor, group_offsets: torch.Tensor) -> float:
        idx, _ = group_topk(means, group_offsets, k=self.config.k, keep_contrast=False)
        return float(means[idx].sum())


# ------------------------------------------------------------------ policies
class _NeuralPolicy:
    def __init__(self, learner, k: int, epsilon: float = 0.0, seed: int = 0):
        self.learner, self.k, self.epsilon = learner, k, epsilon
        self.gen = torch.Generator().manual_seed(30_001 + seed)

    def select(self, x, go):
        score, _, _ = self.learner.score(x)
        idx, mask = group_topk(score, go, k=self.k, keep_contrast=False)
        if self.epsilon > 0:
            g = go.numel() - 1
            explore = torch.rand(g, generator=self.gen) < self.epsilon
            if bool(explore.any()):
                _, rmask = random_k(go, k=self.k, generator=self.gen)
                sizes = go[1:] - go[:-1]
                per_row = torch.repeat_interleave(explore, sizes)
                mask = torch.where(per_row, rmask, mask)
                idx = torch.nonzero(mask).flatten()
        return idx

    def update(self, x_all, x, r):
        self.learner.update_feature_stats(x_all)
        self.learner.observe(x, r)


class LinUCB:
    """Shared-parameter LinUCB on running-standardized contexts plus a bias (ridge 1)."""

    def __init__(self, k: int, alpha: float = 0.5, ridge: float = 1.0):
        self.k, self.alpha = k, alpha
        d = NUM_FEATURES + 1
        self.A = torch.eye(d, dtype=torch.float64) * ridge
        self.bvec = torch.zeros(d, dtype=torch.float64)
        self.n, self.mean, self.m2 = 0, torch.zeros(NUM_FEATURES, dtype=torch.float64), torch.zeros(
            NUM_FEATURES, dtype=torch.float64)

    def _z(self, x):
        sd = (self.m2 / self.n).sqrt().clamp_min(1e-3) if self.n > 1 else torch.ones_like(self.mean)
        z = (x.double() - self.mean) / sd
        return torch.cat([z, torch.ones(z.shape[0], 1, dtype=torch.float64)], 1)

    def select(self, x, go):
        z = self._z(x)
        ainv = torch.linalg.inv(self.A)
        theta = ainv @ self.bvec
        bonus = ((z @ ainv) * z).sum(1).clamp_min(0).sqrt()
        idx, _ = group_topk((z @ theta + self.alpha * bonus).float(), go, k=self.k, keep_contrast=False)
        return idx

    def update(self, x_all, x, r):
        # Statistics first would re-standardize A's past rows; keep them fixed after 2 rounds.
        if self.n < 2 * x_all.shape[0]:
            xs = x_all.double()
            n2 = xs.shape[0]
            bm = xs.mean(0)
            tot = self.n + n2
            delta = bm - self.mean
            self.mean = self.mean + delta * n2 / tot
            self.m2 = self.m2 + ((xs - bm) ** 2).sum(0) + delta**2 * self.n * n2 / tot
            self.n = tot
        z = self._z(x)
        self.A += z.T @ z
        self.bvec += z.T @ r.double()


class RandomPolicy:
    def __init__(self, k: int, seed: int = 0):
        self.k = k
        self.gen = torch.Generator().manual_seed(40_009 + seed)

    def select(self, x, go):
        return random_k(go, k=self.k, generator=self.gen)[0]

    def update(self, x_all, x, r):
        pass


def default_learner_config(**overrides) -> NeuralUCBConfig:
    return replace(NeuralUCBConfig(hidden=32, lr=1e-2, train_steps=8, train_batch=64, replay_capacity=2048), **overrides)


def make_policy(name: str, k: int, *, seed: int = 0, gamma: float | None = None, epsilon: float = 0.1):
    if name == "neural_ucb":
        cfg = default_learner_config(seed=seed)
        if gamma is not None:
            cfg = replace(cfg, gamma=gamma)
        return _NeuralPolicy(NeuralUCB(cfg), k, seed=seed)
    if name == "ee_net":
        return _NeuralPolicy(EENet(EENetConfig(hidden=32, train_steps=8, train_batch=64, replay_capacity=2048,
                                               seed=seed)), k, seed=seed)
    if name == "eps_greedy":
        return _NeuralPolicy(NeuralUCB(default_learner_config(seed=seed, gamma=0.0)), k, epsilon=epsilon, seed=seed)
    if name == "linucb":
        return LinUCB(k)
    if name == "random":
        return RandomPolicy(k, seed=seed)
    fail("make_policy", "name", repr(name), "neural_ucb | ee_net | eps_greedy | linucb | random")


def run_regret(policy, env: RolloutBanditEnv, rounds: int) -> torch.Tensor:
    """Cumulative regret after each round, float64 [rounds]."""
    per_round = torch.zeros(rounds, dtype=torch.float64)
    for t in range(rounds):
        x, go, means = env.round(t)
        idx = policy.select(x, go)
        rewards = env.pull(means[idx])
        per_round[t] = env.oracle_value(means, go) - float(means[idx].sum())
        policy.update(x, x[idx], rewards)
    return torch.cumsum(per_round, 0)


def regret_curves(names=("neural_ucb", "linucb", "eps_greedy", "random"), rounds: int = 200,
                  env_config: RegretEnvConfig | None = None, seed: int = 0, **policy_kw) -> dict[str, torch.Tensor]:
    """Every runner on the same sequence of contexts and the same noise stream."""
    env_config = env_config or RegretEnvConfig(seed=seed)
    out = {}
    for name in names:
        env = RolloutBanditEnv(env_config)
        out[name] = run_regret(make_policy(name, env_config.k, seed=seed, **policy_kw.get(name, {})), env, rounds)
    return out


def sublinearity_ratio(cum_regret: torch.Tensor) -> float:
    """(regret(T/10) / (T/10)) / (regret(T) / T): how much the average regret per round fell."""
    t = cum_regret.numel()
    t10 = max(t // 10, 1)
    early = float(cum_regret[t10 - 1]) / t10
    late = float(cum_regret[-1]) / t
    return early / late if late > 0 else math.inf
