"""Ahead-of-time compilation of every kernel configuration the launchers can pick, without a GPU.

    python -m rollout_bandits.kernels.aot [--out FILE] [--jobs N]

`cases()` sweeps each launcher's plan function (kernels/launch.py) over the
inputs the project supports: rollouts of 1 to 32,768 tokens, groups of 1 to
1,024 rollouts (no plan depends on the group size), learner widths 16 to 256
(dense and diagonal Zinv), fp32 / bf16 / fp16 token streams; it builds each distinct config's arguments with the launcher's own
argument builder. `check()` compiles every case for sm_90 (H100) and sm_80
(A100) through Triton's own JIT path (`JITFunction.warmup`, with a stand-in
driver that names the target: the signature, specialization and options are
the ones a launch on that GPU would use), reads registers and spills from
`ptxas -v` (the ptxas of the Triton wheel, with Triton's flags) and shared
memory from the compiled kernel, and lists every case over a limit: a compile
error, more than 255 registers, any spill, or more shared memory than a block
may have. `warm_up()` compiles the same cases on the GPU at hand, up front.

Offsets are compiled as int64 and per-rollout fields as float32 (rewards, age,
reuse count, clip ratio) and bool (truncated), the dtypes the project's
producers make; another dtype (int32 offsets, say) is one more variant, which
Triton compiles at its first use. Pointers are compiled as 16-byte aligned
(every fresh allocation is).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.feature_spec import NUM_FEATURES, FeatureConfig
from rollout_bandits.kernels.launch import LaunchConfig

# The package re-exports functions under their modules' names: fetch the modules themselves.
_features = importlib.import_module("rollout_bandits.kernels.rollout_features")
_ucb = importlib.import_module("rollout_bandits.kernels.ucb_score")
_topk = importlib.import_module("rollout_bandits.kernels.group_topk")

# Per-block shared memory a kernel may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
TARGETS = {"sm_90": (90, 232_448), "sm_80": (80, 166_912)}
MAX_REGISTERS = 255
MAX_TOKENS = 32_768
MAX_GROUP = 1_024
HIDDEN = range(16, 257)
STREAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Case:
    """One kernel configuration: `build()` gives (jit function, launch arguments)."""

    kernel: str
    variant: str
    config: LaunchConfig
    build: object

    @property
    def name(self) -> str:
        return f"{self.kernel} [{self.config.label()}] {self.variant}".strip()


def _dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _example_batch(stream: torch.dtype) -> RolloutBatch:
    """Two rollouts in one group with every optional stream and field, streams in `stream`."""
    lp = torch.tensor([-1.0, -2.0, -0.5])
    return RolloutBatch(token_logprobs=lp.to(stream), offsets=torch.tensor([0, 1, 3]),
                        reward=torch.tensor([1.0, 0.0]), group_offsets=torch.tensor([0, 2]),
                        token_entropy=lp.abs().to(stream), cur_logprobs=lp.to(stream),
                        age=torch.zeros(2), reuse_count=torch.zeros(2), truncated=torch.zeros(2, dtype=torch.bool),
                        clip_ratio=torch.zeros(2))


def _features_cases() -> list[Case]:
    plans = {_features.features_plan(n, n * length) for n in (1, 2, 3, 1024, 16_384)
             for length in range(1, MAX_TOKENS + 1)}
    out = []
    for plan in sorted(plans, key=lambda p: p.label()):
        for stream in STREAM_DTYPES:
            def build(stream=stream):
                b = _example_batch(stream)
                out = torch.empty((b.num_rollouts, NUM_FEATURES))
                return _features._rollout_features_kernel, _features._features_args(b, FeatureConfig(), out)
            out.append(Case("rollout_features", f"streams={_dtype(stream)}", plan, build))
    return out


def _ucb_cases() -> list[Case]:
    first: dict[LaunchConfig, tuple[int, bool]] = {}
    for h in HIDDEN:
        for diag in (False, True):
            first.setdefault(_ucb.ucb_plan(NUM_FEATURES, h, diag), (h, diag))
    out = []
    for plan, (h, diag) in sorted(first.items(), key=lambda kv: kv[1]):
        def build(plan=plan, h=h, diag=diag):
            x = torch.zeros(2, NUM_FEATURES)
            w = _ucb.ScorerWeights.random(NUM_FEATURES, h, diagonal=diag)
            return _ucb._ucb_score_kernel, _ucb._ucb_args(x, w, plan, torch.empty(3, 2))
        out.append(Case("ucb_score", f"x=float32 hidden<={dict(plan.meta)['BLOCK_H']}", plan, build))
    return out


def _topk_cases() -> list[Case]:
    out = []
    for contrast in (False, True):
        def build(contrast=contrast):
            s, off = torch.zeros(MAX_GROUP), torch.tensor([0, MAX_GROUP])
            args = _topk._topk_args(s, off, 1, None, s if contrast else None, torch.empty(MAX_GROUP, dtype=torch.int8))
            return _topk._group_topk_kernel, args
        out.append(Case("group_topk", "scores=float32", _topk.topk_plan(contrast), build))
    plan = _topk.topm_plan()

    def build_topm():
        s = torch.zeros(4)
        return _topk._global_topm_kernel, (s, torch.empty(4, dtype=torch.int8), 4, 1)
    out.append(Case("global_topm", "scores=float32", plan, build_topm))
    return out


@functools.lru_cache(maxsize=1)
def cases() -> tuple[Case, ...]:
    """Every configuration the CUDA launchers can pick, once."""
    return tuple(_features_cases() + _ucb_cases() + _topk_cases())


class _TargetDriver:
    """Stands in for the CUDA driver: names the target. The device number is the capability, so
    that each target gets its own JIT cache entry."""

    def __init__(self, capability: int):
        self.capability = capability

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self) -> int:
        return self.capability

    def get_current_stream(self, device=None) -> int:
        return 0


def _ptxas_report(ptx: str, capability: int, log: str = "") -> dict:
    """Registers, stack frame and spill bytes from `ptxas -v`: the log of Triton's own ptxas run
    when the compile was fresh, else ptxas run again on the PTX with Triton's flags."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    arch = sm_arch_from_capability(capability)
    if "registers" not in log:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.ptx"
            src.write_text(ptx)
            res = subprocess.run([get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                                  f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                                 capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"ptxas failed: {res.stderr.strip()[-2000:]}")
        log = res.stderr

    def num(pattern: str) -> int:
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f"ptxas -v output without /{pattern}/: {log[-2000:]}")
        return int(m.group(1))

    return {"arch": arch, "registers": num(r"Used (\d+) registers"), "stack_bytes": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"), "spill_loads": num(r"(\d+) bytes spill loads")}


def compile_case(index: int, target: str) -> dict:
    """Compile cases()[index] for `target` ("sm_90" | "sm_80"); its resource use and problems."""
    from triton.runtime.driver import driver

    case = cases()[index]
    capability, shared_limit = TARGETS[target]
    row = {"kernel": case.kernel, "variant": case.variant, "config": dict(case.config.meta),
           "num_warps": case.config.num_warps, "num_stages": case.config.num_stages, "target": target}
    t0 = time.perf_counter()
    previous = getattr(driver, "_active", None)  # None until a real driver was asked for
    driver.set_active(_TargetDriver(capability))
    try:
        fn, args = case.build()
        knobs.nvidia.dump_ptxas_log = True  # Triton prints its ptxas -v log when it compiles
        with contextlib.redirect_stdout(io.StringIO()) as log:
            k = fn.warmup(*args, grid=(1,), **case.config.kwargs())
        row.update(_ptxas_report(k.asm["ptx"], capability, log.getvalue()))
        row["shared_bytes"] = int(k.metadata.shared)
        problems = []
        if row["registers"] > MAX_REGISTERS:
            problems.append(f"{row['registers']} registers > {MAX_REGISTERS}")
        if row["spill_stores"] or row["spill_loads"]:
            problems.append(f"spills {row['spill_stores']} B stored, {row['spill_loads']} B loaded")
        if row["shared_bytes"] > shared_limit:
            problems.append(f"{row['shared_bytes']} B shared memory > {shared_limit} B per block")
    except Exception as e:  # a compile error is a finding, reported with the case
        problems = [f"compile error: {type(e).__name__}: {str(e).strip()[-1500:]}"]
    finally:
        driver.set_active(previous)
    row["problems"] = problems
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def check(jobs: int | None = None) -> dict:
    """Compile every case for every target (`jobs` processes); the report."""
    work = [(i, t) for t in TARGETS for i in range(len(cases()))]
    t0 = time.perf_counter()
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(compile_case, *zip(*work)))
    else:
        rows = [compile_case(i, t) for i, t in work]
    summary: dict[str, dict] = {}
    for r in rows:
        s = summary.setdefault(f"{r['kernel']} {r['target']}", {
            "configs": 0, "max_registers": 0, "max_spill_bytes": 0, "max_shared_bytes": 0,
            "shared_limit": TARGETS[r["target"]][1]})
        s["configs"] += 1
        s["max_registers"] = max(s["max_registers"], r.get("registers", 0))
        s["max_spill_bytes"] = max(s["max_spill_bytes"], r.get("spill_stores", 0) + r.get("spill_loads", 0))
        s["max_shared_bytes"] = max(s["max_shared_bytes"], r.get("shared_bytes", 0))
    return {
        "triton": triton.__version__, "torch": torch.__version__,
        "targets": {t: {"capability": c, "shared_limit_bytes": lim} for t, (c, lim) in TARGETS.items()},
        "max_registers": MAX_REGISTERS,
        "domain": {"tokens_per_rollout": [1, MAX_TOKENS], "group_size": [1, MAX_GROUP],
                   "hidden": [HIDDEN.start, HIDDEN.stop - 1], "streams": [_dtype(d) for d in STREAM_DTYPES],
                   "offsets": "int64"},
        "failures": [f"{r['kernel']} {r['target']} {r['config']} {r['variant']}: {'; '.join(r['problems'])}"
                     for r in rows if r["problems"]],
        "summary": summary,
        "wall_s": round(time.perf_counter() - t0, 1), "jobs": jobs,
        "cases": rows,
    }


def results_path(root: Path | None = None) -> Path:
    root = root or Path(__file__).resolve().parent.parent
    return root / "benchmarks" / "results" / f"aot_{triton.__version__}.json"


def warm_up(device: torch.device | str | None = None, *, kernels: tuple[str, ...] | None = None,
            verbose: bool = False) -> int:
    """Compile every case (or those of `kernels`) for the current CUDA device, so that no compile
    happens mid-training; Triton's cache keeps them for later processes. Returns the number
    compiled; 0 without CUDA (the interpreter compiles nothing)."""
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return 0
    done = 0
    with torch.cuda.device(torch.device(device or "cuda")):
        for case in cases():
            if kernels and case.kernel not in kernels:
                continue
            t0 = time.perf_counter()
            fn, args = case.build()
            fn.warmup(*args, grid=(1,), **case.config.kwargs())
            done += 1
            if verbose:
                print(f"compiled {case.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: benchmarks/results/aot_<triton>.json)")
    ap.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per core)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot: TRITON_INTERPRET=1 replaces the kernels by the interpreter; unset it", file=sys.stderr)
        return 2
    report = check(args.jobs)
    out = args.out or results_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(report['cases'])} compiles ({len(cases())} configs x {len(TARGETS)} targets) in "
          f"{report['wall_s']} s with {report['jobs']} processes -> {out}")
    for key, s in report["summary"].items():
        print(f"  {key:28s} {s['configs']:3d} configs  max {s['max_registers']:3d} registers  "
              f"{s['max_spill_bytes']:6d} B spilled  {s['max_shared_bytes']:7d} B shared (limit {s['shared_limit']})")
    for f in report["failures"]:
        print("FAIL", f)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
