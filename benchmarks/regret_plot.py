"""The regret benchmark: every explorer (library defaults), LinUCB and random on the REPORT
environments of bandit/regret.py, at 4 and 2,048 observations per `observe`.

    .venv/bin/python benchmarks/regret_plot.py                 # 3 seeds -> docs/regret.png, benchmarks/results/regret.json
    .venv/bin/python benchmarks/regret_plot.py --seeds 1 --families mixture_net

Report instances (REPORT_INSTANCES) were never used to choose a default; the defaults come
from the tuning instances (benchmarks/regret_tune.py). Seed s runs report instance s (its
own reward function and streams); every policy sees the same draws. Optionally adds the
"before" rows of benchmarks/regret_before.py (the learners as they were before issue 16)
when benchmarks/results/regret_before.json exists.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rollout_bandits.bandit.regret import (
    FAMILIES,
    LINEAR_FAMILIES,
    POLICY_NAMES,
    REPORT_INSTANCES,
    SETTINGS,
    explorer_config,
    make_policy,
    run_cells,
    summarize,
)
from rollout_bandits.bandit.scheduler import SchedulerConfig

ROOT = Path(__file__).resolve().parents[1]


def parse_rounds(text: str) -> dict:
    """"obs4=500,obs2048=20" -> {"obs4": 500, "obs2048": 20}: a shorter run than SETTINGS' horizon."""
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def run_benchmark(policies: dict, families, settings, instances, label: str, rounds=None) -> tuple[dict, float]:
    """run_cells under a rich progress bar (rounds x groups as the unit); (results, seconds)."""
    rounds = rounds or {}
    total = (sum(SETTINGS[s][0] * rounds.get(s, SETTINGS[s][1]) for s in settings)
             * len(families) * len(instances) * len(policies))
    t0 = time.time()
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task(label, total=total)

        def progress(advance, desc):
            bar.update(task, advance=advance, **({"description": desc} if desc else {}))

        res = run_cells(families, settings, instances, policies, progress=progress, rounds=rounds)
    return res, time.time() - t0


def summaries(res: dict) -> dict:
    return {s: {f: {p: summarize(runs) for p, runs in by_p.items()} for f, by_p in by_f.items()}
            for s, by_f in res.items()}


def table(summary: dict, default: str) -> str:
    """Markdown: cumulative regret mean +- sd, fall of regret/round from T/10 to T, final rank corr."""
    lines = []
    for s, by_f in summary.items():
        for f, by_p in by_f.items():
            kind = "linear" if f in LINEAR_FAMILIES else "nonlinear"
            lines.append(f"\n{s} / {f} ({kind})\n\n| policy | cumulative regret | regret/round falls "
                         "(T/10 -> T) | rank corr at T |\n|---|---|---|---|")
            lin = by_p.get("linucb", {}).get("cumulative_regret_mean")
            for p, r in by_p.items():
                corr = list(r["rank_corr"].values())[-1]
                ratio = f" ({r['cumulative_regret_mean'] / lin:.2f}x LinUCB)" if lin and p != "linucb" else ""
                name = f"**{p}** (default)" if p == default else p
                lines.append(f"| {name} | {r['cumulative_regret_mean']:.0f} +- {r['cumulative_regret_sd']:.0f}{ratio} "
                             f"| {r['regret_per_round_fall']:.2f}x | {corr:.2f} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path, default: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    families = list(summary[settings[0]])
    fig, axes = plt.subplots(2 * len(settings), len(families), figsize=(4.2 * len(families), 3.3 * 2 * len(settings)),
                             squeeze=False)
    for i, s in enumerate(settings):
        for j, f in enumerate(families):
            ax_c, ax_r = axes[2 * i, j], axes[2 * i + 1, j]
            for p, r in summary[s][f].items():
                style = {"lw": 2.2 if p == default else 1.2, "ls": "--" if p.endswith("@before") else "-"}
                x = r["curve_rounds"]
                ax_c.plot(x, r["cumulative_curve_mean"], label=p, **style)
                ax_r.plot(x, r["regret_per_round_curve_mean"], label=p, **style)
            ax_c.set(title=f"{f}, {s}: cumulative regret", xlabel="round")
            ax_r.set(title=f"{f}, {s}: regret per round", xlabel="round", yscale="log")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Regret benchmark, report environments (mean over seeds); bold: the default explorer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _merge_before(summary: dict, before: Path) -> None:
    """Add the old learners' rows (benchmarks/regret_before.py), measured on the same cells."""
    if not before.exists():
        return
    old = json.loads(before.read_text())["results"]
    for s in summary:
        for f in summary[s]:
            summary[s][f].update(old.get(s, {}).get(f, {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--policies", default=",".join(POLICY_NAMES))
    ap.add_argument("--png", default=str(ROOT / "docs" / "regret.png"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "regret.json"))
    ap.add_argument("--before", default=str(ROOT / "benchmarks" / "results" / "regret_before.json"))
    ap.add_argument("--rounds", default="", help="shorter horizons, e.g. obs4=500 (default: SETTINGS')")
    ap.add_argument("--replot", action="store_true", help="redraw the plot and table from --json (and --before)")
    ap.add_argument("--merge", default="", help="with --replot: JSONs of other settings to add to --json first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.replot:
        result = json.loads(Path(args.json).read_text())
        for part in filter(None, args.merge.split(",")):
            other = json.loads(Path(part).read_text())
            for s, by_family in other["results"].items():
                result["results"].setdefault(s, {}).update(by_family)
            result["settings"].update(other["settings"])
            result["command"] = [*([result["command"]] if isinstance(result["command"], str) else result["command"]),
                                 other["command"]]
            result["elapsed_s"] += other["elapsed_s"]
        summary = result["results"]
        _merge_before(summary, Path(args.before))
        Path(args.json).write_text(json.dumps(result, indent=2))
        plot(summary, Path(args.png), result["default_explorer"])
        print(table(summary, result["default_explorer"]))
        return
    families, settings = args.families.split(","), args.settings.split(",")
    instances = REPORT_INSTANCES[: args.seeds]
    policies = {n: (lambda spec, seed, n=n: make_policy(n, spec, seed=seed)) for n in args.policies.split(",")}
    rounds = parse_rounds(args.rounds)
    res, elapsed = run_benchmark(policies, families, settings, instances, "regret", rounds)
    summary = summaries(res)
    _merge_before(summary, Path(args.before))
    default = SchedulerConfig().explorer
    result = {
        "benchmark": "regret",
        "environments": "REPORT_INSTANCES of bandit/regret.py (never used for tuning)",
        "instances": list(instances),
        "settings": {s: {"groups": SETTINGS[s][0], "rounds": rounds.get(s, SETTINGS[s][1]), "arms": 20, "pulls": 4,
                         "observations_per_observe": SETTINGS[s][0] * 4} for s in settings},
        "default_explorer": default,
        "configs": {n: repr(explorer_config(n)) for n in policies if n != "random"},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": f"{platform.processor() or platform.machine()} CPU, 1 torch thread",
        "torch": torch.__version__, "python": platform.python_version(),
        "elapsed_s": elapsed,
        "results": summary,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    plot(summary, Path(args.png), default)
    print(table(summary, default))
    print(f"\nwrote {args.png} and {args.json}; {elapsed:.0f} s")


if __name__ == "__main__":
    main()
