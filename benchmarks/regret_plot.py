"""Cumulative regret of NeuralUCB vs LinUCB, epsilon-greedy and random on the synthetic
rollout bandit (rollout_bandits.bandit.regret), averaged over seeds.

    .venv/bin/python benchmarks/regret_plot.py            # T=1000, 3 seeds, ~2-4 min on 2 CPU cores
    .venv/bin/python benchmarks/regret_plot.py --rounds 300 --seeds 1

Writes docs/regret.png and benchmarks/results/regret.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rollout_bandits.bandit.regret import RegretEnvConfig, regret_curves, sublinearity_ratio

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("neural_ucb", "ee_net", "linucb", "eps_greedy", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--png", default=str(ROOT / "docs" / "regret.png"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "regret.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    env = RegretEnvConfig()
    per_seed: dict[str, list[torch.Tensor]] = {n: [] for n in NAMES}
    t0 = time.time()
    for seed in range(args.seeds):
        curves = regret_curves(NAMES, rounds=args.rounds, env_config=RegretEnvConfig(seed=seed), seed=seed)
        for n, c in curves.items():
            per_seed[n].append(c)
        print(f"seed {seed}: " + ", ".join(f"{n} {float(c[-1]):.0f}" for n, c in curves.items()), flush=True)
    elapsed = time.time() - t0

    t = args.rounds
    summary = {}
    for n, cs in per_seed.items():
        stack = torch.stack(cs)
        mean = stack.mean(0)
        summary[n] = {
            "final_regret_mean": float(mean[-1]),
            "final_regret_per_seed": [float(c[-1]) for c in cs],
            "regret_at_T10_mean": float(mean[max(t // 10, 1) - 1]),
            "avg_regret_per_round_first_T10": float(mean[max(t // 10, 1) - 1]) / max(t // 10, 1),
            "avg_regret_per_round_T": float(mean[-1]) / t,
            "sublinearity_ratio_mean_curve": sublinearity_ratio(mean),
            "sublinearity_ratio_per_seed": [sublinearity_ratio(c) for c in cs],
            "curve_mean": [float(v) for v in mean[:: max(t // 200, 1)]],
        }
    result = {
        "benchmark": "regret",
        "rounds": t,
        "seeds": args.seeds,
        "env": {"num_groups": env.num_groups, "group_size": env.group_size, "k": env.k, "noise": env.noise,
                "reward": "cos(2 a.z) + 0.5 (b.z)^2, z standardized rollout features"},
        "elapsed_s": elapsed,
        "device": "cpu",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "results": summary,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = torch.arange(1, t + 1)
    for n, cs in per_seed.items():
        stack = torch.stack(cs)
        mean = stack.mean(0)
        ax1.plot(x, mean, label=n)
        if len(cs) > 1:
            ax1.fill_between(x, stack.min(0).values, stack.max(0).values, alpha=0.15)
        ax2.plot(x, mean / x, label=n)
    ax1.set(xlabel="round t", ylabel="cumulative regret", title="Cumulative regret (mean, min-max over seeds)")
    ax2.set(xlabel="round t", ylabel="regret(t) / t", title="Average regret per round", yscale="log")
    ax1.legend()
    ax2.legend()
    fig.suptitle(f"Synthetic rollout bandit: {env.num_groups} groups x {env.group_size} arms, "
                 f"k={env.k} pulls/group, {args.seeds} seed(s)")
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    for n, s in summary.items():
        print(f"{n:11s} regret(T)={s['final_regret_mean']:8.1f}  regret(T/10)/(T/10)="
              f"{s['avg_regret_per_round_first_T10']:.3f}  regret(T)/T={s['avg_regret_per_round_T']:.3f}  "
              f"ratio={s['sublinearity_ratio_mean_curve']:.2f}")
    print(f"wrote {args.png} and {args.json} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
