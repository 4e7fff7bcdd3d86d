"""The efficiency grids (issue 13): generation spent where it pays, cost in generated tokens.

    rollout-bandits sweep --grid efficiency_tune   # the prompt scheduler's knobs, on validation
    rollout-bandits sweep --grid efficiency        # runs efficiency_tune first (what is missing),
                                                   # records its choice, then the grid itself
    rollout-bandits sweep --grid efficiency_small  # the same grid at the CPU-budget size (below)
    rollout-bandits report                         # adds the efficiency section when results exist

Sizes (SIZES): "efficiency" is the issue's design, 100 steps x 64 prompts x 8 rollouts (EFF_BASE).
"efficiency_small" keeps every structural choice (methods, optimizers, noise, 5 seeds for the
headline cells, 3 elsewhere, >= 500 distinct held-out problems per family where the family has
them, validation-split tuning) and shrinks each run to EFF_SMALL, so that the whole sweep (tuning
included) fits about an hour on 2 CPU cores; its groups are named efficiency_small* so the
two sizes never mix, and the report says which size each section is.

Methods (every one generates `prompts_per_step` groups a round unless said otherwise):
keep-all, the DAPO filter, PODS, the GRESO rule (keep-all training on the prompts GRESO lets
through a candidate pool), CBS, CBS + the learned prompt scheduler, and CBS whose reuse replaces
half of the generation (half the prompts generated, intra-group selection off, the training set
filled to keep-all's size with the scheduler's top reused rollouts). CBS's own settings are
SchedulerConfig's defaults when the sweep runs (the runs record them).

Hyperparameters: the prompt scheduler's knobs (candidate pool, exploration) are chosen by
`efficiency_tune` on the validation split (disjoint from training prompts and from the held-out
split; its own seeds), by the mean validation pass rate over the run (AUC / steps), mean over
seeds; the choice is written to `_efficiency_choice.json` beside the results and every
efficiency run reads it from there. Nothing is chosen on the held-out evaluation.

Evaluation: distinct held-out problems, up to 500 per family (a family whose held-out split is
smaller at this difficulty is evaluated on all of it: the report lists the counts); the held-out
share is 20% and the validation share 10% of each family's prompt space.
"""

from __future__ import annotations

import copy
import json
import math
import os

from rollout_bandits.config import merge
from rollout_bandits.experiments.grids import NOISE, OPTIMIZERS, RunSpec, spec
from rollout_bandits.experiments.statistics import (
    FINAL_K,
    auc,
    avg_curve,
    cost_ratios,
    final_of,
    mean_ci,
    mean_std,
)

EFF_BASE = {"steps": 100, "prompts_per_step": 64, "group_size": 8, "lr": 5e-5, "eval_every": 10,
            "eval_problems": 500, "eval_distinct": True, "eval_fraction": 0.2, "val_fraction": 0.1,
            "difficulty": 1}
METHODS = ("keep_all", "dapo_filter", "pods", "greso", "cbs", "cbs_prompt", "cbs_reuse")
METHOD_LABELS = {"keep_all": "keep-all", "dapo_filter": "DAPO filter", "pods": "PODS max-var",
                 "greso": "GRESO rule", "cbs": "CBS", "cbs_prompt": "CBS + prompt scheduling",
                 "cbs_reuse": "CBS, reuse replaces half the generation"}
HEADLINE = ("keep_all", "pods", "greso", "cbs_prompt")  # the cells the targets compare: 5 seeds
SEEDS, HEADLINE_SEEDS, NOISE_SEEDS = (0, 1, 2), (0, 1, 2, 3, 4), (0, 1, 2)
NOISE_OPTIMIZERS = ("grpo",)
TUNE_SEEDS = (100, 101)  # not the evaluation seeds: another warm start and prompt stream
TUNE_POOLS = (1.5, 2.0, 3.0)
# Exploration settings of the learned prompt scheduler: (NeuralUCB gamma, uniform share, history half-life).
TUNE_EXPLORE = {"low": {"learner": {"gamma": 0.5}, "explore_share": 0.05, "history_half_life": 64.0},
                "high": {"learner": {"gamma": 2.0}, "explore_share": 0.2, "history_half_life": 16.0}}
DEFAULT_CHOICE = {"candidate_pool": 2.0, "explore": "low"}
# The CPU-budget size: half the prompts per step (half the generation and training per run), the
# same steps and evaluations; the tuning grid drops the smallest pool.
EFF_SMALL = {**EFF_BASE, "prompts_per_step": 32}
SIZES = {"efficiency": EFF_BASE, "efficiency_small": EFF_SMALL}
SIZE_TUNE_POOLS = {"efficiency": TUNE_POOLS, "efficiency_small": (2.0, 3.0)}
GRID_NAMES = (*SIZES, *(f"{k}_tune" for k in SIZES))


def choice_file(prefix: str = "efficiency") -> str:
    return f"_{prefix}_choice.json"


CHOICE_FILE = choice_file()


def prompt_settings(choice: dict) -> dict:
    """PromptSchedulerConfig overrides of a tuning choice {candidate_pool, explore}."""
    return {"policy": "learned", "candidate_pool": choice["candidate_pool"],
            **copy.deepcopy(TUNE_EXPLORE[choice["explore"]])}


def method_overrides(method: str, base: dict, choice: dict) -> dict:
    """TrainConfig overrides of one method (besides the optimizer)."""
    if method in ("keep_all", "dapo_filter", "pods", "cbs"):
        return {"scheduler": {"policy": method}}
    if method == "greso":  # GRESO's own knobs at their published defaults, the tuned pool
        return {"scheduler": {"policy": "keep_all"},
                "prompts": {"policy": "greso", "candidate_pool": choice["candidate_pool"]}}
    if method == "cbs_prompt":
        return {"scheduler": {"policy": "cbs"}, "prompts": prompt_settings(choice)}
    if method == "cbs_reuse":
        rows = base["prompts_per_step"] * base["group_size"]
        fresh = math.ceil(0.5 * base["prompts_per_step"]) * base["group_size"]
        return {"fresh_fraction": 0.5, "scheduler": {"policy": "cbs", "intra_ratio": 1.0, "reuse_m": rows - fresh}}
    raise ValueError(f"efficiency method: found {method!r}, expected one of {METHODS}")


def _spec(group: str, opt: str, method: str, seed: int, base: dict, choice: dict, extra=None, **top) -> RunSpec:
    run = spec(group, opt, method, seed, extra_labels=extra)
    over = method_overrides(method, base, choice)
    run.overrides = merge({"loss": {"name": opt}, **top}, over)
    return run


def efficiency_grid(seeds=None, choice: dict | None = None, prefix: str = "efficiency") -> list[RunSpec]:
    """The efficiency grid of size `prefix` (SIZES): every method x optimizer (headline cells on 5
    seeds, the others on 3), and the verifier-noise variant for NOISE_OPTIMIZERS. `seeds`
    overrides all seed lists."""
    choice, base = choice or DEFAULT_CHOICE, SIZES[prefix]
    out = []
    for opt in OPTIMIZERS:
        for m in METHODS:
            for s in seeds or (HEADLINE_SEEDS if m in HEADLINE else SEEDS):
                out.append(_spec(prefix, opt, m, s, base, choice))
    for opt in NOISE_OPTIMIZERS:
        for m in METHODS:
            for s in seeds or NOISE_SEEDS:
                out.append(_spec(f"{prefix}_noise", opt, m, s, base, choice, verifier_noise=NOISE))
    return out


def tune_grid(seeds=None, prefix: str = "efficiency") -> list[RunSpec]:
    """CBS + prompt scheduling (GRPO) for each (pool, exploration), and keep-all for reference,
    evaluated on the validation split."""
    out, base = [], SIZES[prefix]
    for s in seeds or TUNE_SEEDS:
        out.append(_spec(f"{prefix}_tune", "grpo", "keep_all", s, base, DEFAULT_CHOICE, eval_split="val"))
        for pool in SIZE_TUNE_POOLS[prefix]:
            for ex in TUNE_EXPLORE:
                choice = {"candidate_pool": pool, "explore": ex}
                out.append(_spec(f"{prefix}_tune", "grpo", "cbs_prompt", s, base, choice,
                                 extra={"pool": pool, "explore": ex}, eval_split="val"))
    return out


def grid_of(name: str, seeds=None, choice: dict | None = None) -> tuple[dict, list[RunSpec]]:
    """(base settings, run specs) of one of GRID_NAMES."""
    if name.endswith("_tune"):
        prefix = name[: -len("_tune")]
        return SIZES[prefix], tune_grid(seeds, prefix)
    return SIZES[name], efficiency_grid(seeds, choice, name)


def tune_scores(recs: list[dict], prefix: str = "efficiency") -> list[dict]:
    """Per tuned setting: the validation AUC and final (mean ± std over seeds), best first."""
    by: dict[tuple, list[dict]] = {}
    for r in recs:
        if r["group"] == f"{prefix}_tune" and r["labels"]["policy"] == "cbs_prompt" and r["status"] == "ok":
            by.setdefault((r["labels"]["pool"], r["labels"]["explore"]), []).append(r)
    rows = [{"candidate_pool": pool, "explore": ex, "val_auc": mean_std([auc(r["curve"]) for r in rs]),
             "val_final": mean_std([final_of(r) for r in rs]), "seeds": sorted(r["seed"] for r in rs)}
            for (pool, ex), rs in by.items()]
    # Best validation AUC; ties: the smaller pool (less candidate drawing), then the name.
    return sorted(rows, key=lambda x: (-round(x["val_auc"][0], 6), x["candidate_pool"], x["explore"]))


def write_choice(results_dir: str, log=print, prefix: str = "efficiency") -> dict:
    """Choose the knobs from the tuning results and record the choice; DEFAULT_CHOICE if none."""
    from rollout_bandits.experiments.runner import load_results, write_json

    scores = tune_scores(load_results(results_dir), prefix)
    if scores:
        choice = {"candidate_pool": scores[0]["candidate_pool"], "explore": scores[0]["explore"]}
        how = f"best validation AUC (mean over seeds) of the {prefix}_tune runs"
    else:
        choice, how = dict(DEFAULT_CHOICE), "no efficiency_tune results: the defaults"
    record = {**choice, "settings": prompt_settings(choice), "chosen_by": how, "scores": scores}
    write_json(os.path.join(results_dir, choice_file(prefix)), record, indent=1)
    log(f"{prefix}: prompt scheduler knobs {json.dumps(choice)} ({how})")
    return choice


def read_choice(results_dir: str, prefix: str = "efficiency") -> dict | None:
    path = os.path.join(results_dir, choice_file(prefix))
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    return {"candidate_pool": rec["candidate_pool"], "explore": rec["explore"]}


# ------------------------------------------------------------------------------ report
def _pct_ci(m, lo, hi, n, scale=100.0, nd=1) -> str:
    if n == 0 or not math.isfinite(m):
        return "n/a"
    if n < 2:
        return f"{scale * m:.{nd}f} (n=1)"
    return f"{scale * m:.{nd}f} [{scale * lo:.{nd}f}, {scale * hi:.{nd}f}]"


def _ratio_cell(ratios: dict) -> str:
    vals = [v for v in ratios.values() if v is not None]
    m, lo, hi, n = mean_ci(vals)
    head = _pct_ci(m, lo, hi, n, scale=1.0, nd=2)
    return f"{head}, reached {len(vals)}/{len(ratios)}" if ratios else "n/a"


def _paired_ratio_diff(a: dict, b: dict) -> tuple[float, float, float, int]:
    """CI of the per-seed difference a - b of two methods' cost ratios (seeds where both reached)."""
    return mean_ci([a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None])


def _plot(cells: dict, groups: list[str], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rollout_bandits.trainer.plots import save_figure

    rows = [(g, o) for g in groups for o in OPTIMIZERS if any(k[:2] == (g, o) for k in cells)]
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 3.8 * len(rows)), squeeze=False)
    for i, (g, o) in enumerate(rows):
        # The seeds every method ran (headline cells have more): each curve averages the same seeds.
        seed_sets = [{r["seed"] for r in cells[(g, o, m)]} for m in METHODS if cells.get((g, o, m))]
        common = set.intersection(*seed_sets)
        for m in METHODS:
            recs = [r for r in cells.get((g, o, m)) or [] if r["seed"] in common]
            if not recs:
                continue
            steps, _, ys, walls = avg_curve(recs)
            by = [{c["step"]: c for c in r["curve"]} for r in recs]
            toks = [sum(b[s]["generated_tokens"] for b in by) / len(by) for s in steps]
            for col, x in enumerate((toks, walls)):
                axes[i][col].plot(x, [100 * y for y in ys], "-o", ms=2.5, lw=2 if m == "cbs_prompt" else 1.2,
                                  label=f"{METHOD_LABELS[m]} (n={len(recs)})")
        for col, xl in enumerate(("generated tokens", "training wall-clock (s, eval excluded)")):
            ax = axes[i][col]
            ax.set_xlabel(xl)
            ax.set_ylabel("held-out pass rate (%)")
            ax.set_title(f"{g}, {o}: vs {xl.split(' (')[0]}")
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=7)
    fig.suptitle("Efficiency grid: held-out pass rate (mean over the seeds all methods ran) against generation "
                 "and wall-clock")
    return save_figure(fig, path, dpi=60)


def report_section(recs: list[dict], results_dir: str, fig_dir: str, rel) -> list[str]:
    """The efficiency sections of docs/RESULTS.md, one per size run (none without results)."""
    out = []
    for prefix in SIZES:
        out += _size_section(recs, prefix, results_dir, fig_dir, rel)
    return out


def _size_section(recs: list[dict], prefix: str, results_dir: str, fig_dir: str, rel) -> list[str]:
    eff = [r for r in recs if r["group"] in (prefix, f"{prefix}_noise", f"{prefix}_tune")]
    if not eff:
        return []
    b = SIZES[prefix]
    lines = [f"## Efficiency: generation spent where it pays (issue 13), `--grid {prefix}`", "",
             f"Size: {b['steps']} steps x {b['prompts_per_step']} prompts x {b['group_size']} rollouts, evaluation "
             f"every {b['eval_every']} steps" + (" (the CPU-budget size of the issue's grid; same structure)."
                                                 if prefix != "efficiency" else "."), "",
             "Cost is counted in generated (response) tokens and in training wall-clock (the training "
             "stages, evaluation excluded). \"Tokens to target\": the generated tokens at which a run's pass "
             f"rate (trailing mean of {FINAL_K} evals) first reaches the same-seed keep-all final (mean of its "
             f"last {FINAL_K} evals), over keep-all's total generated tokens. Intervals: 95% t-intervals over "
             "seeds (paired by seed for differences); seeds that never reach the target are counted apart. "
             "The prompt scheduler's knobs come from the validation split (below), never from the held-out "
             "evaluation.", ""]
    lines += _tune_lines(eff, results_dir, prefix)
    sizes = next((r["cost"].get("eval_set_sizes") for r in eff if r["group"] != f"{prefix}_tune"
                  and r.get("cost", {}).get("eval_set_sizes")), None)
    if sizes:
        lines += ["Held-out problems per family (distinct, up to 500; a smaller family is evaluated on its "
                  "whole held-out split): " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".", ""]
    cells: dict[tuple, list[dict]] = {}
    for r in eff:
        if r["group"] != f"{prefix}_tune" and r["status"] == "ok":
            cells.setdefault((r["group"], r["labels"]["optimizer"], r["labels"]["policy"]), []).append(r)
    groups = [g for g in (prefix, f"{prefix}_noise") if any(k[0] == g for k in cells)]
    for g in groups:
        title = "no verifier noise" if g == prefix else f"verifier noise {NOISE}"
        lines += [f"### {title}", ""]
        lines += _baseline_lines(cells, g)
        lines += _targets_lines(cells, g)
        for opt in OPTIMIZERS:
            if any(k[:2] == (g, opt) for k in cells):
                lines += _method_table(cells, g, opt)
    if groups:
        png = _plot(cells, groups, os.path.join(fig_dir, f"results_{prefix}.png"))
        lines += [f"![efficiency]({rel(png)})", ""]
    return lines


def _tune_lines(eff: list[dict], results_dir: str, prefix: str) -> list[str]:
    scores = tune_scores(eff, prefix)
    if not scores:
        return []
    chosen = read_choice(results_dir, prefix)
    ref = [r for r in eff if r["group"] == f"{prefix}_tune" and r["labels"]["policy"] == "keep_all"]
    out = ["### Tuning on the validation split (CBS + prompt scheduling, GRPO)", "",
           "| candidate pool | exploration | validation AUC % | validation final % | seeds | chosen |",
           "|---|---|---|---|---|---|"]
    for row in scores:
        mark = "**yes**" if chosen and (row["candidate_pool"], row["explore"]) == (
            chosen["candidate_pool"], chosen["explore"]) else ""
        out.append(f"| {row['candidate_pool']} | {row['explore']} (`{json.dumps(TUNE_EXPLORE[row['explore']])}`) | "
                   f"{100 * row['val_auc'][0]:.1f} ± {100 * row['val_auc'][1]:.1f} | "
                   f"{100 * row['val_final'][0]:.1f} ± {100 * row['val_final'][1]:.1f} | "
                   f"{', '.join(map(str, row['seeds']))} | {mark} |")
    if ref:
        out.append(f"| keep-all (reference) | – | {100 * mean_std([auc(r['curve']) for r in ref])[0]:.1f} | "
                   f"{100 * mean_std([final_of(r) for r in ref])[0]:.1f} | "
                   f"{', '.join(str(r['seed']) for r in ref)} | |")
    return out + ["", f"Choice recorded in `{choice_file(prefix)}`: {json.dumps(chosen)}.", ""]


def _baseline_lines(cells: dict, g: str) -> list[str]:
    """How far keep-all itself moves the held-out pass rate: "tokens to keep-all's final" only
    measures efficiency when that final is clearly above where every run starts."""
    parts = []
    for opt in OPTIMIZERS:
        ref = cells.get((g, opt, "keep_all"))
        if ref:
            start = mean_std([r["curve"][0]["eval"]["mean"] for r in ref])[0]
            gain = mean_ci([final_of(r) - r["curve"][0]["eval"]["mean"] for r in ref])
            parts.append(f"{opt} {100 * start:.1f}% at step 0, final minus start {_pct_ci(*gain)} points")
    if not parts:
        return []
    return ["Does the baseline learn? Keep-all's held-out pass rate (mean over seeds; the gain paired "
            "by seed, 95% CI): " + "; ".join(parts) + ". Where that gain's interval includes 0, "
            "\"tokens to keep-all's final\" is reached by evaluation noise and says nothing about "
            "efficiency; read the paired Δ final and the generated tokens per run instead.", ""]


def _targets_lines(cells: dict, g: str) -> list[str]:
    out = ["Targets: CBS + prompt scheduling reaches keep-all's final with <= 0.7x keep-all's generated "
           "tokens, the interval of the saving (1 - ratio) above zero, and with fewer generated tokens than the "
           "GRESO rule and PODS (paired difference of the ratios below zero).", "",
           "| optimizer | ratio (95% CI) | <= 0.7x | saving CI above 0 | vs GRESO: ratio difference (95% CI) | "
           "vs PODS: ratio difference (95% CI) | all met |", "|---|---|---|---|---|---|---|"]
    for opt in OPTIMIZERS:
        ref, cp = cells.get((g, opt, "keep_all")), cells.get((g, opt, "cbs_prompt"))
        if not ref or not cp:
            continue
        r = cost_ratios(cp, ref)
        m, lo, hi, n = mean_ci([v for v in r.values() if v is not None])
        all_reached = n == len(r) and n > 0
        ok_ratio = all_reached and m <= 0.7
        ok_ci = all_reached and n >= 2 and hi < 1.0
        cmp, oks = [], []
        for other in ("greso", "pods"):
            recs = cells.get((g, opt, other))
            if not recs:
                cmp.append("n/a")
                oks.append(False)
                continue
            d = _paired_ratio_diff(r, cost_ratios(recs, ref))
            cmp.append(_pct_ci(*d, scale=1.0, nd=2))
            oks.append(d[3] >= 2 and d[2] < 0)
        yn = lambda b: "yes" if b else "NO"  # noqa: E731
        out.append(f"| {opt} | {_ratio_cell(r)} | {yn(ok_ratio)} | {yn(ok_ci)} | {cmp[0]} | {cmp[1]} | "
                   f"{yn(ok_ratio and ok_ci and all(oks))} |")
    return out + [""]


def _method_table(cells: dict, g: str, opt: str) -> list[str]:
    ref = cells.get((g, opt, "keep_all")) or []
    out = [f"#### {opt.upper().replace('DR_GRPO', 'Dr.GRPO')}", "",
           "| method | final held-out % (95% CI) | Δ final vs keep-all, paired (points, 95% CI) | generated tokens to "
           "keep-all's final / keep-all's total (95% CI) | wall-clock to keep-all's final / keep-all's (95% CI) | "
           "generated tokens / run | trained tokens / run | zero-variance groups | s / step | seeds |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    ref_final = {r["seed"]: final_of(r) for r in ref}
    for m in METHODS:
        recs = cells.get((g, opt, m))
        if not recs:
            continue
        fin = mean_ci([final_of(r) for r in recs])
        delta = mean_ci([final_of(r) - ref_final[r["seed"]] for r in recs if r["seed"] in ref_final])
        tok = cost_ratios(recs, ref) if ref else {}
        wall = cost_ratios(recs, ref, "wall") if ref else {}
        zero = mean_std([sum(z for z in r["series"]["zero_variance_share"] if z is not None)
                         / max(len(r["series"]["zero_variance_share"]), 1) for r in recs])[0]
        out.append(f"| {METHOD_LABELS[m]} | {_pct_ci(*fin)} | {_pct_ci(*delta)} | {_ratio_cell(tok)} | "
                   f"{_ratio_cell(wall)} | {mean_std([r['cost']['generated_tokens'] for r in recs])[0]:,.0f} | "
                   f"{mean_std([r['cost']['trained_tokens'] for r in recs])[0]:,.0f} | {100 * zero:.0f}% | "
                   f"{mean_std([r['timings']['train_seconds'] / max(len(r['series']['reward']), 1) for r in recs])[0]:.2f}"
                   f" | {len(recs)} |")
    return out + [""]
