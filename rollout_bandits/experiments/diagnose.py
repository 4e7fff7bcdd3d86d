"""What does CBS's fresh selection pick? One training run watched through `train(on_step=...)`.

Each round's choice is compared with PODS (max-variance) on the same batch: the share of CBS's
picks PODS would also pick (random picking gives the keep ratio), the mean |advantage| of the
picks over the group's mean |advantage|, and the correlation of the learned score with
|advantage| and with reward (within groups that have both rewards). The report lists the
summaries (`_diagnostics__<name>__s<seed>.json` in the results folder).
"""

from __future__ import annotations

import copy
import math
import os

import torch

from rollout_bandits.bandit import baselines
from rollout_bandits.config import merge
from rollout_bandits.experiments.grids import CPU_BASE, spec
from rollout_bandits.experiments.runner import (
    CACHE_DIR,
    RESULTS_DIR,
    RUNS_DIR,
    rounded,
    warmed_config,
    write_json,
)


def _round_row(step: int, plan, batch, intra_k, intra_ratio) -> dict:
    """One round's comparison of the scheduler's fresh picks with PODS on the same batch."""
    go = batch.group_offsets.cpu()
    r = batch.reward.cpu().float()
    sizes = (go[1:] - go[:-1]).long()
    gid = batch.group_index().cpu()
    gmax = torch.zeros(sizes.numel()).index_reduce_(0, gid, r, "amax", include_self=False)
    gmin = torch.zeros(sizes.numel()).index_reduce_(0, gid, r, "amin", include_self=False)
    contrast = (gmax > gmin)[gid]
    sel = plan.fresh.mask.cpu()
    _, pods = baselines.max_variance(r, go, k=intra_k, ratio=intra_ratio)
    pods = pods.cpu()
    a = plan.fresh_advantage.abs()
    gmean_a = (torch.zeros(sizes.numel()).index_add_(0, gid, a) / sizes)[gid]
    s = plan.fresh.scores.detach().cpu().float()
    m = sel & contrast
    row = {"step": step, "contrast_share": float(contrast.float().mean())}
    if bool(m.any()):
        row["pods_agree"] = float((pods & m).sum() / m.sum())
        row["abs_adv_ratio"] = float(a[m].mean() / gmean_a[m].mean())
        c = contrast
        if int(c.sum()) > 2 and float(s[c].std()) > 0:
            row["corr_score_absadv"] = float(torch.corrcoef(torch.stack([s[c], a[c]]))[0, 1])
            row["corr_score_reward"] = float(torch.corrcoef(torch.stack([s[c], r[c]]))[0, 1])
    if plan.reused is not None:
        row["reused_age"] = float(plan.reused.batch.per_rollout("age", torch.float32).mean())
        row["reused_abs_adv"] = float(plan.reused.advantage.abs().mean())
        row["reused_zero_adv_share"] = float((plan.reused.advantage.abs() < 1e-6).float().mean())
    return row


def diagnose_run(name: str, overrides: dict, seed: int = 0, base: dict | None = None,
             cache_dir: str = CACHE_DIR, runs_dir: str = RUNS_DIR) -> dict:
    """One CBS run (GRPO, the CPU grid's settings plus `overrides`); returns its summary."""
    from rollout_bandits.trainer.loop import train

    run = spec("diag", "grpo", "cbs", seed)
    merge(run.overrides, copy.deepcopy(overrides))
    cfg, _ = warmed_config(base or CPU_BASE, run, cache_dir, runs_dir)
    sched = cfg.scheduler
    rows: list[dict] = []
    res = train(cfg, overwrite=True, progress=False, log=lambda *_: None,
                on_step=lambda step, plan, batch: rows.append(
                    _round_row(step, plan, batch, sched.intra_k, sched.intra_ratio)))
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "step"))
    half = len(rows) // 2

    def avg(k, part):
        xs = [x[k] for x in part if k in x and x[k] is not None and math.isfinite(x[k])]
        return rounded(sum(xs) / len(xs)) if xs else None

    summary = {k: {"first_half": avg(k, rows[:half]), "second_half": avg(k, rows[half:])} for k in keys}
    summary["intra_ratio"] = sched.intra_ratio
    summary["final"] = rounded(res.pass_rate_after["mean"])
    return {"name": name, "seed": seed, "overrides": overrides, "summary": summary}


def write_diagnostics(name: str, overrides: dict, seed: int = 0, results_dir: str = RESULTS_DIR, **kw) -> str:
    """`diagnose_run` and write its summary where the report finds it; returns the file's path."""
    out = diagnose_run(name, overrides, seed=seed, **kw)
    path = os.path.join(results_dir, f"_diagnostics__{name}__s{seed}.json")
    write_json(path, out, indent=1)
    return path
