"""The experiment grids: optimizers x selection policies x seeds, the noise and mini-batch grids,
and the ablations. A grid is a base TrainConfig dict plus one `RunSpec` per run."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from rollout_bandits.bandit import POLICIES as _SCHEDULER_POLICIES
from rollout_bandits.config import merge
from rollout_bandits.validation import fail

OPTIMIZERS = ("grpo", "dapo", "dr_grpo")
# The scheduler's policies in report order: the keep-all reference first, CBS last.
POLICIES = ("keep_all", *(p for p in _SCHEDULER_POLICIES if p not in ("keep_all", "cbs")), "cbs")
POLICY_LABELS = {"keep_all": "keep-all", "random_k": "random-k", "pods": "PODS max-var",
                 "dapo_filter": "DAPO filter", "reuse_fifo": "reuse-only (FIFO)", "cbs": "CBS"}


@dataclass
class RunSpec:
    """One training run: a name (unique, also the result file name), its group and labels for the
    report, a seed, and nested TrainConfig overrides on top of the grid's base settings."""

    name: str
    group: str
    seed: int
    overrides: dict
    labels: dict = field(default_factory=dict)


# The reduced CPU budget: 100 RL steps of 64 prompts x 8 samples from a 1000-step SFT warm-up.
CPU_BASE = {"steps": 100, "prompts_per_step": 64, "group_size": 8, "lr": 5e-5, "eval_every": 10,
            "eval_problems": 200, "difficulty": 1}
# The full grid for a GPU host (same model; more steps, seeds and evaluation problems).
GPU_BASE = {"steps": 400, "prompts_per_step": 128, "group_size": 8, "lr": 5e-5, "eval_every": 20,
            "eval_problems": 500, "difficulty": 1}

NOISE = 0.2  # verifier flip probability of the noisy variant
# The scheduler changes tested after the first sweep and the ablations (grids cpu_v2, cpu_v3),
# written out explicitly so these runs do not depend on SchedulerConfig's defaults when they run.
# v2: the gain signal the ablation picked (heldout). v3: v2 without global reuse (reuse_ratio 0),
# as the reuse ablation and the reuse-only baseline point to (see docs/RESULTS.md).
VARIANTS: dict[str, dict] = {"v2": {"gain": "heldout"}, "v3": {"gain": "heldout", "reuse_ratio": 0.0}}
# The loop change the first sweeps pointed to: several optimizer steps per round (mini-batches of
# MB_ROLLOUTS), so that reused rollouts add updates instead of only averaging one gradient. Both
# policies train 512 rows a round (CBS: 256 kept fresh + 256 reused), i.e. 4 steps each.
MB_ROLLOUTS = 128
MB_CBS = {"gain": "heldout", "reuse_ratio": 1.0}
GRIDS = ("cpu", "gpu", "ablations", "cpu_mb", *(f"cpu_{v}" for v in VARIANTS), "efficiency", "efficiency_tune",
         "efficiency_small", "efficiency_small_tune")


def spec(group, opt, policy, seed, extra_labels=None, scheduler=None, **top) -> RunSpec:
    sched = {"policy": policy, **(scheduler or {})}
    over = {"loss": {"name": opt}, "scheduler": sched, **top}
    labels = {"optimizer": opt, "policy": policy, **(extra_labels or {})}
    parts = [group, opt, policy] + [f"{k}-{v}" for k, v in (extra_labels or {}).items()] + [f"s{seed}"]
    return RunSpec(name="__".join(str(p) for p in parts), group=group, seed=seed, overrides=over, labels=labels)


def main_grid(seeds, optimizers=OPTIMIZERS, policies=POLICIES, group="main", noise=0.0) -> list[RunSpec]:
    top = {"verifier_noise": noise} if noise else {}
    sched = VARIANTS.get(group.rsplit("_", 1)[-1]) if "_" in group else None
    return [spec(group, o, p, s, scheduler=copy.deepcopy(sched), **top)
            for s in seeds for o in optimizers for p in policies]


ABLATIONS: dict[str, list[tuple[str, dict]]] = {
    # axis: [(value label, scheduler / loss overrides)]; the default CBS run of the main grid is
    # the reference row of each axis (same seeds), so it is not repeated here. The paper's version
    # of CBS (issue 7: batch gain, window candidates, no importance weighting) is gain=batch: the
    # other two are already the defaults.
    "gain": [("batch", {"scheduler": {"gain": "batch"}}), ("self", {"scheduler": {"gain": "self"}}),
             ("heldout", {"scheduler": {"gain": "heldout"}}), ("probe", {"scheduler": {"gain": "probe"}})],
    "intra_rule": [("max_variance", {"scheduler": {"intra_rule": "max_variance"}})],
    "ratio": [("intra0.25", {"scheduler": {"intra_ratio": 0.25}}), ("intra0.75", {"scheduler": {"intra_ratio": 0.75}}),
              ("intra1.0", {"scheduler": {"intra_ratio": 1.0}}),
              ("reuse0", {"scheduler": {"reuse_ratio": 0.0}}), ("reuse1", {"scheduler": {"reuse_ratio": 1.0}})],
    "gamma": [("0", {"scheduler": {"learner": {"gamma": 0.0}, "neural_linear": {"gamma": 0.0}, "ee_net": {}}})],
    "explorer": [("ee_net", {"scheduler": {"explorer": "ee_net"}})],
    "reuse_weighting": [("clipped_is", {"loss": {"reuse_weighting": "clipped_is"}})],
    "window": [("1", {"scheduler": {"window_rounds": 1}}), ("2", {"scheduler": {"window_rounds": 2}}),
               ("8", {"scheduler": {"window_rounds": 8}}), ("16", {"scheduler": {"window_rounds": 16}})],
}


def ablation_grid(seeds, axes=None, optimizer="grpo") -> list[RunSpec]:
    out = []
    for axis in axes or ABLATIONS:
        for value, over in ABLATIONS[axis]:
            for s in seeds:
                run = spec("ablation", optimizer, "cbs", s, extra_labels={"axis": axis, "value": value})
                merge(run.overrides, copy.deepcopy(over))
                run.overrides["scheduler"]["policy"] = "cbs"
                out.append(run)
    return out


def grid(name: str, seeds=None, choice: dict | None = None) -> tuple[dict, list[RunSpec]]:
    """(base settings, run specs) of a named grid (one of GRIDS); `choice`: the prompt scheduler's
    tuned knobs for the efficiency grid (experiments/efficiency.py)."""
    if name.startswith("efficiency"):
        from rollout_bandits.experiments import efficiency as eff

        return eff.grid_of(name, seeds, choice)
    seeds = list(seeds) if seeds else ([0, 1, 2, 3, 4] if name == "gpu" else [0, 1, 2])
    if name == "cpu":
        return CPU_BASE, main_grid(seeds) + main_grid(seeds, optimizers=("grpo",), group="noise", noise=NOISE)
    if name.startswith("cpu_") and name[4:] in VARIANTS:
        # CBS alone, re-run with a scheduler change (VARIANTS); baselines come from grid "cpu".
        v = name[4:]
        return CPU_BASE, (main_grid(seeds, policies=("cbs",), group=f"main_{v}")
                          + main_grid(seeds, optimizers=("grpo",), policies=("cbs",), group=f"noise_{v}", noise=NOISE))
    if name == "ablations":
        return CPU_BASE, ablation_grid(seeds)
    if name == "cpu_mb":
        return CPU_BASE, [spec("mb", o, p, s, scheduler=copy.deepcopy(MB_CBS) if p == "cbs" else None,
                               mini_batch_rollouts=MB_ROLLOUTS)
                          for s in seeds for o in OPTIMIZERS for p in ("keep_all", "cbs")]
    if name == "gpu":
        specs = main_grid(seeds) + main_grid(seeds, group="noise", noise=NOISE)
        for opt in OPTIMIZERS:
            specs += ablation_grid(seeds, optimizer=opt)
        return GPU_BASE, specs
    fail("sweep", "grid", repr(name), " | ".join(GRIDS))
