"""Throughput of the fused scheduling pipeline (features -> neural-UCB score -> per-group top-k).

Per shape (N rollouts x mean length tokens, ragged lengths uniform in [1, 2L - 1], groups of 8,
k = 4 with keep-contrast, scorer H = 64 with a dense Zinv), four implementations in one run:
  triton  - `schedule(..., backend="triton")` on CUDA (3 Triton launches); GPU only;
  triton_graph - the same call captured once in a CUDA graph and replayed (possible because the
            launch path reads nothing back on the host); GPU only;
  eager   - `schedule(..., backend="cpu")` on the CPU (the numpy single-pass feature
            reductions), `backend="reference"` (the PyTorch reference) on CUDA;
  compile - torch.compile of the same reference pipeline (traces the torch formulation).
All run with validate=False (a trusted producer: the checks sync the GPU and read every stream).
"launches" counts the device work items of one call (torch.profiler, CUDA only).
GB/s counts the bytes the pipeline must move once: the token streams, offsets and per-rollout
fields read, the contexts / scores / mask written. "floor" = those bytes at the copy bandwidth
measured in the same run.

Run: `pytest benchmarks/` (RB_BENCH_THREADS=1 for a quiet single-thread CPU figure).
"""

from __future__ import annotations

import os

import pytest
import torch
from _helpers import count_launches, device, graph_replay, record, time_fn

from rollout_bandits import ScorerWeights, schedule
from rollout_bandits.kernels import NUM_FEATURES
from rollout_bandits.synthetic import synthetic_batch

NS = [1024, 16384, 131072]
LENS = [256, 1024]
HIDDEN = 64
GROUP = 8
K = 4
IMPLS = ["triton", "triton_graph", "eager", "compile"]

_BATCHES: dict = {}
_COMPILED: dict = {}


def _batch(n: int, mean_len: int):
    key = (n, mean_len)
    if key not in _BATCHES:
        _BATCHES.clear()  # one shape in memory at a time
        _BATCHES[key] = synthetic_batch(num_groups=n // GROUP, group_size=GROUP, mean_len=mean_len,
                                        seed=0, device=device())
    return _BATCHES[key]


def _bytes_moved(b, n_selected: int) -> int:
    streams = sum(s.numel() * s.element_size()
                  for s in (b.token_logprobs, b.token_entropy, b.cur_logprobs) if s is not None)
    n = b.num_rollouts
    per_rollout = b.offsets.numel() * b.offsets.element_size() + b.group_offsets.numel() * 8
    per_rollout += n * (4 + 4 + 4 + 4 + 1)  # reward, age, reuse_count, clip_ratio, truncated
    out = n * NUM_FEATURES * 4 + 3 * n * 4 + n + 8 * n_selected  # contexts, score/mean/bonus, mask, indices
    return streams + per_rollout + out


def _pipeline(impl: str, b, w):
    backend = "triton" if impl.startswith("triton") else ("cpu" if device().type == "cpu" else "reference")

    def run():
        return schedule(b, w, k=K, backend=backend, validate=False)

    if impl == "triton_graph":
        run()  # compiles before the capture
        return graph_replay(run, device())
    if impl != "compile":
        return run
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(
            lambda b, w: schedule(b, w, k=K, backend="reference", validate=False), dynamic=False)
    fn = _COMPILED["fn"]
    return lambda: fn(b, w)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mean_len", LENS, ids=lambda v: f"L{v}")
@pytest.mark.parametrize("n", NS, ids=lambda v: f"N{v}")
def test_pipeline(benchmark, copy_bandwidth, n, mean_len, impl):
    dev = device()
    if impl.startswith("triton") and dev.type != "cuda":
        pytest.skip("the Triton pipeline is benchmarked on CUDA only")
    if dev.type == "cpu" and n * mean_len > 2**25 and os.environ.get("RB_BENCH_FULL") != "1":
        pytest.skip("above 2**25 tokens on CPU: set RB_BENCH_FULL=1")
    b = _batch(n, mean_len)
    w = ScorerWeights.random(NUM_FEATURES, HIDDEN, seed=0, device=dev)
    w.w1 = w.w1 * 0.5
    fn = _pipeline(impl, b, w)
    fn()  # warm-up (compiles)
    t = time_fn(fn, dev)
    n_selected = schedule(b, w, k=K, backend="reference" if dev.type == "cuda" else "cpu",
                          validate=False).num_selected
    nbytes = _bytes_moved(b, n_selected)
    floor_ms = nbytes / (copy_bandwidth["GBps"] * 1e9) * 1e3
    entry = {
        "impl": impl, "N": n, "mean_len": mean_len, "tokens": b.num_tokens, "hidden": HIDDEN,
        "group_size": GROUP, "k": K, "bytes": nbytes, **t,
        "GBps": nbytes / (t["median_ms"] * 1e-3) / 1e9,
        "rollouts_per_s": n / (t["median_ms"] * 1e-3),
        "floor_ms": floor_ms, "floor_ratio": t["median_ms"] / floor_ms,
        "launches": count_launches(fn, dev),
    }
    record(entry)
    benchmark.extra_info.update(entry)
    benchmark.pedantic(fn, rounds=1, iterations=1)
