"""In-loop profile: the share of an RL step that scheduling takes, from a short training run.

    python benchmarks/profile_loop.py [--steps 8] [--prompts 64]   # -> benchmarks/results/profile_loop_<device>.json

Runs `rollout_bandits.trainer.loop.train` (the tiny embedded policy, the CBS scheduler in the loop)
for a few steps and reads the per-stage seconds it records (generate, verify, schedule, update,
probe, observe); the scheduling share is (prompts + schedule + observe) / step time. The trainer runs its
policy on the CPU, so the scheduler there takes its CPU path. Where CUDA is present the script
also times `schedule` on the GPU (Triton, eager, and a CUDA-graph replay) on a batch of the run's
shape (its rollouts per step, mean length and learner width), so that the measured step stages
and the GPU scheduling time sit side by side; `schedule_share_with_cuda_schedule` is the share the
run would have with that GPU time in place of its CPU `schedule` stage (a projection: the other
stages are left as measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import RESULTS_DIR, device_name, graph_replay, time_fn  # noqa: E402

from rollout_bandits import ScorerWeights, schedule  # noqa: E402
from rollout_bandits.kernels import NUM_FEATURES  # noqa: E402
from rollout_bandits.synthetic import synthetic_batch  # noqa: E402
from rollout_bandits.trainer.loop import SCHEDULING_STAGES, STAGES, TrainConfig, train  # noqa: E402


def run_loop(steps: int, prompts: int, group: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(steps=steps, prompts_per_step=prompts, group_size=group, warmup_steps=warmup,
                          eval_every=10_000, eval_problems=1, checkpoint_every=10_000, out_dir=out)
        t0 = time.perf_counter()
        res = train(cfg, progress=False, log=lambda *_: None)
        wall = time.perf_counter() - t0
    per_step = [m["seconds"] for m in res.metrics]
    timed = per_step[1:] or per_step  # the first step also pays one-off compiles and caches
    total = {s: sum(m[s] for m in timed) for s in STAGES}
    step_s = sum(total.values()) / len(timed)
    return {"steps": steps, "prompts_per_step": prompts, "group_size": group, "timed_steps": len(timed),
            "stage_seconds_per_step": {s: v / len(timed) for s, v in total.items()},
            "step_seconds": step_s,
            "scheduling_share": sum(total[s] for s in SCHEDULING_STAGES) / sum(total.values()),
            "hidden": cfg.scheduler.learner.hidden,
            "max_new_tokens": cfg.generation.max_new_tokens, "run_wall_s": wall}


def time_cuda_schedule(n_rollouts: int, mean_len: int, hidden: int, group: int) -> dict:
    dev = torch.device("cuda")
    b = synthetic_batch(max(1, n_rollouts // group), group, mean_len, seed=0, device=dev)
    w = ScorerWeights.random(NUM_FEATURES, hidden, seed=0, device=dev)
    out = {}
    for name, backend in (("triton", "triton"), ("eager", "reference")):
        fn = lambda backend=backend: schedule(b, w, k=max(1, group // 2), backend=backend, validate=False)  # noqa: E731
        out[f"{name}_ms"] = time_fn(fn, dev, rounds=50)["median_ms"]
    run = lambda: schedule(b, w, k=max(1, group // 2), backend="triton", validate=False)  # noqa: E731
    out["triton_graph_ms"] = time_fn(graph_replay(run, dev), dev, rounds=50)["median_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=20, help="supervised warm-up steps before the RL steps")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    loop = run_loop(args.steps, args.prompts, args.group, args.warmup)
    report = {"suite": "profile_loop", "device": device_name(torch.device("cuda" if cuda else "cpu")),
              "policy_device": "cpu", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "loop": loop}
    if cuda:
        n = args.prompts * args.group
        gpu = time_cuda_schedule(n, loop["max_new_tokens"], loop["hidden"], args.group)
        stages = loop["stage_seconds_per_step"]
        for impl in ("triton", "triton_graph"):
            sched = gpu[f"{impl}_ms"] / 1e3
            step = loop["step_seconds"] - stages["schedule"] + sched
            gpu[f"schedule_share_with_cuda_{impl}"] = (sched + stages["observe"]) / step
        report["cuda_schedule"] = {"rollouts": n, **gpu}
    out = args.out or RESULTS_DIR / f"profile_loop_{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    st = loop["stage_seconds_per_step"]
    print(f"{loop['timed_steps']} steps of {args.prompts} x {args.group} rollouts: {loop['step_seconds'] * 1e3:.1f} ms"
          f"/step, scheduling ({' + '.join(SCHEDULING_STAGES)}) {100 * loop['scheduling_share']:.2f}% "
          f"[" + ", ".join(f"{s} {v * 1e3:.1f} ms" for s, v in st.items()) + f"] -> {out}")
    if cuda:
        c = report["cuda_schedule"]
        print(f"schedule on CUDA at {c['rollouts']} rollouts: triton {c['triton_ms']:.3f} ms, graph replay "
              f"{c['triton_graph_ms']:.3f} ms, eager {c['eager_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
