"""How the explorers' defaults were chosen: on the regret benchmark's TUNING environments only.

    .venv/bin/python benchmarks/regret_tune.py               # both stages -> benchmarks/results/regret_tuning.json
    .venv/bin/python benchmarks/regret_tune.py --stage train

Tuning instances (bandit/regret.py: TUNING_INSTANCES) share the families of the report
instances but have their own reward functions, mixtures, scales and streams; the report
instances (REPORT_INSTANCES, benchmarks/regret_plot.py) are never run here.

Stage "train" (the MLP learners' shared training fields, LearnerConfig): passive learning
from uniformly random pulls; the score is the mean Spearman correlation of the MLP's
prediction (NeuralUCB's mean, gamma 0) with the true mean on a held-out sample, over every
family x instance x observation batch size. One field at a time from the starting point.

Stage "explore" (each explorer's exploration fields): cumulative regret in the bandit loop,
as the ratio to LinUCB's (alpha chosen first, in the same stage) per family x instance x
batch size; the score is the geometric mean of those ratios. The explorer with the lowest
score becomes SchedulerConfig's default explorer.

Stages "batch" / "budget" (what an `observe` of 2,048 pairs costs): the default explorer with
cheaper training (`--batches 768,1024`, or `--overrides '{"hidden": 16}' ...`), scored like
stage "explore"; a cheaper budget is only taken if every tuning cell still meets the bar.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rollout_bandits.bandit.regret import (
    FAMILIES,
    SETTINGS,
    TUNING_INSTANCES,
    ExplorerPolicy,
    _top_per_group,
    explorer_config,
    make_policy,
    run_cells,
)

ROOT = Path(__file__).resolve().parents[1]

# Stage "train": the starting point, then one change at a time. The changes of width keep an
# observe's cost about the same (rows trained x H^2: ~1 pass at H=64 is what fits the ~10 ms
# budget of an observe of 2,048 pairs on one CPU thread).
TRAIN_START = {"weight_decay": 1e-2, "lr": 3e-3, "train_passes": 1.0, "replay_ratio": 1.0, "hidden": 64}
TRAIN_CHANGES = {"weight_decay=1e-3": {"weight_decay": 1e-3}, "lr=1e-2": {"lr": 1e-2},
                 "hidden=32,train_passes=2": {"hidden": 32, "train_passes": 2.0},
                 "hidden=32,replay_ratio=3": {"hidden": 32, "replay_ratio": 3.0}}
# Stage "explore": (explorer, overrides) candidates; LinUCB first (the reference).
LINUCB_ALPHAS = [0.1, 0.25, 0.5, 1.0]
EXPLORE = {  # None: LinUCB's chosen alpha (the linear head of neural-linear is LinUCB)
    "neural_linear": [{"gamma": None, "margin": m} for m in (1.0, 2.0, 4.0)]
    + [{"gamma": None, "margin": 2.0, "holdout": 0.2}],
    # After the rows above: the paired test waits for 30 held-out pairs (neural_linear.MIN_HELD_OUT).
    "neural_linear_min30": [{"gamma": None, "margin": 2.0}],
    "neural_ucb": [{"gamma": g} for g in (0.1, 0.5, 1.0)],
    "ee_net": [{"explore_weight": w} for w in (0.5, 1.0)],
}


class PassivePolicy(ExplorerPolicy):
    """Uniformly random pulls; the explorer learns from them (its scores are not used)."""

    def __init__(self, explorer, spec, seed: int):
        super().__init__(explorer, spec)
        self.gen = torch.Generator().manual_seed(977 + seed)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        self.explorer.update_feature_stats(x)
        return _top_per_group(torch.rand(x.shape[0], generator=self.gen), self.spec)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def _cells_total(settings, families, instances, n_policies) -> int:
    return sum(SETTINGS[s][0] * SETTINGS[s][1] for s in settings) * len(families) * len(instances) * n_policies


def _run(policies: dict, bar: Progress, label: str, families, settings, instances) -> dict:
    task = bar.add_task(label, total=_cells_total(settings, families, instances, len(policies)))

    def progress(advance, desc):
        bar.update(task, advance=advance, **({"description": f"{label}: {desc}"} if desc else {}))

    return run_cells(families, settings, instances, policies, progress=progress)


def stage_train(bar, families, settings, instances) -> dict:
    """Passive rank correlation of the MLP for TRAIN_START and each of TRAIN_CHANGES."""
    configs = [("start", dict(TRAIN_START))] + [(k, {**TRAIN_START, **v}) for k, v in TRAIN_CHANGES.items()]
    rows = {}
    for label, ov in configs:
        policies = {label: lambda spec, seed, ov=ov: PassivePolicy(
            make_policy("neural_ucb", spec, seed=seed, gamma=0.0, **ov).explorer, spec, seed)}
        res = _run(policies, bar, f"train {label}", families, settings, instances)
        corr = {f"{s}/{f}": sum(r.rank_corr[-1][1] for r in res[s][f][label]) / len(instances)
                for s in res for f in res[s]}
        rows[label] = {"overrides": ov, "rank_corr": corr, "score": sum(corr.values()) / len(corr)}
        bar.console.print(f"train {label:24s} score {rows[label]['score']:.4f}  "
                          + " ".join(f"{k} {v:.3f}" for k, v in corr.items()))
    best = max(rows, key=lambda k: rows[k]["score"])
    return {"rows": rows, "best": best}


def _scored(bar, name: str, ratios: dict, width: int) -> dict:
    """{score: geometric mean of regret / LinUCB's, ratio_by_cell: the same per setting/family},
    printed as one line."""
    by: dict[str, list[float]] = {}
    for k, v in ratios.items():
        s, f, _ = k.split("/")
        by.setdefault(f"{s}/{f}", []).append(v)
    out = {"score": _geomean(list(ratios.values())), "ratio_by_cell": {k: _geomean(v) for k, v in by.items()}}
    bar.console.print(f"{name:{width}s} geomean regret / LinUCB {out['score']:.3f}  "
                      + " ".join(f"{k} {v:.2f}" for k, v in out["ratio_by_cell"].items()))
    return out


def _ratios(res: dict, name: str, ref: dict) -> dict:
    return {f"{s}/{f}/{i}": float(r.cumulative[-1]) / ref[f"{s}/{f}/{i}"]
            for s in res for f in res[s] for i, r in enumerate(res[s][f][name])}


def stage_explore(bar, families, settings, instances, explorers) -> dict:
    out: dict = {"linucb": {}}
    lin_runs = {}
    for alpha in LINUCB_ALPHAS:
        name = f"linucb alpha={alpha}"
        res = _run({name: lambda spec, seed, a=alpha: make_policy("linucb", spec, seed=seed, alpha=a)},
                   bar, name, families, settings, instances)
        lin_runs[alpha] = {f"{s}/{f}/{i}": float(r.cumulative[-1])
                           for s in res for f in res[s] for i, r in enumerate(res[s][f][name])}
    # LinUCB's alpha: the geometric mean of its regret relative to the best alpha per cell.
    best_cell = {k: min(v[k] for v in lin_runs.values()) for k in lin_runs[LINUCB_ALPHAS[0]]}
    for alpha, cells in lin_runs.items():
        out["linucb"][str(alpha)] = _geomean([cells[k] / best_cell[k] for k in cells])
    alpha = min(lin_runs, key=lambda a: out["linucb"][str(a)])
    ref = lin_runs[alpha]
    out["linucb_alpha"] = alpha
    bar.console.print(f"linucb: alpha {alpha} ({out['linucb']})")
    for explorer in explorers:
        out[explorer] = {}
        for ov in EXPLORE[explorer]:
            ov = {k: (alpha if v is None else v) for k, v in ov.items()}
            name = f"{explorer} {json.dumps(ov)}"
            kind = explorer.split("_min")[0]  # a later variant of the same explorer, run with today's code
            res = _run({name: lambda spec, seed, ov=ov, e=kind: make_policy(e, spec, seed=seed, **ov)},
                       bar, name, families, settings, instances)
            out[explorer][json.dumps(ov)] = _scored(bar, name, _ratios(res, name, ref), width=60)
    return out


BATCHES = (512, 1024)  # stage "batch": the rows per Adam step (16 vs 8 steps for an observe of 2,048 pairs)


def _linucb_ref(bar, families, settings, instances) -> dict:
    lin = "linucb alpha=0.5"
    res = _run({lin: lambda spec, seed: make_policy("linucb", spec, seed=seed, alpha=0.5)},
               bar, lin, families, settings, instances)
    return {f"{s}/{f}/{i}": float(r.cumulative[-1]) for s in res for f in res[s] for i, r in enumerate(res[s][f][lin])}


def stage_budget(bar, families, settings, instances, candidates: list[dict]) -> dict:
    """The default explorer with each candidate's LearnerConfig overrides (what an `observe`
    costs: train_batch, hidden, train_passes, replay_ratio): geometric mean of regret / LinUCB's
    (alpha 0.5, the explore stage's choice) over the tuning cells, and the same per cell. A
    cheaper training budget is only taken if every cell still meets the issue's bar."""
    ref = _linucb_ref(bar, families, settings, instances)
    out = {}
    for ov in candidates:
        name = "neural_linear " + (",".join(f"{k}={v}" for k, v in ov.items()) or "default")
        res = _run({name: lambda spec, seed, ov=ov: make_policy("neural_linear", spec, seed=seed, **ov)},
                   bar, name, families, settings, instances)
        out[json.dumps(ov, sort_keys=True)] = _scored(bar, name, _ratios(res, name, ref), width=40)
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("train", "explore", "both", "batch", "budget"), default="both")
    ap.add_argument("--explorers", default=",".join(EXPLORE))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="stage batch: the train_batch values")
    ap.add_argument("--overrides", nargs="+", default=["{}"],
                    help="stage budget: LearnerConfig overrides, one JSON object per candidate ('{}': the defaults)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "regret_tuning.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    families, settings, instances = FAMILIES, tuple(SETTINGS), TUNING_INSTANCES
    path = Path(args.json)
    result = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.time()
    with _progress() as bar:
        if args.stage in ("train", "both"):
            result["train"] = stage_train(bar, families, settings, instances)
        if args.stage in ("explore", "both"):
            result["explore"] = stage_explore(bar, families, settings, instances, args.explorers.split(","))
        if args.stage == "batch":
            batches = tuple(int(b) for b in args.batches.split(","))
            cands = [{"train_batch": b} for b in batches]
            got = stage_budget(bar, families, settings, instances, cands)
            result["batch"] = {**result.get("batch", {}), **{str(c["train_batch"]): got[json.dumps(c)] for c in cands}}
        if args.stage == "budget":
            cands = [json.loads(o) for o in args.overrides]
            result["budget"] = {**result.get("budget", {}),
                                **stage_budget(bar, families, settings, instances, cands)}
    result.update({
        "benchmark": "regret tuning", "instances": list(instances), "families": list(families),
        "settings": {s: {"groups": g, "rounds": t, "arms": 20, "pulls": 4} for s, (g, t) in SETTINGS.items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": f"{platform.processor() or platform.machine()} CPU, 1 torch thread",
        "torch": torch.__version__, f"elapsed_s_{args.stage}": time.time() - t0,
        "defaults_at_run": {n: repr(explorer_config(n)) for n in ("neural_linear", "neural_ucb", "ee_net", "linucb")},
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
