"""The sweep runner: one `train` call per run in a process pool, a shared warm-up, one JSON per run.

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

from rollout_bandits.config import merge
from rollout_bandits.experiments.grids import RunSpec, grid
from rollout_bandits.validation import fail

RESULTS_DIR = os.path.join("benchmarks", "results", "experiments")
CACHE_DIR = os.path.join("runs", "warmup_cache")
RUNS_DIR = os.path.join("runs", "sweep")
FORMAT = "rollout_bandits.experiment/v1"


def rounded(x, nd=4):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def device_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu: {cpu}",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


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
    if (cfg.eval_fraction, cfg.val_fraction) != (0.1, 0.0):  # the splits decide what the warm-up trains on
        key["splits"] = [cfg.eval_fraction, cfg.val_fraction]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"seed{cfg.seed}_{digest}"


def base_config(base: dict, spec: RunSpec, out_root: str = RUNS_DIR):
    """The TrainConfig of a spec, before the warm-up is swapped for the cached checkpoint."""
    from rollout_bandits.trainer.loop import config_from_dict

    values = merge(copy.deepcopy(base), spec.overrides)
    values.update(seed=spec.seed, out_dir=os.path.join(out_root, spec.name), num_threads=1)
    values["checkpoint_every"] = values.get("steps", 200)
    return config_from_dict(values)


def ensure_warmup(cfg, cache_dir: str = CACHE_DIR) -> tuple[str, dict]:
    """Warm up once per key into cache_dir/<key> (atomic: temp folder + rename); returns (path, meta)."""
    import torch

    from rollout_bandits.trainer.policy import build_policy, save_policy, sft_warmup

    path = os.path.join(cache_dir, _warm_key(cfg))
    meta_path = os.path.join(path, "warmup.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            return path, json.load(f)
    os.makedirs(cache_dir, exist_ok=True)
    torch.set_num_threads(max(cfg.num_threads, 1))
    tasks = cfg.make_tasks(noise=0.0)
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


def warmed_config(base: dict, spec: RunSpec, cache_dir: str, runs_dir: str):
    """(config starting from the shared warm-up, warm-up meta)."""
    cfg = base_config(base, spec, runs_dir)
    warm_path, warm_meta = ensure_warmup(cfg, cache_dir)
    return dataclasses.replace(cfg, warmup_steps=0, policy=dataclasses.replace(cfg.policy, model_path=warm_path)), \
        warm_meta


def _summarize_run(spec: RunSpec, cfg, result, wall: float, warm_meta: dict) -> dict:
    metrics = result.metrics
    curve = [{"step": 0, "generated": 0, "generated_tokens": 0, "trained_tokens": 0, "wall": 0.0,
              "eval": {k: rounded(v) for k, v in result.pass_rate_before.items()}}]
    wall_cum = 0.0
    for m in metrics:
        wall_cum += m["step_seconds"]
        if "eval" in m:
            curve.append({"step": m["step"], "generated": m["generated"], "generated_tokens": m["generated_tokens"],
                          "trained_tokens": m["trained_tokens"], "wall": rounded(wall_cum, 3),
                          "eval": {k: rounded(v) for k, v in m["eval"].items()}})
    series = {k: [rounded(m[k]) for m in metrics] for k in ("reward", "pass_rate", "entropy", "step_seconds")}
    series.update({k: [m[k] for m in metrics] for k in ("trained_fresh", "trained_reused", "tokens")})
    series["zero_variance_share"] = [rounded(m["prompts"]["last_zero_variance_share"]) for m in metrics]
    last_sched = metrics[-1]["scheduler"] if metrics else {}
    last_prompts = metrics[-1]["prompts"] if metrics else {}
    stage = {k: rounded(v, 3) for k, v in result.stage_seconds.items()}
    total = sum(result.stage_seconds.values()) or 1.0
    return {
        "format": FORMAT, "name": spec.name, "group": spec.group, "labels": spec.labels, "seed": spec.seed,
        "status": "ok", "config": dataclasses.asdict(cfg),
        "curve": curve, "series": series,
        "final": curve[-1]["eval"], "before": curve[0]["eval"],
        "scheduler_stats": {k: rounded(v) if isinstance(v, float) else v for k, v in last_sched.items()
                            if not isinstance(v, (list, dict))},
        "prompt_stats": {k: rounded(v) if isinstance(v, float) else v for k, v in last_prompts.items()},
        "cost": {"generated_rollouts": metrics[-1]["generated"] if metrics else 0,
                 "generated_tokens": metrics[-1]["generated_tokens"] if metrics else 0,
                 "trained_tokens": metrics[-1]["trained_tokens"] if metrics else 0,
                 "stage_seconds": stage, "eval_seconds": rounded(sum(m.get("eval_seconds", 0.0) for m in metrics), 2),
                 "eval_set_sizes": result.eval_set_sizes},
        "timings": {"run_wall_seconds": rounded(wall, 2), "train_stage_seconds": stage,
                    "train_seconds": rounded(total, 2), "eval_and_overhead_seconds": rounded(wall - total, 2),
                    "scheduling_share": rounded(result.scheduling_share),
                    "probe_share": rounded(result.stage_seconds.get("probe", 0.0) / total),
                    "shared_warmup_seconds": rounded(warm_meta.get("seconds"), 2)},
        "device": device_info(), "versions": _versions(),
    }


def write_json(path: str, record, **dump_kw) -> None:
    """Temp file + rename: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, **dump_kw)
    os.replace(tmp, path)


def run_one(base: dict, spec_dict: dict, results_dir: str = RESULTS_DIR, cache_dir: str = CACHE_DIR,
            runs_dir: str = RUNS_DIR) -> dict:
    """Run one spec (in a worker process) and write its result JSON; never raises."""
    spec = RunSpec(**spec_dict)
    t0 = time.perf_counter()
    try:
        from rollout_bandits.trainer.loop import train

        cfg, warm_meta = warmed_config(base, spec, cache_dir, runs_dir)
        result = train(cfg, overwrite=True, progress=False, log=lambda *_: None)
        record = _summarize_run(spec, cfg, result, time.perf_counter() - t0, warm_meta)
    except Exception as err:  # a failed run is recorded, not fatal to the sweep
        record = {"format": FORMAT, "name": spec.name, "group": spec.group, "labels": spec.labels,
                  "seed": spec.seed, "status": "error", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:], "overrides": spec.overrides,
                  "timings": {"run_wall_seconds": rounded(time.perf_counter() - t0, 2)}}
    write_json(os.path.join(results_dir, f"{spec.name}.json"), record, separators=(",", ":"))
    return {"name": spec.name, "status": record["status"], "error": record.get("error"),
            "final": (record.get("final") or {}).get("mean"), "seconds": time.perf_counter() - t0}


def _warm_one(base: dict, spec_dict: dict, cache_dir: str, runs_dir: str) -> str:
    cfg = base_config(base, RunSpec(**spec_dict), runs_dir)
    return ensure_warmup(cfg, cache_dir)[0]


def sweep(grid_name: str, *, seeds=None, jobs: int = 2, only: str | None = None, steps: int | None = None,
          results_dir: str = RESULTS_DIR, cache_dir: str = CACHE_DIR, runs_dir: str = RUNS_DIR,
          rerun: bool = False, progress: bool = True, dry_run: bool = False,
          specs: list[RunSpec] | None = None, base: dict | None = None, log=print) -> list[dict]:
    """Run a grid (skipping runs whose result file exists unless `rerun`); returns one line per run."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    if specs is None and grid_name in ("efficiency", "efficiency_small"):
        # One command: the tuning runs that are missing, the choice they make, then the grid.
        from rollout_bandits.experiments import efficiency as eff

        sweep(f"{grid_name}_tune", jobs=jobs, steps=steps, results_dir=results_dir, cache_dir=cache_dir,
              runs_dir=runs_dir, progress=progress, dry_run=dry_run, log=log)
        choice = eff.read_choice(results_dir, grid_name) if dry_run else eff.write_choice(results_dir, log, grid_name)
        base, specs = grid(grid_name, seeds, choice=choice)
    elif specs is None:
        base, specs = grid(grid_name, seeds)
    base = copy.deepcopy(base)
    if steps is not None:
        base["steps"] = steps
    if only:
        try:
            pat = re.compile(only)
        except re.error as err:
            fail("sweep", "only", f"{only!r} ({err})", "a regular expression over run names")
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
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
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
        bar = _bar(progress, len(todo), log)
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
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], **device_info()})
    write_json(path, log, indent=1)


def _line_info(line: dict) -> str:
    return (f"{line['name']}: final {line['final']:.3f} ({line['seconds']:.0f}s)" if line["status"] == "ok"
            else f"{line['name']}: FAILED {line['error']}")


def _bar(enabled: bool, total: int, log=print):
    """A rich progress bar; without it (--no-progress, e.g. output to a file) one log line per run."""
    if not enabled:
        done = [0]
        t0 = time.perf_counter()

        def line_log(line):
            if line is not None:
                done[0] += 1
                log(f"[{done[0]}/{total}, {time.perf_counter() - t0:.0f} s] {_line_info(line)}")
        return line_log
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
        info = _line_info(line)
        if line["status"] != "ok":
            prog.console.print(info)
        prog.update(task, advance=1, info=info)

    return update


def load_results(results_dir: str = RESULTS_DIR) -> list[dict]:
    """Every run's result record in `results_dir` (files starting with "_" are not runs)."""
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
