"""rollout_features alone: on the CPU the fast CPU backend and the PyTorch reference at 16,384 x 256
tokens; on CUDA the Triton kernel against the reference (eager) and torch.compile of it at
16,384 x 1,024, with achieved GB/s over the device's copy bandwidth and the device work items
launched per call.

    .venv/bin/pytest benchmarks/bench_features.py   # -> benchmarks/results/features_<device>.json
"""

import pytest
import torch
from _helpers import count_launches, device, record, time_fn

from rollout_bandits.kernels import NUM_FEATURES, rollout_features, rollout_features_reference
from rollout_bandits.synthetic import synthetic_batch

GROUP = 8


def _bytes_moved(b) -> int:
    """Each input read once and the contexts written once: the floor any implementation pays."""
    streams = sum(s.numel() * s.element_size()
                  for s in (b.token_logprobs, b.token_entropy, b.cur_logprobs) if s is not None)
    n = b.num_rollouts
    per_rollout = b.offsets.numel() * b.offsets.element_size() + b.group_offsets.numel() * 8
    per_rollout += n * (4 + 4 + 4 + 4 + 1)  # reward, age, reuse_count, clip_ratio, truncated
    return streams + per_rollout + n * NUM_FEATURES * 4


@pytest.mark.parametrize("impl", ["cpu", "reference", "compile", "triton"])
def test_features(benchmark, copy_bandwidth, impl):
    dev = device()
    if impl in ("triton", "compile") and dev.type != "cuda":
        pytest.skip(f"the {impl} features path is benchmarked on CUDA only")
    if impl == "cpu" and dev.type != "cpu":
        pytest.skip("the CPU backend runs on CPU tensors only")
    n, mean_len = (16384, 256) if dev.type == "cpu" else (16384, 1024)
    b = synthetic_batch(n // GROUP, GROUP, mean_len, seed=0, device=dev)

    def fn():
        return rollout_features(b, backend=impl, validate=False)

    if impl == "compile":
        compiled = torch.compile(lambda b: rollout_features_reference(b, validate=False), dynamic=False)
        fn = lambda: compiled(b)  # noqa: E731

    fn()  # warm-up (compiles on the Triton path)
    t = time_fn(fn, dev)
    nbytes = _bytes_moved(b)
    floor_ms = nbytes / (copy_bandwidth["GBps"] * 1e9) * 1e3
    entry = {
        "suite": "features", "impl": impl, "N": n, "mean_len": mean_len, "tokens": b.num_tokens,
        "bytes": nbytes, **t, "GBps": nbytes / (t["median_ms"] * 1e-3) / 1e9,
        "rollouts_per_s": n / (t["median_ms"] * 1e-3), "floor_ms": floor_ms,
        "floor_ratio": t["median_ms"] / floor_ms, "launches": count_launches(fn, dev),
    }
    record(entry)
    benchmark.extra_info.update(entry)
    benchmark.pedantic(fn, rounds=1, iterations=1)
