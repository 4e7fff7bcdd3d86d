"""rollout_features throughput: the CPU reference at 16,384 x 256 (and the Triton kernel on CUDA).

    .venv/bin/pytest benchmarks/bench_features.py --benchmark-enable \
        --benchmark-json=benchmarks/results/features_<device>.json
"""

import platform

import pytest
import torch
import triton

from rollout_bandits.kernels import rollout_features_reference, rollout_features_triton
from rollout_bandits.synthetic import synthetic_batch


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _bytes_read(batch) -> int:
    """Bytes the function must read once: the three token streams, offsets and per-rollout fields."""
    t = sum(s.numel() * s.element_size() for s in (batch.token_logprobs, batch.token_entropy, batch.cur_logprobs)
            if s is not None)
    return t + batch.offsets.numel() * batch.offsets.element_size() + batch.num_rollouts * 4 * 6


def _record(benchmark, batch, device: str, impl: str) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        device=_device_name(device), torch=torch.__version__, triton=triton.__version__, impl=impl,
        rollouts=batch.num_rollouts, tokens=batch.num_tokens,
        rollouts_per_s=batch.num_rollouts / median, gbps=_bytes_read(batch) / median / 1e9,
    )


@pytest.mark.parametrize("mean_len", [256])
def test_reference_cpu(benchmark, mean_len):
    torch.manual_seed(0)
    batch = synthetic_batch(2048, 8, mean_len, seed=0)
    out = benchmark.pedantic(rollout_features_reference, args=(batch,), kwargs={"validate": False},
                             rounds=10, warmup_rounds=2)
    assert out.shape[0] == 16384
    _record(benchmark, batch, "cpu", "reference")


def _cuda_copy_gbps(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * 10 / (start.elapsed_time(end) / 1e3) / 1e9  # read + write


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_cuda(benchmark, impl):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    batch = synthetic_batch(2048, 8, 1024, seed=0, ragged=False, device="cuda")
    fn = rollout_features_triton if impl == "triton" else rollout_features_reference

    def run():
        out = fn(batch, validate=False)
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    _record(benchmark, batch, "cuda", impl)
    benchmark.extra_info["copy_gbps"] = _cuda_copy_gbps()
