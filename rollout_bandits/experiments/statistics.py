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
- scheduling share: (prompts + schedule + observe) seconds / all training-stage seconds; the gain
  probe (an extra no-grad forward pass the per-arm gain signals need) is reported apart.
- cost to target (the efficiency grids): the generated tokens (or training wall-clock, eval
  excluded) at which a run's pass rate, as the trailing mean of its last FINAL_K eval points
  (fewer at the start; the same window as "final"), first reaches the same-seed keep_all run's
  final, linearly interpolated between eval points; as a fraction of that keep_all run's total.
  Under this definition keep_all reaches its own final at its last eval point at the latest.
- confidence intervals: t-based over seeds, mean ± t(0.975, n-1) * sd / sqrt(n) of per-seed
  values (for differences, the per-seed paired differences); a run that never reaches the
  target has no value and is counted apart ("reached k of n").
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




# Two-sided 95% quantiles of Student's t, t(0.975, df), df = 1..30 (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """t(0.975, df): the table to df 30, then the Cornish-Fisher expansion around z = 1.95996."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(xs) -> tuple[float, float, float, int]:
    """(mean, lower, upper, n) of the 95% t-interval over the finite values (n < 2: no interval)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    m, sd = mean_std(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan"), len(xs)
    h = t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return m, m - h, m + h, len(xs)


def trailing_mean(ys: list[float], k: int = FINAL_K) -> list[float]:
    """Each point's mean with the k - 1 before it (fewer at the start)."""
    return [sum(ys[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(ys))]


def cost_to_target(rec: dict, target: float, x: str = "generated_tokens") -> float | None:
    """The `x` (a curve column: generated_tokens, wall, ...) at which the run's trailing-mean pass
    rate first reaches `target`; None if it never does."""
    pts = rec["curve"]
    ys = [pts[0]["eval"]["mean"]] + trailing_mean([c["eval"]["mean"] for c in pts[1:]])
    return first_reach([c[x] for c in pts], ys, target)


def cost_ratios(recs: list[dict], ref_recs: list[dict], x: str = "generated_tokens") -> dict[int, float | None]:
    """Per seed: cost_to_target(run, same-seed reference final) / the reference's total `x`."""
    ref = {r["seed"]: r for r in ref_recs}
    out = {}
    for r in recs:
        if r["seed"] in ref:
            k = ref[r["seed"]]
            v = cost_to_target(r, final_of(k), x)
            out[r["seed"]] = None if v is None else v / k["curve"][-1][x]
    return out
