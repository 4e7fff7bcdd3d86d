"""A small version of the regret benchmark (issue 16): the scheduler's default explorer against
LinUCB on a linear and a nonlinear environment, at a small and a large observation batch.
benchmarks/regret_plot.py runs the full version on the report environments; this one uses a
tuning instance and far fewer rounds, so it runs in seconds."""

import math

import pytest
import torch
from _bandit_helpers import single_thread  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.regret import (
    BanditEnv,
    EnvSpec,
    ExplorerPolicy,
    make_policy,
    run_policy,
    spearman,
    sublinearity_ratio,
)
from rollout_bandits.bandit.scheduler import SchedulerConfig

DEFAULT = SchedulerConfig().explorer
# (groups a round, rounds): 4 observations per observe, and 1,024.
SMALL = {"obs4": (1, 250), "obs1024": (256, 8)}


class Frozen(ExplorerPolicy):
    """A learner that stops learning: it scores, but never observes."""

    def update(self, x, rewards):
        pass


def _run(policy_of, family, setting, seed=0):
    groups, rounds = SMALL[setting]
    spec = EnvSpec(family=family, instance=101, groups=groups)
    return run_policy(policy_of(spec), BanditEnv(spec, seed), rounds, corr_at=(rounds,))


@pytest.mark.parametrize("setting", list(SMALL))
@pytest.mark.parametrize("family,slack", [("linear", 1.1), ("mixture_net", 1.0)])
def test_default_explorer_matches_linucb_and_keeps_learning(family, slack, setting):
    ours = _run(lambda spec: make_policy(DEFAULT, spec), family, setting)
    lin = _run(lambda spec: make_policy("linucb", spec), family, setting)
    r_ours, r_lin = float(ours.cumulative[-1]), float(lin.cumulative[-1])
    assert r_ours <= slack * r_lin, (r_ours, r_lin)
    assert sublinearity_ratio(ours.cumulative) >= 1.5  # regret per round keeps falling
    assert ours.rank_corr[-1][1] > 0.7
    assert bool((ours.regret >= -1e-9).all()) and math.isfinite(r_ours)  # the oracle is exact


@pytest.mark.parametrize("setting", list(SMALL))
def test_a_learner_that_stops_learning_fails_the_check(setting):
    """The same check on a default explorer that never observes: regret stays near random's."""
    frozen = _run(lambda spec: Frozen(make_policy(DEFAULT, spec).explorer, spec), "mixture_net", setting)
    lin = _run(lambda spec: make_policy("linucb", spec), "mixture_net", setting)
    rnd = _run(lambda spec: make_policy("random", spec), "mixture_net", setting)
    assert float(frozen.cumulative[-1]) > 2.0 * float(lin.cumulative[-1])
    assert sublinearity_ratio(frozen.cumulative) < 1.5
    assert float(frozen.cumulative[-1]) > 0.5 * float(rnd.cumulative[-1])


def test_every_policy_sees_the_same_draws():
    spec = EnvSpec(family="mixture_net", instance=3, groups=2)
    a, b = BanditEnv(spec, seed=1), BanditEnv(spec, seed=1)
    for t in (0, 5):
        for u, v in zip(a.round(t), b.round(t), strict=True):
            assert torch.equal(u, v)
    assert not torch.equal(a.round(0)[0], BanditEnv(spec, seed=2).round(0)[0])
    assert not torch.equal(a.round(0)[0], BanditEnv(EnvSpec(family="mixture_net", instance=4, groups=2), 1).round(0)[0])
    x, mean, noise = a.round(0)
    assert x.shape == (40, 15) and mean.shape == (40,) and bool(((mean >= 0) & (mean <= 1)).all())
    r = a.reward(mean, noise)
    assert set(r.unique().tolist()) <= {0.0, 1.0}


def test_spearman_is_rank_based():
    a = torch.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
