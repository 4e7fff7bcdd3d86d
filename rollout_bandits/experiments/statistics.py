"""The metrics of the report, computed from the run records (never stored by hand).

- final: the held-out greedy pass rate (mean over families), averaged over the last FINAL_K = 3
  eval points (the last 20 steps at eval_every=10): one eval point of 7 x 200 problems moves by
  ~1.5 points from step to step, which is as large as the differences being measured. The value at
  the last step alone is listed beside it.
- AUC: the trapezoid area under pass rate vs step, divided by the number of steps (a mean pass
  rate over training).
- rollouts-to-target: the generated rollouts at the first eval point where the run's pass rate
  reaches the same-optimizer keep_all run's final pass rate (same seed, "final" as above), as a fraction of the
  keep_all run's total; the headline number uses the seed-averaged curves (less noisy), the
  per-seed values are listed beside it. Linear interpolation between eval points.
- scheduling share: (schedule + observe) seconds / all training-stage seconds; the gain probe
  (an extra no-grad forward pass the per-arm gain signals need) is reported apart.
"""

from __future__ import annotations

import math

FINAL_K = 3  # "final" = mean of the last FINAL_K eval points (one eval point is noisy, ~±1.5 points)


def final_of(rec: dict, key: str = "mean", k: int = FINAL_K) -> float:
    pts = [c["eval"][key] for c in rec["curve"][1:]][-k:] or [rec["curve"][-1]["eval"][key]]
    return sum(pts) / len(pts)


def mean_std(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def auc(curve: list[dict]) -> float:
    """Trapezoid area under mean pass rate vs step, over the number of steps."""
    pts = [(c["step"], c["eval"]["mean"]) for c in curve]
    if len(pts) < 2:
        return pts[0][1] if pts else float("nan")
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def first_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The x (linearly interpolated) where ys first reaches target; None if it never does."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target - 1e-12:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0) if y != y0 else x
    return None


def avg_curve(recs: list[dict], key: str = "mean"):
    """Seed-averaged (x=generated, y) over the eval points all runs share."""
    steps = sorted(set.intersection(*[{c["step"] for c in r["curve"]} for r in recs]))
    by = [{c["step"]: c for c in r["curve"]} for r in recs]
    xs = [sum(b[s]["generated"] for b in by) / len(by) for s in steps]
    ys = [sum(b[s]["eval"][key] for b in by) / len(by) for s in steps]
    walls = [sum(b[s]["wall"] for b in by) / len(by) for s in steps]
    return steps, xs, ys, walls


def cell_summary(recs: list[dict], ref_recs: list[dict] | None) -> dict:
    """Metrics of one cell (same labels, several seeds), against the keep_all reference cell."""
    finals = [final_of(r) for r in recs]
    out = {"n": len(recs), "final": mean_std(finals), "final_last": mean_std([r["final"]["mean"] for r in recs]),
           "auc": mean_std([auc(r["curve"]) for r in recs]),
           "before": mean_std([r["before"]["mean"] for r in recs]),
           "step_s": mean_std([r["timings"]["train_seconds"] / max(len(r["series"]["reward"]), 1) for r in recs]),
           "sched_share": mean_std([r["timings"]["scheduling_share"] for r in recs]),
           "probe_share": mean_std([r["timings"].get("probe_share") or 0.0 for r in recs]),
           "trained": mean_std([sum(r["series"]["trained_fresh"]) + sum(r["series"]["trained_reused"])
                                 for r in recs]),
           "seeds": sorted(r["seed"] for r in recs)}
    out["ratio_avg"] = out["ratio_seeds"] = out["steps_to_target"] = None
    out["delta"] = (float("nan"), float("nan"))
    if ref_recs:
        ref_by_seed = {r["seed"]: r for r in ref_recs}
        out["delta"] = paired_delta(recs, ref_recs)
        paired = [r for r in recs if r["seed"] in ref_by_seed]
        per_seed = []
        for r in paired:
            ref = ref_by_seed[r["seed"]]
            target, total = final_of(ref), ref["curve"][-1]["generated"]
            x = first_reach([c["generated"] for c in r["curve"]], [c["eval"]["mean"] for c in r["curve"]], target)
            per_seed.append(None if x is None else x / total)
        out["ratio_seeds"] = per_seed
        if paired:
            refs = [ref_by_seed[r["seed"]] for r in paired]
            _, rx, ry, _ = avg_curve(refs)
            steps, xs, ys, _ = avg_curve(paired)
            x = first_reach(xs, ys, sum(ry[1:][-FINAL_K:]) / len(ry[1:][-FINAL_K:]))
            out["ratio_avg"] = None if x is None else x / rx[-1]
            step_per_gen = steps[-1] / xs[-1] if xs[-1] else 0
            out["steps_to_target"] = None if x is None else x * step_per_gen
    return out


def paired_delta(recs, ref_recs):
    """Mean ± std over seeds of (final - reference final) on the same seed (same warm start, same
    prompts per step, same eval problems: the paired difference cancels most seed noise)."""
    ref_by_seed = {r["seed"]: final_of(r) for r in ref_recs}
    return mean_std([final_of(r) - ref_by_seed[r["seed"]] for r in recs if r["seed"] in ref_by_seed])


def group_key(rec) -> tuple:
    lab = rec["labels"]
    return (rec["group"], lab.get("optimizer"), lab.get("policy"), lab.get("axis"), lab.get("value"))


def cells_of(recs):
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        cells.setdefault(group_key(r), []).append(r)
    return cells


