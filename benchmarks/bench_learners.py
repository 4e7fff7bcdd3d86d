"""Time of the explorers' `observe` and of a whole round (score + observe), one CPU thread.

Issue 16's budgets: `observe` of 2,048 pairs within ~10 ms on one CPU thread, and EE-Net's
round within 2x NeuralUCB's. Every explorer runs with its library defaults after a warm-up of
a few rounds (replay full, statistics set); each timed call adds 2,048 new pairs and trains
on them as in the regret benchmark's obs2048 setting. A neural-linear round includes the
head's refit, which happens in the first `score` after an `observe` (neural_linear.py).

Run: `OMP_NUM_THREADS=1 pytest benchmarks/bench_learners.py` (writes
benchmarks/results/learners_<device>_t1.json).
"""

from __future__ import annotations

import time

import pytest
import torch
from _helpers import record, time_fn

from rollout_bandits.bandit.regret import DIM, EXPLORER_CLASSES, BanditEnv, EnvSpec, explorer_config

N_OBSERVE = 2048
N_SCORE = 4096


def _warm(name: str):
    cls, _ = EXPLORER_CLASSES[name]
    learner = cls(explorer_config(name))
    env = BanditEnv(EnvSpec(family="mixture_net", instance=100, groups=N_SCORE // 20), seed=0)
    data = [env.round(t) for t in range(4)]
    for x, mean, noise in data[:3]:
        learner.update_feature_stats(x)
        learner.score(x)
        learner.observe(x[:N_OBSERVE], env.reward(mean[:N_OBSERVE], noise[:N_OBSERVE]))
    x, mean, noise = data[3]
    return learner, x, env.reward(mean, noise)


@pytest.fixture(autouse=True)
def one_thread():
    """The budget is per CPU thread (the file's name takes the session's count: OMP_NUM_THREADS=1)."""
    before, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("what", ["observe", "round"])
@pytest.mark.parametrize("name", list(EXPLORER_CLASSES))
def test_learner_time(benchmark, name, what):
    learner, x, r = _warm(name)
    pulled, rewards = x[:N_OBSERVE], r[:N_OBSERVE]

    def observe():
        learner.observe(pulled, rewards)

    def one_round():
        learner.update_feature_stats(x)
        learner.score(x)
        learner.observe(pulled, rewards)

    fn = observe if what == "observe" else one_round
    t = time_fn(fn, torch.device("cpu"), rounds=20, warmup=2)
    # This process's CPU seconds per call: on a shared machine (load average in the JSON) the
    # wall-clock figures above include the time other processes held the core.
    c0 = time.process_time()
    for _ in range(10):
        fn()
    t["cpu_ms_per_call"] = (time.process_time() - c0) * 100.0
    entry = {"suite": "learners", "impl": name, "what": what, "observe_pairs": N_OBSERVE,
             "scored_contexts": N_SCORE if what == "round" else 0, "feature_dim": DIM, "threads": 1,
             "config": repr(learner.config), **t}
    record(entry)
    benchmark.extra_info.update(entry)
    benchmark.pedantic(fn, rounds=1, iterations=1)
