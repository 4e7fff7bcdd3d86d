"""End-of-run figures and the terminal summary, from the metrics a run wrote."""

from __future__ import annotations

import json
import os


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(metrics: list[dict], path: str, title: str = "") -> str:
    """Held-out pass rate vs step and vs generated rollouts, and the step-time breakdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [m for m in metrics if "eval" in m]
    steps = [m["step"] for m in metrics if "seconds" in m]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    families = [k for k in evals[0]["eval"] if k != "mean"] if evals else []
    for fam in families:
        ax.plot([m["step"] for m in evals], [m["eval"][fam] for m in evals], alpha=0.4, label=fam)
    ax.plot([m["step"] for m in evals], [m["eval"]["mean"] for m in evals], "k-o", lw=2, label="mean")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out pass rate (greedy)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("learning curve")
    ax = axes[1]
    ax.plot([m["generated"] for m in evals], [m["eval"]["mean"] for m in evals], "k-o")
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("held-out pass rate (mean)")
    ax.set_title("sample efficiency")
    ax = axes[2]
    timed = [m for m in metrics if "seconds" in m]
    if timed:
        stages = list(timed[0]["seconds"])
        bottom = [0.0] * len(timed)
        for s in stages:
            vals = [m["seconds"][s] for m in timed]
            ax.bar(steps, vals, bottom=bottom, label=s, width=1.0)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.set_title("step time by stage")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str, dpi: int) -> str:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def print_summary(result, console=None) -> None:
    """Before/after pass rate per family and the time per stage, as two small tables."""
    from rich.console import Console
    from rich.table import Table

    from rollout_bandits.trainer.loop import SCHEDULING_STAGES

    console = console or Console()
    t = Table(title="held-out pass rate (greedy)")
    t.add_column("family")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for fam in result.pass_rate_before:
        b, a = result.pass_rate_before[fam], result.pass_rate_after.get(fam, float("nan"))
        style = "bold" if fam == "mean" else None
        t.add_row(fam, f"{b:.1%}", f"{a:.1%}", style=style)
    console.print(t)
    total = sum(result.stage_seconds.values())
    s = Table(title="time per stage (all steps)")
    s.add_column("stage")
    s.add_column("seconds", justify="right")
    s.add_column("share", justify="right")
    for name, sec in result.stage_seconds.items():
        s.add_row(name, f"{sec:.1f}", f"{sec / total:.1%}" if total else "-")
    sched = sum(result.stage_seconds[x] for x in SCHEDULING_STAGES)
    s.add_row("scheduling (features+score+select+bandit update)", f"{sched:.2f}",
              f"{sched / total:.2%}" if total else "-", style="bold")
    console.print(s)
    steps = [m for m in result.metrics if "seconds" in m]
    if steps:
        fresh = sum(m["trained_fresh"] for m in steps)
        reused = sum(m["trained_reused"] for m in steps)
        tokens = sum(m.get("tokens", 0) for m in steps)
        console.print(f"steps {len(steps)}  rollouts generated {steps[-1]['generated']:,}  tokens {tokens:,}  "
                      f"trained on: fresh {fresh:,} ({fresh / max(steps[-1]['generated'], 1):.0%} of generated) "
                      f"+ reused {reused:,}")
