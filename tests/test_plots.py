"""The end-of-run figure and tables (issue 14, item 15)."""

import re

from rich.console import Console

from rollout_bandits.trainer.loop import STAGES, TrainResult
from rollout_bandits.trainer.plots import print_summary, run_figure

FAMS = ("add", "mul", "mod", "countdown", "sort", "parity", "count")


def _metrics(n=6, evals=(0, 3, 6), flat=0.3):
    out = [{"step": 0, "generated": 0, "eval": {**dict.fromkeys(FAMS, flat), "mean": flat}}]
    for s in range(1, n + 1):
        m = {"step": s, "generated": 32 * s, "reward": 0.1 * s, "pass_rate": 0.05 * s, "loss": 0.1,
             "trained_fresh": 16, "trained_reused": 4, "tokens": 100,
             "seconds": {st: 0.01 * (i + 1) for i, st in enumerate(STAGES)}, "step_seconds": 0.21}
        if s in evals:
            m["eval"] = {**dict.fromkeys(FAMS, flat), "mean": flat}
        out.append(m)
    return out


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def test_run_figure():
    fig = run_figure(_metrics())
    fig.canvas.draw()
    axes = _axes(fig)
    # The stage legend sits beside the stacked bars, not over them.
    bars = axes["step time by stage"]
    leg = bars.get_legend().get_window_extent()
    assert not leg.overlaps(bars.get_window_extent())
    # Seven family lines that coincide (all flat at 0.3) stay distinguishable.
    curve = axes["learning curve"]
    styles = {(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in curve.lines if ln.get_label() in FAMS}
    assert len(styles) == len(FAMS)
    # A flat curve is not stretched to fill the axis.
    for title in ("learning curve", "sample efficiency", "training reward"):
        lo, hi = axes[title].get_ylim()
        assert lo <= 0.0 and hi >= 1.0, title
    # The training reward, the one thing that moves in a short run.
    reward = next(ln for ln in axes["training reward"].lines if ln.get_label() == "reward per step")
    assert list(reward.get_ydata()) == [0.1 * s for s in range(1, 7)]


def _summary(interrupted, after_step, metrics):
    res = TrainResult("d", {**dict.fromkeys(FAMS, 0.3), "mean": 0.3}, {**dict.fromkeys(FAMS, 0.4), "mean": 0.4},
                      [m for m in metrics if m["step"] > 0], {"generate": 12.345, "verify": 0.0, "schedule": 0.5,
                                                              "update": 3.0, "probe": 0.25, "observe": 0.01},
                      interrupted, after_step, 10)
    con = Console(record=True, width=200)
    print_summary(res, con)
    return con.export_text()


def test_stage_table_uses_one_number_format():
    text = _summary(False, 6, _metrics())
    rows = [ln for ln in text.splitlines() if re.match(r"^│ (generate|verify|schedule|update|probe|observe|sched)", ln)]
    assert len(rows) == 7
    for row in rows:
        seconds, share = [c.strip() for c in row.strip("│").split("│")[1:3]]
        assert re.fullmatch(r"\d+\.\d\d", seconds) and re.fullmatch(r"\d+\.\d%", share), row


def test_an_interrupted_run_says_its_after_is_stale():
    text = " ".join(_summary(True, 3, _metrics(n=5, evals=(0, 3))).split())
    assert "after (step 3)" in text
    assert "'after' is the evaluation at step 3: the run stopped at step 5 of 10" in text
    assert "stopped at step" not in " ".join(_summary(False, 6, _metrics()).split())
