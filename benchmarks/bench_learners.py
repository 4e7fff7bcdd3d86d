"""Time of the explorers' `observe` and of a whole round (score + observe), one CPU thread.

Issue 16's budgets: `observe` of 2,048 pairs within ~10 ms on one CPU thread, and EE-Net's
round within 2x NeuralUCB's. Every explorer runs with its library defaults after a warm-up of
a few rounds (replay full, statistics set); each timed call adds 2,048 new pairs and trains
on them as in the regret benchmark's obs2048 setting. A neural-linear round includes the
head's refit, which happens in the first `score` after an `observe` (neural_linear.py).

The cases run interleaved in one process (BLOCKS alternations of CALLS calls each, timed in
this process's CPU time): this VM's speed moves by a third between processes and from minute to
minute, so one case timed after another does not compare. Each entry's median is over the blocks;
EE-Net's round is also divided by NeuralUCB's block by block (the issue's "within 2x").

Run: `OMP_NUM_THREADS=1 pytest benchmarks/bench_learners.py` (writes
benchmarks/results/learners_<device>_t1.json).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from _helpers import record

from rollout_bandits.bandit.regret import DIM, EXPLORER_CLASSES, BanditEnv, EnvSpec, explorer_config

N_OBSERVE = 2048
N_SCORE = 4096
BLOCKS, CALLS = 12, 5


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


def _cases() -> dict:
    """(name, what) -> (the call, the learner's config)."""
    out = {}
    for name in EXPLORER_CLASSES:
        learner, x, r = _warm(name)
        pulled, rewards = x[:N_OBSERVE], r[:N_OBSERVE]

        def observe(learner=learner, pulled=pulled, rewards=rewards):
            learner.observe(pulled, rewards)

        def one_round(learner=learner, x=x, pulled=pulled, rewards=rewards):
            learner.update_feature_stats(x)
            learner.score(x)
            learner.observe(pulled, rewards)

        out[(name, "observe")] = (observe, repr(learner.config))
        out[(name, "round")] = (one_round, repr(learner.config))
    return out


@pytest.fixture(scope="module")
def interleaved():
    """CPU ms per call of every case, one value per block, the blocks of all cases interleaved."""
    before, _ = torch.get_num_threads(), torch.set_num_threads(1)
    try:
        cases = _cases()
        for fn, _ in cases.values():
            fn()
            fn()
        times = {k: [] for k in cases}
        for _ in range(BLOCKS):
            for k, (fn, _) in cases.items():
                c0 = time.process_time()
                for _ in range(CALLS):
                    fn()
                times[k].append((time.process_time() - c0) * 1e3 / CALLS)
        yield cases, times
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("what", ["observe", "round"])
@pytest.mark.parametrize("name", list(EXPLORER_CLASSES))
def test_learner_time(benchmark, interleaved, name, what):
    cases, times = interleaved
    fn, config = cases[(name, what)]
    a = np.asarray(times[(name, what)])
    entry = {"suite": "learners", "impl": name, "what": what, "observe_pairs": N_OBSERVE,
             "scored_contexts": N_SCORE if what == "round" else 0, "feature_dim": DIM, "threads": 1,
             "timer": f"process CPU ms per call; {BLOCKS} blocks of {CALLS} calls, interleaved with the other cases",
             "median_ms": float(np.median(a)), "p20_ms": float(np.percentile(a, 20)),
             "p80_ms": float(np.percentile(a, 80)), "min_ms": float(a.min()), "blocks_ms": a.round(3).tolist(),
             "config": config}
    if name == "ee_net" and what == "round":
        ratio = a / np.asarray(times[("neural_ucb", "round")])
        entry["ratio_to_neural_ucb_round"] = {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                             "max": float(ratio.max())}
    record(entry)
    benchmark.extra_info.update(entry)
    benchmark.pedantic(fn, rounds=1, iterations=1)
