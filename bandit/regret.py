"""The regret benchmark's environments and runners: every explorer behind the scheduler's
interface on synthetic contextual bandits whose true mean reward is known.

A round shows `groups` groups of `arms` arms (15-dim contexts); a policy pulls the top `pulls`
of each group by its score and observes their rewards in one `observe` call (groups * pulls
observations: 4 or 2,048 in the benchmark). Regret of a round = sum over groups of (the best
`pulls` true means - the pulled ones' true means). Every policy sees the same draws: a round's
contexts and each arm's reward noise depend only on (environment, seed, round).

Families (the true mean is a function of latent coordinates v; the learner sees x, an affine
image of v with per-column scales 10^U(-2, 2) and offsets, as rollout features are):
  linear        v ~ N(0, I); mean = theta.v; Gaussian noise (sd 1)                  [linear]
  mixture_net   the issue's: v from a 3-part mixture with Student-t(3) tails; p = sigmoid
                of a fixed random 2-layer network of v; Bernoulli rewards           [nonlinear]
  heavy_tailed  v ~ Student-t(2) (infinite variance); mean = tanh(a.v) + tanh(b.v)^2;
                Gaussian noise (sd 0.5)                                              [nonlinear]
  label_noise   v from a 3-part Gaussian mixture; p as mixture_net; Bernoulli rewards
                flipped with probability 0.3 (a noisy verifier; the ranking is p's) [nonlinear]

Tuning and report instances are disjoint: an instance id seeds everything fixed about an
environment (its reward network or directions, mixture, scales, offsets), and the run seed
its streams. Defaults are chosen on TUNING_INSTANCES only (benchmarks/regret_tune.py); the
figures reported (benchmarks/regret_plot.py, docs/bandit.md) use REPORT_INSTANCES, which were
never used to choose anything.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import torch

from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.linucb import LinUCB, LinUCBConfig
from rollout_bandits.bandit.neural_linear import NeuralLinear, NeuralLinearConfig
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.validation import check_choice, check_field_types, check_int, fail

LINEAR_FAMILIES = ("linear",)
NONLINEAR_FAMILIES = ("mixture_net", "heavy_tailed", "label_noise")
FAMILIES = LINEAR_FAMILIES + NONLINEAR_FAMILIES
TUNING_INSTANCES = (100, 101, 102)
REPORT_INSTANCES = (0, 1, 2)
DIM = 15
EXPLORER_CLASSES = {"neural_linear": (NeuralLinear, NeuralLinearConfig), "neural_ucb": (NeuralUCB, NeuralUCBConfig),
                    "ee_net": (EENet, EENetConfig), "linucb": (LinUCB, LinUCBConfig)}
POLICY_NAMES = (*EXPLORER_CLASSES, "random")


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


@dataclass(frozen=True)
class EnvSpec:
    """family: one of FAMILIES; instance: seeds the environment's fixed parts; groups x arms
    contexts a round, `pulls` pulled per group."""

    family: str = "mixture_net"
    instance: int = 0
    groups: int = 1
    arms: int = 20
    pulls: int = 4

    def __post_init__(self) -> None:
        check_field_types(self)
        o = "EnvSpec"
        check_choice(o, "family", self.family, FAMILIES)
        check_int(o, "instance", self.instance, 0)
        check_int(o, "groups", self.groups, 1)
        check_int(o, "arms", self.arms, 1)
        check_int(o, "pulls", self.pulls, 1, self.arms)

    @property
    def per_observe(self) -> int:
        return self.groups * self.pulls


class BanditEnv:
    """One environment instance and one seed's streams of contexts and reward noise."""

    def __init__(self, spec: EnvSpec, seed: int = 0):
        self.spec, self.seed = spec, seed
        g = torch.Generator().manual_seed(_seed("fixed", spec.family, spec.instance))
        f = spec.family
        self.scale = 10.0 ** (torch.rand(DIM, generator=g) * 4 - 2)
        self.offset = torch.randn(DIM, generator=g) * 3 * self.scale
        self.components = 3 if f in ("mixture_net", "label_noise") else 1
        self.centers = torch.randn(self.components, DIM, generator=g) * 1.5 if self.components > 1 \
            else torch.zeros(1, DIM)
        self.spreads = 0.5 + 1.5 * torch.rand(self.components, DIM, generator=g) if self.components > 1 \
            else torch.ones(1, DIM)
        self.weights = torch.softmax(torch.randn(self.components, generator=g), 0)
        if f == "linear":
            theta = torch.randn(DIM, generator=g)
            self.theta = theta / theta.norm()
        elif f == "heavy_tailed":
            a, b = torch.randn(DIM, generator=g), torch.randn(DIM, generator=g)
            self.a, self.b = a / a.norm(), b / b.norm()
        else:
            self.w1 = torch.randn(DIM, 16, generator=g) / math.sqrt(DIM)
            self.b1 = torch.randn(16, generator=g) * 0.5
            self.w2 = torch.randn(16, generator=g) / math.sqrt(16)
            v = self._latent(4096, g)
            logits = self._net(v)
            self.logit_shift, self.logit_scale = float(logits.mean()), 1.5 / float(logits.std())
        self._eval = None

    # ------------------------------------------------------------------ draws
    def _latent(self, n: int, g: torch.Generator) -> torch.Tensor:
        f = self.spec.family
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        if f == "heavy_tailed":
            noise = _student_t(2, (n, DIM), g)
        elif f == "mixture_net":
            noise = _student_t(3, (n, DIM), g)
        else:
            noise = torch.randn(n, DIM, generator=g)
        return self.centers[comp] + self.spreads[comp] * noise

    def _net(self, v: torch.Tensor) -> torch.Tensor:
        return torch.relu(v @ self.w1 + self.b1) @ self.w2

    def _mean(self, v: torch.Tensor) -> torch.Tensor:
        f = self.spec.family
        if f == "linear":
            return v @ self.theta
        if f == "heavy_tailed":
            return torch.tanh(v @ self.a) + torch.tanh(v @ self.b) ** 2
        return torch.sigmoid((self._net(v) - self.logit_shift) * self.logit_scale)

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(contexts [n, 15], true means [n])."""
        v = self._latent(n, g)
        return v * self.scale + self.offset, self._mean(v)

    def round(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(contexts [G*A, 15], true means, noise draws) of round t: the same for every policy."""
        g = torch.Generator().manual_seed(_seed("round", self.spec.family, self.spec.instance, self.seed, t))
        n = self.spec.groups * self.spec.arms
        x, mean = self.draw(n, g)
        return x, mean, torch.rand(n, 2, generator=g)

    def reward(self, mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Realised rewards of arms with these true means and their [n, 2] uniform noise draws."""
        f = self.spec.family
        if f == "linear":
            return mean + _normal(noise)
        if f == "heavy_tailed":
            return mean + 0.5 * _normal(noise)
        r = (noise[:, 0] < mean).float()
        if f == "label_noise":
            r = torch.where(noise[:, 1] < 0.3, 1.0 - r, r)
        return r

    def eval_set(self, n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed held-out sample for the rank correlation of predictions with the true mean."""
        if self._eval is None:
            self._eval = self.draw(n, torch.Generator().manual_seed(_seed("eval", self.spec.family,
                                                                          self.spec.instance)))
        return self._eval


def _student_t(df: int, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Student-t(df) draws from a seeded generator: z / sqrt(chi2_df / df), chi2 as a sum of squares."""
    chi2 = torch.randn((*shape, df), generator=g).pow(2).sum(-1)
    return torch.randn(shape, generator=g) / torch.sqrt(chi2 / df)


def _normal(noise: torch.Tensor) -> torch.Tensor:
    """A standard normal from the first uniform (inverse CDF), so every policy's arm sees the same noise."""
    u = noise[:, 0].double().clamp(1e-12, 1 - 1e-12)
    return (math.sqrt(2.0) * torch.erfinv(2 * u - 1)).float()


# ------------------------------------------------------------------ policies
class ExplorerPolicy:
    """Pull the top `pulls` of each group by the explorer's score, observe them in one call.
    `stats_first`: update the context statistics before scoring (the scheduler's order)."""

    def __init__(self, explorer, spec: EnvSpec, stats_first: bool = True):
        self.explorer, self.spec, self.stats_first = explorer, spec, stats_first

    def select(self, x: torch.Tensor) -> torch.Tensor:
        if self.stats_first:
            self.explorer.update_feature_stats(x)
        score = self.explorer.score(x)[0]
        idx = _top_per_group(score, self.spec)
        if not self.stats_first:
            self.explorer.update_feature_stats(x)
        return idx

    def update(self, x: torch.Tensor, rewards: torch.Tensor) -> None:
        self.explorer.observe(x, rewards)

    def predict(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.explorer.score(x)[1]


class RandomPolicy:
    def __init__(self, spec: EnvSpec, seed: int = 0):
        self.spec = spec
        self.gen = torch.Generator().manual_seed(_seed("random", seed))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return _top_per_group(torch.rand(x.shape[0], generator=self.gen), self.spec)

    def update(self, x: torch.Tensor, rewards: torch.Tensor) -> None:
        pass

    def predict(self, x: torch.Tensor) -> None:
        return None


def _top_per_group(score: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    """Flat indices of the top `pulls` of each group (groups are consecutive runs of `arms`)."""
    top = score.view(spec.groups, spec.arms).topk(spec.pulls, dim=1).indices
    return (top + spec.arms * torch.arange(spec.groups)[:, None]).reshape(-1)


def explorer_config(name: str, seed: int = 0, **overrides):
    """The library default config of an explorer, with overrides (and the seed where it has one)."""
    if name not in EXPLORER_CLASSES:
        fail("explorer_config", "name", repr(name), " | ".join(EXPLORER_CLASSES))
    cls = EXPLORER_CLASSES[name][1]
    cfg = cls(feature_dim=DIM, **overrides)
    return replace(cfg, seed=seed) if hasattr(cfg, "seed") else cfg


def make_policy(name: str, spec: EnvSpec, *, seed: int = 0, **overrides):
    if name == "random":
        return RandomPolicy(spec, seed)
    cls = EXPLORER_CLASSES[name][0] if name in EXPLORER_CLASSES else None
    if cls is None:
        fail("make_policy", "name", repr(name), " | ".join(POLICY_NAMES))
    return ExplorerPolicy(cls(explorer_config(name, seed, **overrides)), spec)


# ------------------------------------------------------------------ running
@dataclass
class RunResult:
    regret: torch.Tensor  # per round, float64 [rounds]
    rank_corr: list[tuple[int, float]]  # (round, Spearman of predicted vs true mean on the eval set)
    seconds: float

    @property
    def cumulative(self) -> torch.Tensor:
        return torch.cumsum(self.regret, 0)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a.double())).double()
    rb = torch.argsort(torch.argsort(b.double())).double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def run_policy(policy, env: BanditEnv, rounds: int, corr_at: tuple[int, ...] = ()) -> RunResult:
    """Regret of each round, and the rank correlation after the rounds in corr_at."""
    import time

    spec = env.spec
    regret = torch.zeros(rounds, dtype=torch.float64)
    corr = []
    t0 = time.perf_counter()
    for t in range(rounds):
        x, mean, noise = env.round(t)
        idx = policy.select(x)
        m64 = mean.double()
        regret[t] = float(m64.view(spec.groups, spec.arms).topk(spec.pulls, dim=1).values.sum() - m64[idx].sum())
        policy.update(x[idx], env.reward(mean[idx], noise[idx]))
        if t + 1 in corr_at:
            ex, em = env.eval_set()
            pred = policy.predict(ex)
            corr.append((t + 1, float("nan") if pred is None else spearman(pred, em)))
    return RunResult(regret, corr, time.perf_counter() - t0)


# The benchmark's two observation batch sizes: (groups a round, rounds). 20 arms a group, 4 pulled.
SETTINGS = {"obs4": (1, 1000), "obs2048": (512, 20)}


def run_cells(families, settings, instances, policies: dict, progress=None, rounds: dict | None = None) -> dict:
    """Every policy on every (family, setting, instance), seed = the instance's position.

    policies: name -> factory(spec, seed) -> policy. Returns {setting: {family: {policy:
    [RunResult per instance]}}}. `progress(advance_by_rounds, description)` is called as it goes."""
    out: dict = {}
    for setting in settings:
        groups, t_default = SETTINGS[setting]
        t = (rounds or {}).get(setting, t_default)
        for family in families:
            for seed, inst in enumerate(instances):
                spec = EnvSpec(family=family, instance=inst, groups=groups)
                for name, factory in policies.items():
                    if progress is not None:
                        progress(0, f"{setting} {family} i{inst} {name}")
                    env = BanditEnv(spec, seed)
                    res = run_policy(factory(spec, seed), env, t, corr_at=(max(t // 10, 1), t // 2, t))
                    out.setdefault(setting, {}).setdefault(family, {}).setdefault(name, []).append(res)
                    if progress is not None:
                        progress(t * groups, None)
    return out


def summarize(results: list[RunResult], points: int = 100) -> dict:
    """Mean and spread over seeds of one (setting, family, policy) cell."""
    cum = torch.stack([r.cumulative for r in results])
    per_round = torch.stack([r.regret for r in results])
    t = cum.shape[1]
    final = cum[:, -1]
    block = max(t // points, 1)
    usable = (t // block) * block
    curve = per_round[:, :usable].reshape(len(results), -1, block).mean(2).mean(0)
    corr = {str(step): sum(r.rank_corr[i][1] for r in results) / len(results)
            for i, (step, _) in enumerate(results[0].rank_corr)}
    return {
        "cumulative_regret_mean": float(final.mean()),
        "cumulative_regret_sd": float(final.std()) if len(results) > 1 else 0.0,
        "cumulative_regret_per_seed": [float(v) for v in final],
        "regret_per_round_fall": sublinearity_ratio(cum.mean(0)),
        "rank_corr": corr,
        "seconds_mean": sum(r.seconds for r in results) / len(results),
        "cumulative_curve_mean": [float(v) for v in cum.mean(0)[block - 1::block]],
        "regret_per_round_curve_mean": [float(v) for v in curve],
        "curve_rounds": [int(v) for v in torch.arange(block, usable + 1, block)],
    }


def sublinearity_ratio(cum_regret: torch.Tensor) -> float:
    """(regret(T/10) / (T/10)) / (regret(T) / T): how much the average regret per round fell."""
    t = cum_regret.numel()
    t10 = max(t // 10, 1)
    early = float(cum_regret[t10 - 1]) / t10
    late = float(cum_regret[-1]) / t
    return early / late if late > 0 else math.inf
