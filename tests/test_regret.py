"""NeuralUCB's regret on a synthetic contextual bandit shaped like rollout scheduling.

Small T and one seed so it runs in seconds; benchmarks/regret_plot.py draws the full curves.
"""

import torch
from _bandit_helpers import single_thread  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.regret import RegretEnvConfig, regret_curves, sublinearity_ratio


def test_neural_ucb_regret_is_sublinear_and_lowest():
    curves = regret_curves(rounds=300, env_config=RegretEnvConfig(seed=0))
    final = {name: float(c[-1]) for name, c in curves.items()}
    ratio = sublinearity_ratio(curves["neural_ucb"])
    assert ratio >= 3.0, f"regret(T)/T fell only {ratio:.2f}x from T/10 to T ({final})"
    for other in ("linucb", "eps_greedy", "random"):
        assert final["neural_ucb"] < final[other], final
    # Cumulative regret never decreases (the oracle is exact).
    assert bool((torch.diff(curves["neural_ucb"]) >= -1e-9).all())
