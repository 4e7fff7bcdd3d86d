"""Benchmark helpers shared by benchmarks/conftest.py and bench_pipeline.py: timing and records.

`pytest benchmarks/` runs the suite (it is outside `testpaths`, so `make test` never collects
it). Medians come from our own timer (CUDA-synchronized on GPU) so that they exist with
pytest-benchmark enabled or disabled; they are also put into pytest-benchmark's `extra_info`.
Results go to benchmarks/results/pipeline_<device>.json at the end of the session.

Environment knobs: RB_BENCH_THREADS (torch CPU threads; default: torch's), RB_BENCH_FULL=1
(on CPU, also run the shapes above 2**25 tokens, which take minutes), RB_BENCH_ROUNDS.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).parent / "results"
RECORDS: list[dict] = []
META: dict = {}

if os.environ.get("RB_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["RB_BENCH_THREADS"]))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} torch threads, " \
           f"{os.cpu_count()} cores visible)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn, dev: torch.device, *, rounds: int | None = None, warmup: int = 2,
            budget_s: float = 20.0) -> dict:
    """Median / p20 / p80 / min wall time in ms over `rounds` calls (fewer if a call is slow); the
    minimum is the least noisy estimate of the work itself on a shared machine (timeit's advice)."""
    rounds = rounds or int(os.environ.get("RB_BENCH_ROUNDS", "15"))
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    a = np.asarray(times)
    return {"median_ms": float(np.median(a)), "p20_ms": float(np.percentile(a, 20)),
            "p80_ms": float(np.percentile(a, 80)), "min_ms": float(a.min()), "rounds": len(times)}


def count_launches(fn, dev: torch.device) -> int | None:
    """Device work items (kernels, memsets, copies) that one call of `fn` launches; None off CUDA."""
    if dev.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(dev)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(dev)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def graph_replay(fn, dev: torch.device):
    """`fn` captured once in a CUDA graph; the returned callable replays it (no launch gaps)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def record(entry: dict) -> None:
    RECORDS.append(entry)


