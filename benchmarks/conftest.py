"""Benchmark session plumbing: the copy-bandwidth fixture and the JSON writer (see _helpers.py)."""

from __future__ import annotations

import json
import os
import platform
import re
import time

import numpy as np
import pytest
import torch
from _helpers import META, RECORDS, RESULTS_DIR, device, device_name, time_fn

from rollout_bandits.kernels._triton import triton


@pytest.fixture(scope="session")
def copy_bandwidth() -> dict:
    """The device's copy bandwidth (read + write bytes per second of dst.copy_(src))."""
    dev = device()
    nbytes = (512 if dev.type == "cuda" else 128) * 2**20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), dev, rounds=20)
    gbps = 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9
    META["copy_bandwidth_GBps"] = gbps
    META["copy_bandwidth_bytes"] = nbytes
    return {"GBps": gbps, **t}


def _speedups(records: list[dict]) -> None:
    by_shape: dict[tuple, dict] = {}
    for r in records:
        if "N" not in r:  # the learners suite has no shapes to compare across
            continue
        by_shape.setdefault((r["N"], r["mean_len"]), {})[r["impl"]] = r
    for shape in by_shape.values():
        eager = shape.get("eager") or shape.get("reference")
        comp = shape.get("compile")
        for r in shape.values():
            if eager:
                r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
            if comp:
                r["speedup_vs_compile"] = comp["median_ms"] / r["median_ms"]


def pytest_sessionfinish(session, exitstatus):
    """One JSON per suite (pipeline, features) and device under benchmarks/results/."""
    if not RECORDS:
        return
    dev = device()
    suites: dict[str, list[dict]] = {}
    for r in RECORDS:
        suites.setdefault(r.get("suite", "pipeline"), []).append(r)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for suite, records in suites.items():
        _speedups(records)
        out = {
            "suite": suite,
            "device": device_name(dev),
            "device_type": dev.type,
            "torch": torch.__version__,
            "triton": getattr(triton, "__version__", None),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **META,
            "results": records,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", out["device"].split(" (")[0]).strip("-").lower()
        path = RESULTS_DIR / f"{suite}_{dev.type}_{slug}_t{torch.get_num_threads()}.json"
        path.write_text(json.dumps(out, indent=2))
        if tr is None:
            continue
        tr.write_line(f"\nbenchmark results written to {path}")
        for r in records:
            if suite == "learners":
                ratio = r.get("ratio_to_neural_ucb_round")
                tr.write_line(f"  {r['impl']:14s} {r['what']:8s} {r['median_ms']:8.2f} ms "
                              f"(p20 {r['p20_ms']:.2f}, p80 {r['p80_ms']:.2f})"
                              + (f"  x{ratio['median']:.2f} NeuralUCB's round" if ratio else ""))
                continue
            tr.write_line(
                f"  {r['impl']:9s} N={r['N']:>7d} L={r['mean_len']:>5d}  {r['median_ms']:9.2f} ms  "
                f"{r['rollouts_per_s'] / 1e6:7.3f} M rollouts/s  {r['GBps']:7.2f} GB/s  "
                f"x{r['floor_ratio']:.2f} of floor"
                + (f"  speedup vs eager {r['speedup_vs_eager']:.2f}" if "speedup_vs_eager" in r else "")
                + (f"  vs compile {r['speedup_vs_compile']:.2f}" if "speedup_vs_compile" in r else ""))
