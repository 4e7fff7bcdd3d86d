"""`make gpu-check`: everything a GPU host can tell about the kernels, in one command.

    python benchmarks/gpu_check.py        # -> benchmarks/results/gpu_check_<device>.json (+ the suites' own JSON)

Steps (each one's outcome is recorded; a failing step does not stop the others):
1. parity: the CUDA tests (`pytest -m gpu tests/`): every kernel against its oracle on the GPU,
   no host sync with validate=False, a CUDA-graph capture of `schedule`;
2. warm-up: `kernels.aot.warm_up()` compiles every config the launchers can pick (the seconds a
   cold process spends compiling before its first step);
3. benchmarks: `pytest benchmarks/bench_features.py benchmarks/bench_pipeline.py --benchmark-enable`:
   Triton vs eager vs torch.compile (and a CUDA-graph replay of the pipeline), achieved GB/s
   against the device copy bandwidth measured in the same run, device launches per call;
4. in-loop profile: benchmarks/profile_loop.py, the scheduling share of a training step.
Without CUDA the parity tests and the warm-up skip (said so in the output and the JSON); the
benchmarks and the profile run on the CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _run(name: str, cmd: list[str], env: dict | None = None) -> dict:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True, capture_output=True)
    sys.stdout.write(res.stdout[-6000:])
    sys.stderr.write(res.stderr[-3000:])
    tail = [ln for ln in res.stdout.strip().splitlines() if ln.strip()][-1:] or [""]
    return {"command": " ".join(cmd), "returncode": res.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "summary": tail[0].strip("= ")}


def _warm_up() -> dict:
    from rollout_bandits.kernels.aot import cases, warm_up

    t0 = time.perf_counter()
    n = warm_up(verbose=True)
    return {"configs": n, "of": len(cases()), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    if not cuda:
        print("gpu-check: no CUDA device here. The CUDA parity tests and the warm-up are skipped; the "
              "benchmarks and the in-loop profile run on the CPU.", flush=True)
    py = sys.executable
    start = time.time()
    report: dict = {"device": name, "cuda": cuda, "torch": torch.__version__,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}
    steps = report["steps"]
    steps["parity"] = _run("CUDA parity tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/", "-p",
                                                 "no:cacheprovider"])
    if cuda:
        try:
            steps["warm_up"] = _warm_up()
        except Exception as e:  # recorded, the other steps still run
            steps["warm_up"] = {"error": f"{type(e).__name__}: {e}"}
    else:
        steps["warm_up"] = {"skipped": "no CUDA device"}
    steps["benchmarks"] = _run("kernel and pipeline benchmarks", [
        py, "-m", "pytest", "-q", "benchmarks/bench_features.py", "benchmarks/bench_pipeline.py",
        "--benchmark-enable", "-p", "no:cacheprovider"])
    steps["profile"] = _run("in-loop profile", [py, "benchmarks/profile_loop.py"])
    report["results"] = sorted(str(p.relative_to(ROOT)) for p in RESULTS.glob("*.json") if p.stat().st_mtime >= start)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    out = RESULTS / f"gpu_check_{slug}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    def status(v: dict) -> str:
        if "skipped" in v:
            return "skipped"
        return "ok" if v.get("returncode", 0) == 0 and "error" not in v else "FAILED"

    print(f"\ngpu-check on {name}: " + ", ".join(
        f"{k} {status(v)}" + (f" ({v['summary']})" if v.get("summary") else "") for k, v in steps.items())
        + f" -> {out}")
    return 0 if all(v.get("returncode", 0) == 0 and "error" not in v for v in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
