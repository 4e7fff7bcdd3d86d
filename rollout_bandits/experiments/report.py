"""The report: docs/RESULTS.md and its figures, from the run records alone.

One function per section; the numbers come from statistics.py (metric definitions there).
"""

from __future__ import annotations

import json
import math
import os

from rollout_bandits.experiments.efficiency import report_section as efficiency_section
from rollout_bandits.experiments.grids import (
    ABLATIONS,
    MB_CBS,
    MB_ROLLOUTS,
    NOISE,
    OPTIMIZERS,
    POLICIES,
    POLICY_LABELS,
    VARIANTS,
)
from rollout_bandits.experiments.runner import FORMAT, RESULTS_DIR, load_results
from rollout_bandits.experiments.statistics import (
    avg_curve,
    cell_summary,
    cells_of,
    final_of,
    mean_std,
    paired_delta,
)
from rollout_bandits.validation import fail

PAPER_LABEL = "batch (= the paper's CBS: batch gain, window candidates, no IS weighting)"


def _fmt(m, sd, pct=True):
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if pct else f"{m:.2f} ± {sd:.2f}"


def _ratio_str(s: dict) -> str:
    if s["ratio_seeds"] is None:
        return "n/a"
    avg = "not reached" if s["ratio_avg"] is None else f"{s['ratio_avg']:.2f}"
    per = ", ".join("–" if v is None else f"{v:.2f}" for v in s["ratio_seeds"])
    return f"{avg} ({per})"


def _plot_group(cells: dict, order: list[tuple], labels: dict, path: str, title: str, rows: list[str] | None = None,
                row_of=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rollout_bandits.trainer.plots import save_figure

    rows = rows or [""]
    fig, axes = plt.subplots(len(rows), 3, figsize=(16, 4.2 * len(rows)), squeeze=False)
    for key in order:
        recs = cells.get(key)
        if not recs:
            continue
        row = rows.index(row_of(key)) if row_of else 0
        steps, xs, ys, walls = avg_curve(recs)
        by = [{c["step"]: c["eval"]["mean"] for c in r["curve"]} for r in recs]
        sds = [mean_std([b[s] for b in by])[1] for s in steps]
        for col, x in enumerate((steps, xs, walls)):
            ax = axes[row][col]
            line, = ax.plot(x, [100 * y for y in ys], "-o", ms=2.5, lw=2 if "cbs" in str(key) else 1.2,
                            label=f"{labels[key]} (n={len(recs)})")
            ax.fill_between(x, [100 * (y - s) for y, s in zip(ys, sds)], [100 * (y + s) for y, s in zip(ys, sds)],
                            color=line.get_color(), alpha=0.12)
    for i, row in enumerate(rows):
        for col, xl in enumerate(("RL step", "generated rollouts", "training wall-clock (s, eval excluded)")):
            ax = axes[i][col]
            ax.set_xlabel(xl)
            ax.set_ylabel("held-out pass rate, mean of families (%)")
            ax.grid(alpha=0.3)
            ax.set_title(f"{row}  vs {xl.split(' (')[0]}".strip())
        axes[i][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=60)


def _main_tables(cells, group, optimizers, lines, ref_policy="keep_all"):
    for opt in optimizers:
        ref = cells.get((group, opt, ref_policy, None, None))
        rows = [(p, cells.get((group, opt, p, None, None))) for p in POLICIES]
        rows = [(p, r) for p, r in rows if r]
        if not rows:
            continue
        lines += [f"#### {opt.upper().replace('DR_GRPO', 'Dr.GRPO')}", "",
                  "| policy | final pass % (mean ± std) | Δ final vs keep-all, paired (points) | at last step % | "
                  "AUC % | rollouts to keep-all final / keep-all total: seed-avg curve (per seed) | trained "
                  "rollouts / run | s / step | scheduling share | gain-probe share | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p, recs in rows:
            s = cell_summary(recs, ref)
            lines.append(f"| {POLICY_LABELS[p]} | {_fmt(*s['final'])} | {_fmt(*s['delta'])} | "
                         f"{_fmt(*s['final_last'])} | "
                         f"{_fmt(*s['auc'])} | {_ratio_str(s)} | "
                         f"{s['trained'][0]:,.0f} | {s['step_s'][0]:.2f} | {100 * s['sched_share'][0]:.1f}% | "
                         f"{100 * s['probe_share'][0]:.1f}% | {len(recs)} |")
        lines.append("")


def _targets(cells, group, optimizers) -> list[str]:
    out = ["| optimizer | CBS rollouts-to-target (seed-avg) | keep-all's own (seed-avg) | <= 0.7x? | CBS final | "
           "CBS - closest baseline, paired (points) | final not lower beyond spread? |",
           "|---|---|---|---|---|---|---|"]
    verdicts = []
    for opt in optimizers:
        cbs = cells.get((group, opt, "cbs", None, None))
        ref = cells.get((group, opt, "keep_all", None, None))
        if not cbs or not ref:
            continue
        s = cell_summary(cbs, ref)
        ok_ratio = s["ratio_avg"] is not None and s["ratio_avg"] <= 0.7
        worst_p, worst = None, None
        for p in POLICIES:
            recs = cells.get((group, opt, p, None, None))
            if p == "cbs" or not recs:
                continue
            d = paired_delta(cbs, recs)
            if worst is None or d[0] < worst[0]:
                worst_p, worst = p, d
        cm, csd = s["final"]
        # "Not lower beyond seed spread": CBS minus each baseline, paired by seed; it fails when the
        # mean difference is below zero by more than its seed standard deviation.
        ok_final = worst is None or worst[0] + worst[1] >= 0
        verdicts.append((opt, ok_ratio, ok_final))
        ratio_txt = "not reached" if s["ratio_avg"] is None else f"{s['ratio_avg']:.2f}"
        own = cell_summary(ref, ref)["ratio_avg"]
        out.append(f"| {opt} | {ratio_txt} | {'n/a' if own is None else f'{own:.2f}'} | "
                   f"{'yes' if ok_ratio else 'NO'} | {_fmt(cm, csd)} | vs {POLICY_LABELS.get(worst_p, '-')}: "
                   f"{_fmt(*worst) if worst else ''} | {'yes' if ok_final else 'NO'} |")
    return out, verdicts


def write_report(results_dir: str = RESULTS_DIR, out_path: str = os.path.join("docs", "RESULTS.md"),
           fig_dir: str = "docs", notes_path: str | None = None) -> str:
    """Write the Markdown report and its PNGs from the result files alone."""
    recs = load_results(results_dir)
    if not recs:  # a typo in --results must not replace the report with an empty one
        fail("report", "results", f"{results_dir!r}, which " + ("holds no run records" if os.path.isdir(results_dir)
                                                                else "does not exist"),
             f"a folder of run records (JSON files of format {FORMAT!r}, written by `rollout-bandits sweep`)")
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] != "ok"]
    cells = cells_of(ok)
    rel = lambda png: os.path.relpath(png, os.path.dirname(out_path) or ".")  # noqa: E731
    lines = ["# Results: rollout scheduling on the synthetic task families", "",
             "Generated by `rollout-bandits report` from the JSON files in "
             f"`{results_dir}/` (one per run). Do not edit by hand: re-run the command.", ""]
    notes_path = notes_path or os.path.join(results_dir, "_notes.md")
    if os.path.isfile(notes_path):
        with open(notes_path) as f:
            lines += [f.read().rstrip(), ""]
    if ok:
        lines += _setup_section([r for r in ok if not r["group"].startswith("efficiency")] or ok)
    lines += _sweeps_section(results_dir)
    for group, title in _GROUPS:
        gcells = {k: v for k, v in cells.items() if k[0] == group}
        if not gcells:
            continue
        if "_" in group:  # only CBS is re-run: the baselines are the base group's
            for k, v in cells.items():
                if k[0] == group.split("_")[0] and k[2] != "cbs":
                    gcells[(group,) + k[1:]] = v
            cells = {**cells, **gcells}
        lines += _group_section(cells, gcells, group, title, fig_dir, rel, ok)
    lines += _ablation_sections(cells, fig_dir, rel)
    lines += efficiency_section(ok, results_dir, fig_dir, rel)
    lines += _duplicates_section(ok)
    lines += _diagnostics_section(results_dir)
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['name']}`: {r.get('error')}" for r in failed] + [""]
    lines += _reproduce_section(len(ok), len(failed), any(r["group"].startswith("efficiency") for r in recs))
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(lines))
    return out_path


_GROUPS = (("main", "Main grid: optimizers x selection policies"),
           ("noise", f"Verifier noise (reward flipped with probability {NOISE})"),
           *((f"{g}_{v}", f"{t} with scheduler change {v} = `{json.dumps(VARIANTS[v])}` (CBS "
              "re-run, baselines as above)") for v in VARIANTS
             for g, t in (("main", "Main grid"), ("noise", "Verifier noise"))),
           ("mb", f"Mini-batch updates: one optimizer step per {MB_ROLLOUTS} rollouts (keep-all and "
                  f"CBS with `{json.dumps(MB_CBS)}`, both 512 training rows = 4 steps a round)"))


def _setup_section(ok: list[dict]) -> list[str]:
    """Setup, from the stored configs."""
    c = ok[0]["config"]
    devs = sorted({r["device"]["device"] for r in ok})
    vers = ok[0]["versions"]
    lines = ["## Setup (read from the result files)", "",
             f"- device: {', '.join(devs)}; 1 torch thread per run, runs 2 at a time; torch {vers['torch']}, "
             f"transformers {vers['transformers']}, Python {vers['python']}; commits checked out while the runs "
             f"ran: {', '.join(sorted({str(r['versions'].get('git_commit')) for r in ok}))} (plus uncommitted "
             "work in progress).",
             f"- policy: {c['policy']['arch']} {c['policy']['n_layers']} layers x {c['policy']['hidden']} hidden "
             f"(char tokenizer); families {', '.join(k for k in ok[0]['before'] if k != 'mean')} at difficulty "
             f"{c['difficulty']}; shared SFT warm-up per seed (see below), then RL.",
             f"- RL: {c['steps']} steps x {c['prompts_per_step']} prompts x {c['group_size']} samples "
             f"({c['steps'] * c['prompts_per_step'] * c['group_size']:,} generated rollouts per run), lr {c['lr']}, "
             f"held-out eval every {c['eval_every']} steps on {c['eval_problems']} problems per family (greedy).",
             ""]
    warm = sorted({(r["seed"], r["timings"].get("shared_warmup_seconds")) for r in ok})
    befores: dict = {}
    for r in ok:
        befores.setdefault(r["seed"], set()).add(r["before"]["mean"])
    return lines + ["- shared warm-up per seed (seconds, held-out pass rate at RL step 0 across all runs of the "
                    "seed): " + "; ".join(f"seed {s}: {w}s, {', '.join(f'{100 * b:.1f}%' for b in sorted(befores[s]))}"
                                          for s, w in dict(warm).items()), ""]


def _sweeps_section(results_dir: str) -> list[str]:
    path = os.path.join(results_dir, "_sweeps.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        sweeps = json.load(f)
    if not sweeps:
        return []
    lines = ["## Sweeps and their wall-clock", "", "| grid | runs | failed | wall-clock | jobs | device | "
             "finished | argv |", "|---|---|---|---|---|---|---|---|"]
    for s in sweeps:
        lines.append(f"| {s['grid']} | {s['runs']} | {s['failed']} | {s['wall_seconds'] / 60:.1f} min | "
                     f"{s['jobs']} | {s['device']} | {s['finished']} | `{' '.join(s['argv'])}` |")
    lines.append(f"| **total** | {sum(s['runs'] for s in sweeps)} | {sum(s['failed'] for s in sweeps)} | "
                 f"{sum(s['wall_seconds'] for s in sweeps) / 60:.1f} min | | | | |")
    return lines + [""]


def _group_section(cells, gcells, group, title, fig_dir, rel, ok) -> list[str]:
    """Targets, per-optimizer tables, the figure and the per-family finals of one group of runs."""
    opts = [o for o in OPTIMIZERS if any(k[1] == o for k in gcells)]
    lines = [f"## {title}", ""]
    tgt, _ = _targets(cells, group, opts)
    lines += ["### Targets", "", "CBS reaches the same-optimizer keep-all final pass rate in <= 0.7x the "
              "generated rollouts (seed-averaged curves; keep-all's own crossing of its final value is shown "
              "beside it: noise alone puts it below 1), and its final pass rate is not below any "
              "baseline's by more than the seed spread (CBS minus baseline, paired by seed: mean + std >= 0)."
              "", ""] + tgt + [""]
    lines += ["### Per optimizer", ""]
    _main_tables(cells, group, opts, lines)
    order = [(group, o, p, None, None) for o in opts for p in POLICIES]
    labels = {k: POLICY_LABELS[k[2]] for k in order}
    png = _plot_group(cells, order, labels, os.path.join(fig_dir, f"results_{group}.png"),
                      f"{title} (mean ± std over seeds)", rows=opts, row_of=lambda k: k[1])
    lines += [f"![{group}]({rel(png)})", ""]
    # Per-family finals (first optimizer).
    opt = opts[0]
    fams = [k for k in ok[0]["before"] if k != "mean"]
    lines += [f"### Final pass rate per family ({opt}, mean over seeds, %)", "",
              "| policy | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
    lines.append("| (step 0) | " + " | ".join(
        f"{100 * mean_std([r['before'][f] for r in gcells.get((group, opt, 'keep_all', None, None), [])])[0]:.1f}"
        for f in fams) + " |")
    for p in POLICIES:
        recs = gcells.get((group, opt, p, None, None))
        if recs:
            lines.append(f"| {POLICY_LABELS[p]} | " + " | ".join(
                f"{100 * mean_std([final_of(r, f) for r in recs])[0]:.1f}" for f in fams) + " |")
    return lines + [""]


def _ablation_sections(cells, fig_dir, rel) -> list[str]:
    """Ablations (CBS, GRPO): each axis against the default CBS run of the main grid on the same seeds."""
    abl = {k: v for k, v in cells.items() if k[0] == "ablation"}
    if not abl:
        return []
    lines = ["## Ablations (CBS with GRPO)", "",
             "Each axis changes one setting of CBS as the main grid ran it; the `default` row is that "
             "main-grid CBS run on the ablation's seeds (its setting in brackets; its gain signal was "
             f"`{_main_cbs_gain(cells)}` when the sweep ran); rollouts-to-target is against keep-all GRPO "
             "of the same seeds.", ""]
    axes = [a for a in ABLATIONS if any(k[3] == a for k in abl)]
    axes += sorted({k[3] for k in abl} - set(axes))
    for axis in axes:
        known = [v for v, _ in ABLATIONS.get(axis, [])]
        keys = sorted((k for k in abl if k[3] == axis),
                      key=lambda k: (known.index(k[4]) if k[4] in known else len(known), k[4]))
        opt = keys[0][1]
        seeds = sorted({r["seed"] for k in keys for r in abl[k]})
        default = [r for r in cells.get(("main", opt, "cbs", None, None), []) if r["seed"] in seeds]
        ref = [r for r in cells.get(("main", opt, "keep_all", None, None), []) if r["seed"] in seeds]
        lines += [f"### {axis}", "", "| setting | final pass % | Δ final vs default CBS, paired (points) | "
                  "AUC % | rollouts-to-target (per seed) | s / step | scheduling share | gain-probe share | "
                  "seeds |", "|---|---|---|---|---|---|---|---|---|"]
        rows = [("keep-all (reference)", ref), (f"default ({_default_value(axis, default)})", default)]
        rows += [(PAPER_LABEL if (axis, k[4]) == ("gain", "batch") else k[4], abl[k]) for k in keys]
        for name, recs in rows:
            if not recs:
                continue
            s = cell_summary(recs, ref)
            d = paired_delta(recs, default) if default else (float("nan"), float("nan"))
            lines.append(f"| {name} | {_fmt(*s['final'])} | {_fmt(*d)} | {_fmt(*s['auc'])} | {_ratio_str(s)} | "
                         f"{s['step_s'][0]:.2f} | {100 * s['sched_share'][0]:.1f}% | "
                         f"{100 * s['probe_share'][0]:.1f}% | {len(recs)} |")
        lines.append("")
        pcells = {("ref",): ref, ("default",): default, **{k: abl[k] for k in keys}}
        plabels = {("ref",): "keep-all", ("default",): "CBS default", **{k: f"{axis}={k[4]}" for k in keys}}
        png = _plot_group(pcells, list(pcells), plabels, os.path.join(fig_dir, f"results_ablation_{axis}.png"),
                          f"Ablation: {axis} (CBS, {opt})")
        lines += [f"![{axis}]({rel(png)})", ""]
    return lines


def _reproduce_section(n_ok: int, n_failed: int, efficiency: bool = False) -> list[str]:
    return ["## Reproduce", "", "```", "rollout-bandits sweep --grid cpu --jobs 2        # main + noise grids",
            "rollout-bandits sweep --grid ablations --jobs 2",
            *(f"rollout-bandits sweep --grid cpu_{v} --jobs 2     # CBS with {json.dumps(VARIANTS[v])}"
              for v in VARIANTS),
            "rollout-bandits sweep --grid cpu_mb --jobs 2     # mini-batch updates: keep-all vs CBS",
            *(["rollout-bandits sweep --grid efficiency --jobs 2 # issue 13: efficiency_tune first, then the grid",
               "rollout-bandits sweep --grid efficiency_small --jobs 2  # the same at the CPU-budget size"]
              if efficiency else []),
            "rollout-bandits diagnose gain_auto '{\"scheduler\": {\"gain\": \"auto\"}}'",
            "rollout-bandits diagnose gain_heldout '{\"scheduler\": {\"gain\": \"heldout\"}}'",
            "rollout-bandits diagnose gain_self '{\"scheduler\": {\"gain\": \"self\"}}'",
            "rollout-bandits report                         # this file and docs/results_*.png", "```", "",
            "Result files that exist are skipped, so an interrupted sweep resumes; `--rerun` forces. "
            "`rollout-bandits sweep --grid gpu` is the full grid (5 seeds, 400 steps x 128 prompts, noise for "
            "every optimizer, ablations for every optimizer); it was not run (no GPU host was available).", "",
            f"{n_ok} runs ok, {n_failed} failed. Metric definitions: `rollout_bandits/experiments/statistics.py` "
            "(module docstring).", ""]


def _duplicates_section(ok: list[dict]) -> list[str]:
    """Runs whose configs are identical (out_dir aside), run at different times (often different
    commits of the code): their eval curves must match exactly if the runs are deterministic."""
    by: dict[str, list[dict]] = {}
    for r in ok:
        cfg = dict(r["config"], out_dir=None)
        cfg.pop("overwrite", None)  # a config field of runs made before it became a flag
        cfg["scheduler"] = {k: v for k, v in cfg["scheduler"].items() if k != "intra_rule" or v != "topk"}
        by.setdefault(json.dumps(cfg, sort_keys=True), []).append(r)
    pairs = [rs for rs in by.values() if len(rs) > 1]
    if not pairs:
        return []
    def evals(r):
        return [(c["step"], c["eval"]) for c in r["curve"]]  # wall-clock differs, of course

    same = sum(all(evals(x) == evals(rs[0]) for x in rs[1:]) for rs in pairs)
    return ["## Determinism check", "",
            f"{len(pairs)} sets of runs share a config (run at different times, under different commits): "
            f"{same} of them have bit-identical eval curves. "
            + ", ".join(" = ".join(f"`{x['name']}`" for x in rs) for rs in pairs[:4]) + ".", ""]


def _main_cbs_gain(cells) -> str:
    recs = cells.get(("main", "grpo", "cbs", None, None)) or []
    return ", ".join(sorted({r["config"]["scheduler"]["gain"] for r in recs})) or "?"


def _diagnostics_section(results_dir: str) -> list[str]:
    diags = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if name.startswith("_diagnostics__") and name.endswith(".json"):
            with open(os.path.join(results_dir, name)) as f:
                diags.append(json.load(f))
    if not diags:
        return []
    cols = [("pods_agree", "share of CBS's picks PODS also picks"), ("abs_adv_ratio", "mean abs(A) of picks / group's"),
            ("corr_score_absadv", "corr(score, abs(A))"), ("corr_score_reward", "corr(score, reward)"),
            ("reused_age", "mean age of reused (rounds)"), ("reused_zero_adv_share", "reused with A = 0")]
    out = ["## What CBS's selection picks (diagnostic runs, GRPO)", "",
           "`rollout-bandits diagnose NAME OVERRIDES`: one CBS run with each round's fresh "
           "selection compared with PODS on the same batch, in groups with both rewards. A random pick of the "
           "same size agrees with PODS on a share equal to the keep ratio; PODS itself gets 1.0. Values: first "
           "half of training / second half.", "",
           "| run | seed | keep ratio | " + " | ".join(c[1] for c in cols) + " | final pass % |",
           "|---" * (len(cols) + 4) + "|"]
    for d in diags:
        sm = d["summary"]
        cells = []
        for key, _ in cols:
            v = sm.get(key) or {}
            f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
            cells.append(f"{f(v.get('first_half'))} / {f(v.get('second_half'))}")
        out.append(f"| {d['name']} (`{json.dumps(d['overrides'])}`) | {d['seed']} | {sm.get('intra_ratio')} | "
                   + " | ".join(cells) + f" | {100 * sm['final']:.1f} |")
    return out + [""]


def _explorer_gamma(s: dict) -> str:
    """The default explorer's bonus scale (its config field: EXPLORERS in bandit/scheduler_config.py)."""
    from rollout_bandits.bandit.scheduler_config import EXPLORERS

    field = EXPLORERS.get(s.get("explorer", "neural_ucb"), ("learner",))[0]
    return str(s.get(field, {}).get("gamma", "?"))


def _default_value(axis: str, recs: list[dict]) -> str:
    if not recs:
        return "?"
    c = recs[0]["config"]
    s = c["scheduler"]
    return {"gain": s["gain"], "window": str(s["window_rounds"]),
            "ratio": f"intra {s['intra_ratio']}, reuse {s['reuse_ratio']}", "gamma": _explorer_gamma(s),
            "explorer": s["explorer"], "reuse_weighting": c["loss"]["reuse_weighting"],
            "intra_rule": s.get("intra_rule", "topk"),
            "paper": f"gain {s['gain']}, {s['candidates']}, {c['loss']['reuse_weighting']}"}.get(axis, "")
