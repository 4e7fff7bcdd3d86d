"""Experiment sweeps (issue 6/7): optimizers x selection policies x seeds, ablations, and the report.

    rollout-bandits sweep --grid cpu          # main grid + verifier-noise grid (reduced, CPU budget)
    rollout-bandits sweep --grid ablations    # gain signal, window size, k / ratio, gamma, explorer, IS
    rollout-bandits sweep --grid gpu          # the full grid (more seeds and steps), for a GPU host
    rollout-bandits report                    # docs/RESULTS.md + docs/results_*.png from the result files

Method
------
- The SFT warm-up is shared: it runs once per (seed, policy/task settings) into a cache folder
  under runs/ (git-ignored) and every run of that seed starts from it (`policy.model_path`,
  `warmup_steps=0`), so all runs of a seed start from the bit-identical warmed model; their
  held-out pass rate at step 0 is identical too (checked in the report).
- Each run is one `trainer.loop.train` call in a worker process (1 torch thread) and writes one
  small JSON under benchmarks/results/experiments/ (config, the eval curve per family, a compact
  per-step series, timings, device, versions). A run that raises writes a JSON with
  status="error" and the traceback; the sweep goes on. Existing result files are skipped, so an
  interrupted sweep resumes where it stopped.
- Every run of a seed generates the same number of rollouts per step (prompts x group size), so
  "generated rollouts" and "steps" are proportional; wall-clock is the sum of the training
  stages (generation, verification, scheduling, update, gain probe, observe), evaluation excluded.

Metrics (computed by `report`, never stored by hand)
----------------------------------------------------
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

import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

RESULTS_DIR = os.path.join("benchmarks", "results", "experiments")
CACHE_DIR = os.path.join("runs", "warmup_cache")
RUNS_DIR = os.path.join("runs", "sweep")
FORMAT = "rollout_bandits.experiment/v1"

OPTIMIZERS = ("grpo", "dapo", "dr_grpo")
POLICIES = ("keep_all", "random_k", "pods", "dapo_filter", "reuse_fifo", "cbs")
POLICY_LABELS = {"keep_all": "keep-all", "random_k": "random-k", "pods": "PODS max-var",
                 "dapo_filter": "DAPO filter", "reuse_fifo": "reuse-only (FIFO)", "cbs": "CBS"}


# ------------------------------------------------------------------- specs
@dataclass
class RunSpec:
    """One training run: a name (unique, also the result file name), its group and labels for the
    report, a seed, and nested TrainConfig overrides on top of the grid's base settings."""

    name: str
    group: str
    seed: int
    overrides: dict
    labels: dict = field(default_factory=dict)


# The reduced CPU budget: 100 RL steps of 64 prompts x 8 samples from a 1000-step SFT warm-up.
CPU_BASE = {"steps": 100, "prompts_per_step": 64, "group_size": 8, "lr": 5e-5, "eval_every": 10,
            "eval_problems": 200, "difficulty": 1}
# The full grid for a GPU host (same model; more steps, seeds and evaluation problems).
GPU_BASE = {"steps": 400, "prompts_per_step": 128, "group_size": 8, "lr": 5e-5, "eval_every": 20,
            "eval_problems": 500, "difficulty": 1}

NOISE = 0.2  # verifier flip probability of the noisy variant
# The scheduler changes tested after the first sweep and the ablations (grids cpu_v2, cpu_v3),
# written out explicitly so these runs do not depend on SchedulerConfig's defaults when they run.
# v2: the gain signal the ablation picked (heldout). v3: v2 without global reuse (reuse_ratio 0),
# as the reuse ablation and the reuse-only baseline point to (see docs/RESULTS.md).
VARIANTS: dict[str, dict] = {"v2": {"gain": "heldout"}, "v3": {"gain": "heldout", "reuse_ratio": 0.0}}
# The loop change the first sweeps pointed to: several optimizer steps per round (mini-batches of
# MB_ROLLOUTS), so that reused rollouts add updates instead of only averaging one gradient. Both
# policies train 512 rows a round (CBS: 256 kept fresh + 256 reused), i.e. 4 steps each.
MB_ROLLOUTS = 128
MB_CBS = {"gain": "heldout", "reuse_ratio": 1.0}
PAPER_LABEL = "batch (= the paper's CBS: batch gain, window candidates, no IS weighting)"


def _spec(group, opt, policy, seed, extra_labels=None, scheduler=None, **top) -> RunSpec:
    sched = {"policy": policy, **(scheduler or {})}
    over = {"loss": {"name": opt}, "scheduler": sched, **top}
    labels = {"optimizer": opt, "policy": policy, **(extra_labels or {})}
    parts = [group, opt, policy] + [f"{k}-{v}" for k, v in (extra_labels or {}).items()] + [f"s{seed}"]
    return RunSpec(name="__".join(str(p) for p in parts), group=group, seed=seed, overrides=over, labels=labels)


def main_grid(seeds, optimizers=OPTIMIZERS, policies=POLICIES, group="main", noise=0.0) -> list[RunSpec]:
    top = {"verifier_noise": noise} if noise else {}
    sched = VARIANTS.get(group.rsplit("_", 1)[-1]) if "_" in group else None
    return [_spec(group, o, p, s, scheduler=copy.deepcopy(sched), **top)
            for s in seeds for o in optimizers for p in policies]


ABLATIONS: dict[str, list[tuple[str, dict]]] = {
    # axis: [(value label, scheduler / loss overrides)]; the default CBS run of the main grid is
    # the reference row of each axis (same seeds), so it is not repeated here. The paper's version
    # of CBS (issue 7: batch gain, window candidates, no importance weighting) is gain=batch: the
    # other two are already the defaults.
    "gain": [("batch", {"scheduler": {"gain": "batch"}}), ("self", {"scheduler": {"gain": "self"}}),
             ("heldout", {"scheduler": {"gain": "heldout"}}), ("probe", {"scheduler": {"gain": "probe"}})],
    "intra_rule": [("max_variance", {"scheduler": {"intra_rule": "max_variance"}})],
    "ratio": [("intra0.25", {"scheduler": {"intra_ratio": 0.25}}), ("intra0.75", {"scheduler": {"intra_ratio": 0.75}}),
              ("intra1.0", {"scheduler": {"intra_ratio": 1.0}}),
              ("reuse0", {"scheduler": {"reuse_ratio": 0.0}}), ("reuse1", {"scheduler": {"reuse_ratio": 1.0}})],
    "gamma": [("0", {"scheduler": {"learner": {"gamma": 0.0}, "ee_net": {}}})],
    "explorer": [("ee_net", {"scheduler": {"explorer": "ee_net"}})],
    "reuse_weighting": [("clipped_is", {"loss": {"reuse_weighting": "clipped_is"}})],
    "window": [("1", {"scheduler": {"window_rounds": 1}}), ("2", {"scheduler": {"window_rounds": 2}}),
               ("8", {"scheduler": {"window_rounds": 8}}), ("16", {"scheduler": {"window_rounds": 16}})],
}


def ablation_grid(seeds, axes=None, optimizer="grpo") -> list[RunSpec]:
    out = []
    for axis in axes or ABLATIONS:
        for value, over in ABLATIONS[axis]:
            for s in seeds:
                spec = _spec("ablation", optimizer, "cbs", s, extra_labels={"axis": axis, "value": value})
                _merge(spec.overrides, copy.deepcopy(over))
                spec.overrides["scheduler"]["policy"] = "cbs"
                out.append(spec)
    return out


def grid(name: str, seeds=None) -> tuple[dict, list[RunSpec]]:
    """(base settings, run specs) of a named grid."""
    if name == "cpu":
        seeds = list(seeds) if seeds else [0, 1, 2]
        noise_seeds = seeds
        return CPU_BASE, main_grid(seeds) + main_grid(noise_seeds, optimizers=("grpo",), group="noise", noise=NOISE)
    if name.startswith("cpu_") and name[4:] in VARIANTS:
        # CBS alone, re-run with a scheduler change (VARIANTS); baselines come from grid "cpu".
        v = name[4:]
        seeds = list(seeds) if seeds else [0, 1, 2]
        return CPU_BASE, (main_grid(seeds, policies=("cbs",), group=f"main_{v}")
                          + main_grid(seeds, optimizers=("grpo",), policies=("cbs",), group=f"noise_{v}", noise=NOISE))
    if name == "ablations":
        seeds = list(seeds) if seeds else [0, 1, 2]
        return CPU_BASE, ablation_grid(seeds)
    if name == "cpu_mb":
        seeds = list(seeds) if seeds else [0, 1, 2]
        return CPU_BASE, [_spec("mb", o, p, s, scheduler=copy.deepcopy(MB_CBS) if p == "cbs" else None,
                                mini_batch_rollouts=MB_ROLLOUTS)
                          for s in seeds for o in OPTIMIZERS for p in ("keep_all", "cbs")]
    if name == "gpu":
        seeds = list(seeds) if seeds else [0, 1, 2, 3, 4]
        specs = main_grid(seeds) + main_grid(seeds, group="noise", noise=NOISE)
        for opt in OPTIMIZERS:
            specs += ablation_grid(seeds, optimizer=opt)
        return GPU_BASE, specs
    raise ValueError(f"sweep --grid: found {name!r}, expected cpu | gpu | ablations | cpu_mb | cpu_v2 | cpu_v3")


# ------------------------------------------------------------------ helpers
def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def _device_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info = {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu: {cpu}",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    return info


def _versions() -> dict:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _warm_key(cfg) -> str:
    """The cache key of a warm-up: everything that changes the warmed weights."""
    key = {"seed": cfg.seed, "tasks": list(cfg.family_names), "difficulty": cfg.difficulty,
           "warmup_steps": cfg.warmup_steps, "warmup_lr": cfg.warmup_lr,
           "policy": {k: v for k, v in dataclasses.asdict(cfg.policy).items() if k != "model_path"}}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"seed{cfg.seed}_{digest}"


def base_config(base: dict, spec: RunSpec, out_root: str = RUNS_DIR):
    """The TrainConfig of a spec, before the warm-up is swapped for the cached checkpoint."""
    from rollout_bandits.trainer.loop import config_from_dict

    values = _merge(copy.deepcopy(base), spec.overrides)
    values.update(seed=spec.seed, out_dir=os.path.join(out_root, spec.name), overwrite=True, num_threads=1)
    values["checkpoint_every"] = values.get("steps", 200)
    return config_from_dict(values)


def ensure_warmup(cfg, cache_dir: str = CACHE_DIR) -> tuple[str, dict]:
    """Warm up once per key into cache_dir/<key> (atomic: temp folder + rename); returns (path, meta)."""
    import torch

    from rollout_bandits.trainer.policy import build_policy, save_policy, sft_warmup
    from rollout_bandits.trainer.tasks import make_task

    path = os.path.join(cache_dir, _warm_key(cfg))
    meta_path = os.path.join(path, "warmup.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            return path, json.load(f)
    os.makedirs(cache_dir, exist_ok=True)
    torch.set_num_threads(max(cfg.num_threads, 1))
    tasks = [make_task(n, difficulty=cfg.difficulty, seed=cfg.seed) for n in cfg.family_names]
    model, tok = build_policy(dataclasses.replace(cfg.policy, model_path=None))
    t0 = time.perf_counter()
    stats = sft_warmup(model, tok, tasks, steps=cfg.warmup_steps, lr=cfg.warmup_lr, seed=cfg.seed)
    tmp = f"{path}.tmp.{os.getpid()}"
    save_policy(model, tok, tmp)
    meta = {"key": _warm_key(cfg), "seconds": time.perf_counter() - t0, "steps": cfg.warmup_steps,
            "final_loss": stats["losses"][-1] if stats["losses"] else None}
    with open(os.path.join(tmp, "warmup.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.replace(tmp, path)
    except OSError:  # another worker won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path, meta


def _r(x, nd=4):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def _summarize_run(spec: RunSpec, cfg, result, wall: float, warm_meta: dict) -> dict:
    metrics = result.metrics
    curve = [{"step": 0, "generated": 0, "wall": 0.0, "eval": {k: _r(v) for k, v in result.pass_rate_before.items()}}]
    wall_cum = 0.0
    for m in metrics:
        wall_cum += m["step_seconds"]
        if "eval" in m:
            curve.append({"step": m["step"], "generated": m["generated"], "wall": _r(wall_cum, 3),
                          "eval": {k: _r(v) for k, v in m["eval"].items()}})
    series = {k: [_r(m[k]) for m in metrics] for k in ("reward", "pass_rate", "entropy", "step_seconds")}
    series.update({k: [m[k] for m in metrics] for k in ("trained_fresh", "trained_reused")})
    last_sched = metrics[-1]["scheduler"] if metrics else {}
    stage = {k: _r(v, 3) for k, v in result.stage_seconds.items()}
    total = sum(result.stage_seconds.values()) or 1.0
    return {
        "format": FORMAT, "name": spec.name, "group": spec.group, "labels": spec.labels, "seed": spec.seed,
        "status": "ok", "config": dataclasses.asdict(cfg),
        "curve": curve, "series": series,
        "final": curve[-1]["eval"], "before": curve[0]["eval"],
        "scheduler_stats": {k: _r(v) if isinstance(v, float) else v for k, v in last_sched.items()
                            if not isinstance(v, (list, dict))},
        "timings": {"run_wall_seconds": _r(wall, 2), "train_stage_seconds": stage,
                    "train_seconds": _r(total, 2), "eval_and_overhead_seconds": _r(wall - total, 2),
                    "scheduling_share": _r(result.scheduling_share),
                    "probe_share": _r(result.stage_seconds.get("probe", 0.0) / total),
                    "shared_warmup_seconds": _r(warm_meta.get("seconds"), 2)},
        "device": _device_info(), "versions": _versions(),
    }


def run_one(base: dict, spec_dict: dict, results_dir: str = RESULTS_DIR, cache_dir: str = CACHE_DIR,
            runs_dir: str = RUNS_DIR) -> dict:
    """Run one spec (in a worker process) and write its result JSON; never raises."""
    spec = RunSpec(**spec_dict)
    out_path = os.path.join(results_dir, f"{spec.name}.json")
    t0 = time.perf_counter()
    try:
        from rollout_bandits.trainer.loop import train

        cfg = base_config(base, spec, runs_dir)
        warm_path, warm_meta = ensure_warmup(cfg, cache_dir)
        cfg = dataclasses.replace(cfg, warmup_steps=0, policy=dataclasses.replace(cfg.policy, model_path=warm_path))
        result = train(cfg, progress=False, log=lambda *_: None)
        record = _summarize_run(spec, cfg, result, time.perf_counter() - t0, warm_meta)
    except Exception as err:  # a failed run is recorded, not fatal to the sweep
        record = {"format": FORMAT, "name": spec.name, "group": spec.group, "labels": spec.labels,
                  "seed": spec.seed, "status": "error", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:], "overrides": spec.overrides,
                  "timings": {"run_wall_seconds": _r(time.perf_counter() - t0, 2)}}
    os.makedirs(results_dir, exist_ok=True)
    tmp = f"{out_path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, out_path)
    return {"name": spec.name, "status": record["status"], "error": record.get("error"),
            "final": (record.get("final") or {}).get("mean"), "seconds": time.perf_counter() - t0}


def _warm_one(base: dict, spec_dict: dict, cache_dir: str, runs_dir: str) -> str:
    cfg = base_config(base, RunSpec(**spec_dict), runs_dir)
    return ensure_warmup(cfg, cache_dir)[0]


def sweep(grid_name: str, *, seeds=None, jobs: int = 2, only: str | None = None, steps: int | None = None,
          base_override: dict | None = None, results_dir: str = RESULTS_DIR, cache_dir: str = CACHE_DIR,
          runs_dir: str = RUNS_DIR, rerun: bool = False, progress: bool = True, dry_run: bool = False,
          specs: list[RunSpec] | None = None, base: dict | None = None, log=print) -> list[dict]:
    """Run a grid (skipping runs whose result file exists unless `rerun`); returns one line per run."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    if specs is None:
        base, specs = grid(grid_name, seeds)
    base = _merge(copy.deepcopy(base), base_override or {})
    if steps is not None:
        base["steps"] = steps
    if only:
        pat = re.compile(only)
        specs = [s for s in specs if pat.search(s.name)]
    todo = [s for s in specs if rerun or not os.path.isfile(os.path.join(results_dir, f"{s.name}.json"))]
    log(f"sweep {grid_name}: {len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to run "
        f"({jobs} at a time)")
    if dry_run or not todo:
        for s in todo:
            log(f"  {s.name}")
        return []
    t_start = time.perf_counter()
    lines: list[dict] = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
        # Phase 1: one warm-up per distinct key, then every run starts from its cache.
        warm_specs = {}
        for s in todo:
            try:
                warm_specs.setdefault(_warm_key(base_config(base, s, runs_dir)), s)
            except ValueError:  # a bad config: run_one records the error
                pass
        for fut in as_completed([pool.submit(_warm_one, base, dataclasses.asdict(s), cache_dir, runs_dir)
                                 for s in warm_specs.values()]):
            log(f"warm-up ready: {fut.result()}")
        futures = {pool.submit(run_one, base, dataclasses.asdict(s), results_dir, cache_dir, runs_dir): s
                   for s in todo}
        bar = _bar(progress, len(todo))
        for fut in as_completed(futures):
            try:
                line = fut.result()
            except Exception as err:  # the worker process itself died
                line = {"name": futures[fut].name, "status": "error", "error": f"{type(err).__name__}: {err}"}
            lines.append(line)
            bar(line)
        bar(None)
    errors = [ln for ln in lines if ln["status"] != "ok"]
    log(f"sweep {grid_name}: {len(lines)} runs in {time.perf_counter() - t_start:.0f} s wall-clock, "
        f"{len(errors)} failed" + "".join(f"\n  FAILED {e['name']}: {e['error']}" for e in errors))
    _append_sweep_log(results_dir, grid_name, len(lines), len(errors), time.perf_counter() - t_start, jobs)
    return lines


def _append_sweep_log(results_dir, grid_name, n, n_err, seconds, jobs) -> None:
    path = os.path.join(results_dir, "_sweeps.json")
    log = []
    if os.path.isfile(path):
        with open(path) as f:
            log = json.load(f)
    log.append({"grid": grid_name, "runs": n, "failed": n_err, "wall_seconds": round(seconds, 1), "jobs": jobs,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], **_device_info()})
    with open(path, "w") as f:
        json.dump(log, f, indent=1)


def _bar(enabled: bool, total: int):
    if not enabled:
        return lambda line: None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    task = prog.add_task("sweep", total=total, info="")
    prog.start()

    def update(line):
        if line is None:
            prog.stop()
            return
        info = (f"{line['name']}: final {line['final']:.3f} ({line['seconds']:.0f}s)" if line["status"] == "ok"
                else f"{line['name']}: FAILED {line['error']}")
        prog.console.print(info) if line["status"] != "ok" else None
        prog.update(task, advance=1, info=info)

    return update


# ------------------------------------------------------------------- report
def load_results(results_dir: str = RESULTS_DIR) -> list[dict]:
    out = []
    if not os.path.isdir(results_dir):
        return out
    for name in sorted(os.listdir(results_dir)):
        if name.endswith(".json") and not name.startswith("_"):
            with open(os.path.join(results_dir, name)) as f:
                rec = json.load(f)
            if rec.get("format") == FORMAT:
                out.append(rec)
    return out


FINAL_K = 3  # "final" = mean of the last FINAL_K eval points (one eval point is noisy, ~±1.5 points)


def final_of(rec: dict, key: str = "mean", k: int = FINAL_K) -> float:
    pts = [c["eval"][key] for c in rec["curve"][1:]][-k:] or [rec["curve"][-1]["eval"][key]]
    return sum(pts) / len(pts)


def _mean_std(xs):
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


def _avg_curve(recs: list[dict], key: str = "mean"):
    """Seed-averaged (x=generated, y) over the eval points all runs share."""
    steps = sorted(set.intersection(*[{c["step"] for c in r["curve"]} for r in recs]))
    by = [{c["step"]: c for c in r["curve"]} for r in recs]
    xs = [sum(b[s]["generated"] for b in by) / len(by) for s in steps]
    ys = [sum(b[s]["eval"][key] for b in by) / len(by) for s in steps]
    walls = [sum(b[s]["wall"] for b in by) / len(by) for s in steps]
    return steps, xs, ys, walls


def _fmt(m, sd, pct=True):
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if pct else f"{m:.2f} ± {sd:.2f}"


def _cell_summary(recs: list[dict], ref_recs: list[dict] | None) -> dict:
    """Metrics of one cell (same labels, several seeds), against the keep_all reference cell."""
    finals = [final_of(r) for r in recs]
    out = {"n": len(recs), "final": _mean_std(finals), "final_last": _mean_std([r["final"]["mean"] for r in recs]), "auc": _mean_std([auc(r["curve"]) for r in recs]),
           "before": _mean_std([r["before"]["mean"] for r in recs]),
           "step_s": _mean_std([r["timings"]["train_seconds"] / max(len(r["series"]["reward"]), 1) for r in recs]),
           "sched_share": _mean_std([r["timings"]["scheduling_share"] for r in recs]),
           "probe_share": _mean_std([r["timings"].get("probe_share") or 0.0 for r in recs]),
           "trained": _mean_std([sum(r["series"]["trained_fresh"]) + sum(r["series"]["trained_reused"])
                                 for r in recs]),
           "seeds": sorted(r["seed"] for r in recs)}
    out["ratio_avg"] = out["ratio_seeds"] = out["steps_to_target"] = None
    out["delta"] = (float("nan"), float("nan"))
    if ref_recs:
        ref_by_seed = {r["seed"]: r for r in ref_recs}
        out["delta"] = _paired_delta(recs, ref_recs)
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
            _, rx, ry, _ = _avg_curve(refs)
            steps, xs, ys, _ = _avg_curve(paired)
            x = first_reach(xs, ys, sum(ry[1:][-FINAL_K:]) / len(ry[1:][-FINAL_K:]))
            out["ratio_avg"] = None if x is None else x / rx[-1]
            step_per_gen = steps[-1] / xs[-1] if xs[-1] else 0
            out["steps_to_target"] = None if x is None else x * step_per_gen
    return out


def _paired_delta(recs, ref_recs):
    """Mean ± std over seeds of (final - reference final) on the same seed (same warm start, same
    prompts per step, same eval problems: the paired difference cancels most seed noise)."""
    ref_by_seed = {r["seed"]: final_of(r) for r in ref_recs}
    return _mean_std([final_of(r) - ref_by_seed[r["seed"]] for r in recs if r["seed"] in ref_by_seed])


def _ratio_str(s: dict) -> str:
    if s["ratio_seeds"] is None:
        return "n/a"
    avg = "not reached" if s["ratio_avg"] is None else f"{s['ratio_avg']:.2f}"
    per = ", ".join("–" if v is None else f"{v:.2f}" for v in s["ratio_seeds"])
    return f"{avg} ({per})"


def _group_key(rec) -> tuple:
    lab = rec["labels"]
    return (rec["group"], lab.get("optimizer"), lab.get("policy"), lab.get("axis"), lab.get("value"))


def _cells(recs):
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        cells.setdefault(_group_key(r), []).append(r)
    return cells


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
        steps, xs, ys, walls = _avg_curve(recs)
        by = [{c["step"]: c["eval"]["mean"] for c in r["curve"]} for r in recs]
        sds = [_mean_std([b[s] for b in by])[1] for s in steps]
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
            s = _cell_summary(recs, ref)
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
        s = _cell_summary(cbs, ref)
        ok_ratio = s["ratio_avg"] is not None and s["ratio_avg"] <= 0.7
        worst_p, worst = None, None
        for p in POLICIES:
            recs = cells.get((group, opt, p, None, None))
            if p == "cbs" or not recs:
                continue
            d = _paired_delta(cbs, recs)
            if worst is None or d[0] < worst[0]:
                worst_p, worst = p, d
        cm, csd = s["final"]
        # "Not lower beyond seed spread": CBS minus each baseline, paired by seed; it fails when the
        # mean difference is below zero by more than its seed standard deviation.
        ok_final = worst is None or worst[0] + worst[1] >= 0
        verdicts.append((opt, ok_ratio, ok_final))
        ratio_txt = "not reached" if s["ratio_avg"] is None else f"{s['ratio_avg']:.2f}"
        own = _cell_summary(ref, ref)["ratio_avg"]
        out.append(f"| {opt} | {ratio_txt} | {'n/a' if own is None else f'{own:.2f}'} | "
                   f"{'yes' if ok_ratio else 'NO'} | {_fmt(cm, csd)} | vs {POLICY_LABELS.get(worst_p, '-')}: "
                   f"{_fmt(*worst) if worst else ''} | {'yes' if ok_final else 'NO'} |")
    return out, verdicts


def report(results_dir: str = RESULTS_DIR, out_path: str = os.path.join("docs", "RESULTS.md"),
           fig_dir: str = "docs", notes_path: str | None = None) -> str:
    """Write the Markdown report and its PNGs from the result files alone."""
    recs = load_results(results_dir)
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] != "ok"]
    cells = _cells(ok)
    sweeps = []
    if os.path.isfile(os.path.join(results_dir, "_sweeps.json")):
        with open(os.path.join(results_dir, "_sweeps.json")) as f:
            sweeps = json.load(f)
    lines = ["# Results: rollout scheduling on the synthetic task families", "",
             "Generated by `rollout-bandits report` from the JSON files in "
             f"`{results_dir}/` (one per run). Do not edit by hand: re-run the command.", ""]
    if notes_path is None:
        notes_path = os.path.join(results_dir, "_notes.md")
    if os.path.isfile(notes_path):
        with open(notes_path) as f:
            lines += [f.read().rstrip(), ""]
    # Setup, from the stored configs.
    if ok:
        c = ok[0]["config"]
        devs = sorted({r["device"]["device"] for r in ok})
        vers = ok[0]["versions"]
        lines += ["## Setup (read from the result files)", "",
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
        befores = {}
        for r in ok:
            befores.setdefault(r["seed"], set()).add(r["before"]["mean"])
        lines += ["- shared warm-up per seed (seconds, held-out pass rate at RL step 0 across all runs of the "
                  "seed): " + "; ".join(f"seed {s}: {w}s, {', '.join(f'{100 * b:.1f}%' for b in sorted(befores[s]))}"
                                        for s, w in dict(warm).items()), ""]
    if sweeps:
        lines += ["## Sweeps and their wall-clock", "", "| grid | runs | failed | wall-clock | jobs | device | "
                  "finished | argv |", "|---|---|---|---|---|---|---|---|"]
        for s in sweeps:
            lines.append(f"| {s['grid']} | {s['runs']} | {s['failed']} | {s['wall_seconds'] / 60:.1f} min | "
                         f"{s['jobs']} | {s['device']} | {s['finished']} | `{' '.join(s['argv'])}` |")
        lines.append(f"| **total** | {sum(s['runs'] for s in sweeps)} | {sum(s['failed'] for s in sweeps)} | "
                     f"{sum(s['wall_seconds'] for s in sweeps) / 60:.1f} min | | | | |")
        lines.append("")
    # Main grid.
    figs = []
    for group, title in (("main", "Main grid: optimizers x selection policies"),
                         ("noise", f"Verifier noise (reward flipped with probability {NOISE})"),
                         *((f"{g}_{v}", f"{t} with scheduler change {v} = `{json.dumps(VARIANTS[v])}` (CBS "
                            "re-run, baselines as above)") for v in VARIANTS
                           for g, t in (("main", "Main grid"), ("noise", "Verifier noise"))),
                         ("mb", f"Mini-batch updates: one optimizer step per {MB_ROLLOUTS} rollouts (keep-all and "
                                f"CBS with `{json.dumps(MB_CBS)}`, both 512 training rows = 4 steps a round)")):
        gcells = {k: v for k, v in cells.items() if k[0] == group}
        if not gcells:
            continue
        if "_" in group:  # only CBS is re-run: the baselines are the base group's
            for k, v in cells.items():
                if k[0] == group.split("_")[0] and k[2] != "cbs":
                    gcells[(group,) + k[1:]] = v
            cells = {**cells, **gcells}
        opts = [o for o in OPTIMIZERS if any(k[1] == o for k in gcells)]
        lines += [f"## {title}", ""]
        tgt, verdicts = _targets(cells, group, opts)
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
        figs.append(png)
        lines += [f"![{group}]({os.path.relpath(png, os.path.dirname(out_path) or '.')})", ""]
        # Per-family finals (first optimizer).
        opt = opts[0]
        fams = [k for k in ok[0]["before"] if k != "mean"]
        lines += [f"### Final pass rate per family ({opt}, mean over seeds, %)", "",
                  "| policy | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
        lines.append("| (step 0) | " + " | ".join(
            f"{100 * _mean_std([r['before'][f] for r in gcells.get((group, opt, 'keep_all', None, None), [])])[0]:.1f}"
            for f in fams) + " |")
        for p in POLICIES:
            recs = gcells.get((group, opt, p, None, None))
            if recs:
                lines.append(f"| {POLICY_LABELS[p]} | " + " | ".join(
                    f"{100 * _mean_std([final_of(r, f) for r in recs])[0]:.1f}" for f in fams) + " |")
        lines.append("")
    # Ablations (CBS, GRPO): each axis against the default CBS run of the main grid on the same seeds.
    abl = {k: v for k, v in cells.items() if k[0] == "ablation"}
    if abl:
        lines += ["## Ablations (CBS with GRPO)", "",
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
                s = _cell_summary(recs, ref)
                d = _paired_delta(recs, default) if default else (float("nan"), float("nan"))
                lines.append(f"| {name} | {_fmt(*s['final'])} | {_fmt(*d)} | {_fmt(*s['auc'])} | {_ratio_str(s)} | "
                             f"{s['step_s'][0]:.2f} | {100 * s['sched_share'][0]:.1f}% | "
                             f"{100 * s['probe_share'][0]:.1f}% | {len(recs)} |")
            lines.append("")
            pcells = {("ref",): ref, ("default",): default, **{k: abl[k] for k in keys}}
            plabels = {("ref",): "keep-all", ("default",): "CBS default", **{k: f"{axis}={k[4]}" for k in keys}}
            png = _plot_group(pcells, list(pcells), plabels, os.path.join(fig_dir, f"results_ablation_{axis}.png"),
                              f"Ablation: {axis} (CBS, {opt})")
            figs.append(png)
            lines += [f"![{axis}]({os.path.relpath(png, os.path.dirname(out_path) or '.')})", ""]
    lines += _duplicates_section(ok)
    lines += _diagnostics_section(results_dir)
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['name']}`: {r.get('error')}" for r in failed] + [""]
    lines += ["## Reproduce", "", "```", "rollout-bandits sweep --grid cpu --jobs 2        # main + noise grids",
              "rollout-bandits sweep --grid ablations --jobs 2",
              *(f"rollout-bandits sweep --grid cpu_{v} --jobs 2     # CBS with {json.dumps(VARIANTS[v])}"
                for v in VARIANTS),
              "rollout-bandits sweep --grid cpu_mb --jobs 2     # mini-batch updates: keep-all vs CBS",
              "python -m rollout_bandits.experiments diagnose gain_auto '{\"scheduler\": {\"gain\": \"auto\"}}'",
              "python -m rollout_bandits.experiments diagnose gain_heldout '{\"scheduler\": {\"gain\": \"heldout\"}}'",
              "python -m rollout_bandits.experiments diagnose gain_self '{\"scheduler\": {\"gain\": \"self\"}}'",
              "rollout-bandits report                         # this file and docs/results_*.png", "```", "",
              "Result files that exist are skipped, so an interrupted sweep resumes; `--rerun` forces. "
              "`rollout-bandits sweep --grid gpu` is the full grid (5 seeds, 400 steps x 128 prompts, noise for "
              "every optimizer, ablations for every optimizer); it was not run (no GPU host was available).", "",
              f"{len(ok)} runs ok, {len(failed)} failed. Metric definitions: `rollout_bandits/experiments.py` "
              "(module docstring).", ""]
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(lines))
    return out_path


def _duplicates_section(ok: list[dict]) -> list[str]:
    """Runs whose configs are identical (out_dir aside), run at different times (often different
    commits of the code): their eval curves must match exactly if the runs are deterministic."""
    by: dict[str, list[dict]] = {}
    for r in ok:
        cfg = dict(r["config"], out_dir=None)
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
           "`python -m rollout_bandits.experiments diagnose NAME OVERRIDES`: one CBS run with each round's fresh "
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


def _default_value(axis: str, recs: list[dict]) -> str:
    if not recs:
        return "?"
    c = recs[0]["config"]
    s = c["scheduler"]
    return {"gain": s["gain"], "window": str(s["window_rounds"]),
            "ratio": f"intra {s['intra_ratio']}, reuse {s['reuse_ratio']}", "gamma": str(s["learner"]["gamma"]),
            "explorer": s["explorer"], "reuse_weighting": c["loss"]["reuse_weighting"],
            "intra_rule": s.get("intra_rule", "topk"),
            "paper": f"gain {s['gain']}, {s['candidates']}, {c['loss']['reuse_weighting']}"}.get(axis, "")


# ---------------------------------------------------------------------- CLI
def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="run an experiment grid (one JSON per run under benchmarks/results/experiments)")
    p.add_argument("--grid", choices=("cpu", "gpu", "ablations", "cpu_mb", *(f"cpu_{v}" for v in VARIANTS)),
                   default="cpu")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each on 1 torch thread)")
    p.add_argument("--only", default=None, help="regex on run names")
    p.add_argument("--steps", type=int, default=None, help="override the grid's RL steps")
    p.add_argument("--results", default=RESULTS_DIR)
    p.add_argument("--rerun", action="store_true", help="re-run runs whose result file exists")
    p.add_argument("--dry-run", action="store_true", help="list the runs to do and exit")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sweep_command)
    r = sub.add_parser("report", help="write docs/RESULTS.md and its PNGs from the result files")
    r.add_argument("--results", default=RESULTS_DIR)
    r.add_argument("--out", default=os.path.join("docs", "RESULTS.md"))
    r.add_argument("--fig-dir", default="docs")
    r.set_defaults(func=_report_command)


def _sweep_command(args) -> int:
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    lines = sweep(args.grid, seeds=seeds, jobs=args.jobs, only=args.only, steps=args.steps,
                  results_dir=args.results, rerun=args.rerun, progress=not args.no_progress, dry_run=args.dry_run)
    return 1 if any(ln["status"] != "ok" for ln in lines) else 0


def _report_command(args) -> int:
    path = report(args.results, args.out, args.fig_dir)
    print(f"wrote {path}")
    return 0


# -------------------------------------------------------------- diagnostics


def diagnose(name: str, overrides: dict, seed: int = 0, base: dict | None = None,
             cache_dir: str = CACHE_DIR, runs_dir: str = RUNS_DIR) -> dict:
    """What does CBS's fresh selection pick? One training run with `Scheduler.select` wrapped to
    compare each round's choice with PODS (max-variance) on the same batch: the share of CBS's
    picks PODS would also pick (random picking gives the keep ratio), the mean |advantage| of the
    picks over the group's mean |advantage|, and the correlation of the learned score with
    |advantage| and with reward (within groups that have both rewards)."""
    import torch

    from rollout_bandits.bandit import baselines
    from rollout_bandits.bandit.scheduler import Scheduler
    from rollout_bandits.trainer.loop import train

    spec = _spec("diag", "grpo", "cbs", seed)
    _merge(spec.overrides, copy.deepcopy(overrides))
    cfg = base_config(base or CPU_BASE, spec, runs_dir)
    warm, _ = ensure_warmup(cfg, cache_dir)
    cfg = dataclasses.replace(cfg, warmup_steps=0, policy=dataclasses.replace(cfg.policy, model_path=warm))
    rows: list[dict] = []
    orig = Scheduler.select

    def select(self, batch, **kw):
        plan = orig(self, batch, **kw)
        go = batch.group_offsets.cpu()
        r = batch.reward.cpu().float()
        sizes = (go[1:] - go[:-1]).long()
        gid = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        gmax = torch.zeros(sizes.numel()).index_reduce_(0, gid, r, "amax", include_self=False)
        gmin = torch.zeros(sizes.numel()).index_reduce_(0, gid, r, "amin", include_self=False)
        contrast = (gmax > gmin)[gid]
        sel = plan.fresh.mask.cpu()
        _, pods = baselines.max_variance(r, go, k=self.config.intra_k, ratio=self.config.intra_ratio)
        pods = pods.cpu()
        a = plan.fresh_advantage.abs()
        gmean_a = (torch.zeros(sizes.numel()).index_add_(0, gid, a) / sizes)[gid]
        s = plan.fresh.scores.detach().cpu().float()
        m = sel & contrast
        row = {"step": int(plan.round) + 1, "contrast_share": float(contrast.float().mean())}
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
        rows.append(row)
        return plan

    Scheduler.select = select
    try:
        res = train(cfg, progress=False, log=lambda *_: None)
    finally:
        Scheduler.select = orig
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "step"))
    half = len(rows) // 2

    def avg(k, part):
        xs = [x[k] for x in part if k in x and x[k] is not None and math.isfinite(x[k])]
        return _r(sum(xs) / len(xs)) if xs else None

    summary = {k: {"first_half": avg(k, rows[:half]), "second_half": avg(k, rows[half:])} for k in keys}
    summary["intra_ratio"] = cfg.scheduler.intra_ratio
    summary["final"] = _r(res.pass_rate_after["mean"])
    return {"name": name, "seed": seed, "overrides": overrides, "summary": summary}


def _diagnose_main(argv=None) -> None:
    """python -m rollout_bandits.experiments diagnose NAME JSON_OVERRIDES [--seed S]: writes
    benchmarks/results/experiments/_diagnostics__NAME__sS.json (the report lists them)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["diagnose"])
    ap.add_argument("name")
    ap.add_argument("overrides", help='nested TrainConfig overrides as JSON, e.g. \'{"scheduler": {"gain": "self"}}\'')
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = diagnose(args.name, json.loads(args.overrides), seed=args.seed)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"_diagnostics__{args.name}__s{args.seed}.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    _diagnose_main()
