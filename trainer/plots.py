"""End-of-run figures and the terminal summary, from the metrics a run wrote."""

from __future__ import annotations

import itertools
import json
import os

# Seven families must stay apart where their curves coincide: a colour, a marker and a dash each.
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")
_DASHES = ("-", "--", ":", "-.")


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _moving_average(xs: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x - (xs[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def run_figure(metrics: list[dict], title: str = ""):
    """Held-out pass rate per family, training reward, sample efficiency and step time by stage.

    Pass rates keep the fixed [0, 1] axis (a flat curve stays flat); legends sit beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [m for m in metrics if "eval" in m]
    timed = [m for m in metrics if "seconds" in m]
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5))
    ax = axes[0][0]
    families = [k for k in evals[0]["eval"] if k != "mean"] if evals else []
    styles = zip(itertools.cycle(_COLORS), itertools.cycle(_MARKERS), itertools.cycle(_DASHES))
    for fam, (color, marker, dash) in zip(families, styles):
        ax.plot([m["step"] for m in evals], [m["eval"][fam] for m in evals], linestyle=dash, marker=marker,
                color=color, ms=4, lw=1.2, alpha=0.8, label=fam)
    ax.plot([m["step"] for m in evals], [m["eval"]["mean"] for m in evals], "k-o", lw=2.5, ms=5, label="mean")
    ax.set(xlabel="step", ylabel="held-out pass rate (greedy)", title="learning curve", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    ax = axes[0][1]
    if timed:
        steps = [m["step"] for m in timed]
        reward = [m["reward"] for m in timed]
        ax.plot(steps, reward, color="tab:gray", lw=0.8, alpha=0.6, label="reward per step")
        ax.plot(steps, _moving_average(reward, 10), color="tab:blue", lw=2, label="moving mean (10 steps)")
        ax.plot(steps, [m["pass_rate"] for m in timed], color="tab:green", lw=0.8, alpha=0.6,
                label="pass rate of the rollouts")
    ax.set(xlabel="step", ylabel="training reward (mean over rollouts)", title="training reward",
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    ax = axes[1][0]
    ax.plot([m["generated"] for m in evals], [m["eval"]["mean"] for m in evals], "k-o")
    ax.set(xlabel="rollouts generated", ylabel="held-out pass rate (mean)", title="sample efficiency",
           ylim=(-0.02, 1.02))

    ax = axes[1][1]
    if timed:
        bottom = [0.0] * len(timed)
        for stage in timed[0]["seconds"]:
            vals = [m["seconds"][stage] for m in timed]
            ax.bar(steps, vals, bottom=bottom, label=stage, width=1.0)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set(xlabel="step", ylabel="seconds", title="step time by stage")
    if title:
        fig.suptitle(title)
    return fig


def plot_run(metrics: list[dict], path: str, title: str = "") -> str:
    return save_figure(run_figure(metrics, title), path, dpi=110)


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
    last = max((m["step"] for m in result.metrics), default=0)
    t = Table(title="held-out pass rate (greedy)")
    t.add_column("family")
    t.add_column("before (step 0)", justify="right")
    t.add_column(f"after (step {result.after_step})", justify="right")
    for fam in result.pass_rate_before:
        b, a = result.pass_rate_before[fam], result.pass_rate_after.get(fam, float("nan"))
        t.add_row(fam, f"{b:.1%}", f"{a:.1%}", style="bold" if fam == "mean" else None)
    console.print(t)
    if result.after_step < last:
        console.print(f"'after' is the evaluation at step {result.after_step}: the run stopped at step {last} of "
                      f"{result.steps}, before its next evaluation")
    total = sum(result.stage_seconds.values())
    share = lambda sec: f"{sec / total:.1%}" if total else "-"  # noqa: E731
    s = Table(title="time per stage (all steps)")
    s.add_column("stage")
    s.add_column("seconds", justify="right")
    s.add_column("share", justify="right")
    for name, sec in result.stage_seconds.items():
        s.add_row(name, f"{sec:.2f}", share(sec))
    sched = sum(result.stage_seconds.get(x, 0.0) for x in SCHEDULING_STAGES)  # older runs: no "prompts"
    s.add_row("scheduling (features+score+select+bandit update)", f"{sched:.2f}", share(sched), style="bold")
    console.print(s)
    steps = [m for m in result.metrics if "seconds" in m]
    if steps:
        fresh = sum(m["trained_fresh"] for m in steps)
        reused = sum(m["trained_reused"] for m in steps)
        tokens = sum(m.get("tokens", 0) for m in steps)
        console.print(f"steps {len(steps)}  rollouts generated {steps[-1]['generated']:,}  tokens {tokens:,}  "
                      f"trained on: fresh {fresh:,} ({fresh / max(steps[-1]['generated'], 1):.0%} of generated) "
                      f"+ reused {reused:,}")
