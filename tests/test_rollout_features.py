"""rollout_features: the float64 oracle against hand-computed values, every path against the oracle.

Paths: the Triton kernel (the interpreter on the CPU, so shapes stay small), the fast CPU backend
and the vectorized PyTorch reference. Shapes are drawn fresh each run (the seed is in the failure
message); tolerances come from float32's rounding (tests/_oracle_tol.py). The adversarial shapes of
issue 17 are in tests/test_numerics.py.
"""

import importlib
import math
import random

import pytest
import torch
from _oracle_tol import assert_matches_oracle

from rollout_bandits import RolloutBatch
from rollout_bandits.kernels import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    FeatureConfig,
    rollout_features,
    rollout_features_cpu,
    rollout_features_reference,
    rollout_features_triton,
)
from rollout_bandits.kernels.naive import rollout_features_naive
from rollout_bandits.synthetic import synthetic_batch
from rollout_bandits.validation import resolve_backend

F = FEATURE_INDEX
# The package re-exports the function under the module's name: fetch the module itself.
rf_module = importlib.import_module("rollout_bandits.kernels.rollout_features")
rf_cpu_module = importlib.import_module("rollout_bandits.kernels.rollout_features_cpu")
PATHS = ["cpu", "reference", "triton"]
IMPLS = {"naive": lambda b, cfg=None: rollout_features_naive(b, cfg).float(), "cpu": rollout_features_cpu,
         "reference": rollout_features_reference, "triton": rollout_features_triton}


def test_feature_names_cover_the_papers_seven():
    for name in ("reward", "age", "reuse_count", "entropy_mean", "clip_ratio", "length_frac", "truncated"):
        assert name in FEATURE_NAMES
    assert NUM_FEATURES == len(set(FEATURE_NAMES))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_hand_computed_values(impl):
    lp = torch.tensor([-1.0, -3.0, -2.0, -0.5, -4.0, -0.1, -0.2, -0.3, -0.4, -0.6, -0.7, -0.8])
    b = RolloutBatch(
        token_logprobs=lp,
        offsets=torch.tensor([0, 3, 4, 12]),
        reward=torch.tensor([1.0, 0.0, 1.0]),
        group_offsets=torch.tensor([0, 2, 3]),
        token_entropy=torch.arange(12, dtype=torch.float32),
        cur_logprobs=lp + torch.tensor([0.5, -0.5, 0, 0, 1, 0, 0, 0, 0, 0, 0, -2]),
        age=torch.tensor([0.0, 2.0, 5.0]),
        reuse_count=torch.tensor([0.0, 1.0, 3.0]),
        truncated=torch.tensor([False, False, True]),
        clip_ratio=torch.tensor([0.0, 0.25, 0.5]),
        max_response_len=8,
    )
    x = IMPLS[impl](b, FeatureConfig(low_quantile=0.5))
    assert x.shape == (3, NUM_FEATURES) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, F["reward"]], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(x[:, F["group_reward_mean"]], torch.tensor([0.5, 0.5, 1.0]))
    torch.testing.assert_close(x[:, F["group_reward_std"]], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(x[:, F["advantage"]], torch.tensor([0.5, -0.5, 0.0]) / (0.5 + 1e-6) *
                               torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(x[:, F["logp_mean"]], torch.tensor([-2.0, -0.5, -7.1 / 8]))
    torch.testing.assert_close(x[:, F["logp_min"]], torch.tensor([-3.0, -0.5, -4.0]))
    # nearest rank, q = 0.5: sorted[floor(0.5 * (n - 1))]
    torch.testing.assert_close(x[:, F["logp_low_quantile"]], torch.tensor([-2.0, -0.5, -0.6]))
    torch.testing.assert_close(x[:, F["entropy_mean"]], torch.tensor([1.0, 3.0, 7.5]))
    torch.testing.assert_close(x[:, F["log_ratio_abs_mean"]], torch.tensor([1.0 / 3, 0.0, 3.0 / 8]))
    torch.testing.assert_close(x[:, F["log_ratio_abs_max"]], torch.tensor([0.5, 0.0, 2.0]))
    torch.testing.assert_close(x[:, F["length_frac"]], torch.tensor([3 / 8, 1 / 8, 1.0]))
    torch.testing.assert_close(x[:, F["truncated"]], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(x[:, F["age"]], torch.tensor([0.0, 2.0, 5.0]))
    torch.testing.assert_close(x[:, F["reuse_count"]], torch.tensor([0.0, 1.0, 3.0]))
    torch.testing.assert_close(x[:, F["clip_ratio"]], torch.tensor([0.0, 0.25, 0.5]))


@pytest.mark.parametrize("path", PATHS)
def test_quantile_is_the_nearest_rank_definition(path):
    b = synthetic_batch(3, (1, 6), 30, seed=11)
    for q in (0.0, 0.1, 0.37, 1.0):
        x = rollout_features(b, FeatureConfig(low_quantile=q), backend=path)
        for i in range(b.num_rollouts):
            s, e = int(b.offsets[i]), int(b.offsets[i + 1])
            row = b.token_logprobs[s:e].sort().values
            assert x[i, F["logp_low_quantile"]] == row[math.floor(q * (e - s - 1))]


@pytest.mark.parametrize("path", PATHS)
def test_missing_optional_streams_give_zero_features(path):
    b = synthetic_batch(2, 3, 5, seed=0, with_entropy=False, with_cur=False)
    x = rollout_features(b, backend=path)
    for name in ("entropy_mean", "log_ratio_abs_mean", "log_ratio_abs_max"):
        assert bool((x[:, F[name]] == 0).all())


@pytest.mark.parametrize("path", PATHS)
def test_masked_nonfinite_tokens_are_left_out(path):
    lp = torch.tensor([-1.0, float("nan"), -3.0, float("-inf"), float("nan")])
    b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3, 5]), reward=torch.zeros(2),
                     group_offsets=torch.tensor([0, 2]), mask_nonfinite=True)
    x = rollout_features(b, backend=path)
    assert x[0, F["logp_mean"]] == -2.0 and x[0, F["logp_min"]] == -3.0
    assert x[1, F["logp_mean"]] == 0.0 and x[1, F["logp_min"]] == 0.0  # no finite token
    with pytest.raises(ValueError, match="mask_nonfinite"):
        rollout_features(RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3, 5]), reward=torch.zeros(2),
                                      group_offsets=torch.tensor([0, 2])), backend=path)


def test_backend_selection():
    b = synthetic_batch(2, 3, 5, seed=0)
    assert torch.equal(rollout_features(b), rollout_features_cpu(b))  # auto on CPU tensors: the CPU backend
    assert resolve_backend("auto", "cpu", "x") == "cpu"
    assert resolve_backend("auto", "cuda:0", "x") == "triton"
    assert resolve_backend("auto", "meta", "x") == "reference"
    with pytest.raises(ValueError, match=r"rollout_features\.backend: found 'cuda-graph', expected auto \| triton"):
        rollout_features(b, backend="cuda-graph")
    with pytest.raises(ValueError, match=r"x\.backend: found 'cpu' with tensors on cuda:0, expected"):
        resolve_backend("cpu", "cuda:0", "x")


def test_feature_config_validation():
    with pytest.raises(ValueError, match="low_quantile"):
        FeatureConfig(low_quantile=1.5)
    with pytest.raises(ValueError, match="std_eps"):
        FeatureConfig(std_eps=0.0)


# ----------------------------------------------------------------- parity
def _fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def _random_batch(kind: str, seed: int, device: str = "cpu") -> RolloutBatch:
    rng = random.Random(seed)
    if kind == "length_one":
        return synthetic_batch(rng.randint(2, 4), (1, 4), 1, seed=seed, ragged=False, device=device)
    if kind == "group_of_one":
        return synthetic_batch(rng.randint(3, 6), 1, rng.randint(2, 40), seed=seed, device=device)
    if kind == "very_unequal":
        b = synthetic_batch(2, (2, 5), 4, seed=seed)
        long_len = rng.randint(300, 700)
        lengths = b.lengths.clone()
        lengths[rng.randrange(b.num_rollouts)] = long_len
        g = torch.Generator().manual_seed(seed)
        off = torch.zeros(b.num_rollouts + 1, dtype=torch.int64)
        off[1:] = torch.cumsum(lengths, 0)
        t = int(off[-1])
        return RolloutBatch(token_logprobs=-torch.rand(t, generator=g) * 5, offsets=off, reward=b.reward,
                            group_offsets=b.group_offsets, token_entropy=torch.rand(t, generator=g),
                            cur_logprobs=-torch.rand(t, generator=g), truncated=b.truncated).to(device)
    if kind == "bf16":
        return synthetic_batch(rng.randint(2, 5), (1, 8), rng.randint(3, 50), seed=seed,
                               dtype=torch.bfloat16, device=device)
    if kind == "fp16":
        return synthetic_batch(rng.randint(2, 5), (1, 8), rng.randint(3, 50), seed=seed,
                               dtype=torch.float16, device=device)
    if kind == "int32_offsets_no_cur":
        b = synthetic_batch(rng.randint(2, 5), (1, 8), rng.randint(3, 50), seed=seed, with_cur=False)
        b.offsets = b.offsets.to(torch.int32)
        b.group_offsets = b.group_offsets.to(torch.int32)
        return b.to(device)
    if kind == "masked_nonfinite":
        b = synthetic_batch(rng.randint(2, 4), (1, 6), rng.randint(3, 30), seed=seed)
        g = torch.Generator().manual_seed(seed)
        for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
            s = getattr(b, name)
            bad = torch.rand(s.numel(), generator=g) < 0.2
            vals = torch.tensor([float("nan"), float("inf"), float("-inf")])[
                torch.randint(0, 3, (s.numel(),), generator=g)]
            setattr(b, name, torch.where(bad, vals, s))
        b.mask_nonfinite = True
        return b.to(device)
    if kind == "ragged":
        return synthetic_batch(rng.randint(2, 6), (1, 9), rng.randint(2, 60), seed=seed, device=device)
    raise AssertionError(kind)


KINDS = ["ragged", "length_one", "group_of_one", "very_unequal", "bf16", "fp16",
         "int32_offsets_no_cur", "masked_nonfinite"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_paths_match_oracle(kind, path):
    seed = _fresh_seed()
    b = _random_batch(kind, seed)
    got = rollout_features(b, backend=path)
    assert bool(torch.isfinite(got).all()), f"unwritten (NaN) outputs, seed={seed} kind={kind}"
    assert_matches_oracle(got, b, label=f"{kind}/{path} seed={seed}")


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_cpu_backend_without_numba_matches_oracle(monkeypatch, kind):
    """The numpy fallback of the CPU backend (where the `fast-cpu` extra is not installed)."""
    monkeypatch.setattr(rf_cpu_module, "numba", None)
    seed = _fresh_seed()
    b = _random_batch(kind, seed)
    assert_matches_oracle(rollout_features(b, backend="cpu"), b, label=f"{kind}/cpu-numpy seed={seed}")


def test_triton_multi_chunk_quantile(monkeypatch):
    """Rollouts longer than the kernel's token block take the chunked bisection path."""
    monkeypatch.setattr(rf_module, "SHORT_BLOCK", 16)
    monkeypatch.setattr(rf_module, "LONG_BLOCK", 16)
    seed = _fresh_seed()
    b = _random_batch("very_unequal", seed)
    for q in (0.1, 0.9):
        cfg = FeatureConfig(low_quantile=q)
        assert_matches_oracle(rollout_features_triton(b, cfg), b, cfg, f"multi_chunk seed={seed} q={q}")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_cuda_matches_oracle(kind):
    seed = _fresh_seed()
    b = _random_batch(kind, seed, device="cuda")
    assert_matches_oracle(rollout_features(b), b, label=f"{kind}/cuda seed={seed}")


@pytest.mark.gpu
def test_cuda_large_ragged_bf16():
    seed = _fresh_seed()
    b = synthetic_batch(512, (1, 16), 300, seed=seed, dtype=torch.bfloat16, device="cuda")
    assert_matches_oracle(rollout_features(b), b, label=f"large_bf16 seed={seed}")


# ------------------------------------------------------ rollouts with 0 tokens
def _with_lengths(lengths, group_sizes, seed, **kw) -> RolloutBatch:
    """A batch built directly (validate() rejects 0-token rollouts unless the batch allows them)."""
    g = torch.Generator().manual_seed(seed)
    off = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    goff = torch.zeros(len(group_sizes) + 1, dtype=torch.int64)
    goff[1:] = torch.cumsum(torch.tensor(group_sizes, dtype=torch.int64), 0)
    t, n = int(off[-1]), len(lengths)
    lp = -torch.rand(t, generator=g) * 4
    return RolloutBatch(token_logprobs=lp, offsets=off, group_offsets=goff, reward=torch.rand(n, generator=g),
                        token_entropy=torch.rand(t, generator=g), cur_logprobs=lp + 0.1 * torch.randn(t, generator=g),
                        **kw)


EMPTY = {
    "first-last-and-consecutive": ([0, 5, 0, 0, 3, 7, 0], [3, 4]),
    "a-group-of-empties": ([4, 2, 0, 0, 0, 6], [2, 3, 1]),
    "all-empty": ([0, 0, 0], [1, 2]),
    "one-empty": ([0], [1]),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", list(EMPTY))
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask_nonfinite"])
def test_length_zero_rollouts(layout, path, masked):
    lengths, sizes = EMPTY[layout]
    b = _with_lengths(lengths, sizes, seed=len(layout), mask_nonfinite=masked)
    if masked and b.num_tokens:
        b.token_logprobs[::3] = float("nan")
    for max_len in (None, 16):
        b.max_response_len = max_len
        x = rollout_features(b, backend=path, validate=False)
        empty = torch.tensor(lengths) == 0
        token_stats = [F[n] for n in ("logp_mean", "logp_min", "logp_low_quantile", "entropy_mean",
                                      "log_ratio_abs_mean", "log_ratio_abs_max", "length_frac")]
        assert torch.equal(x[empty][:, token_stats], torch.zeros(int(empty.sum()), len(token_stats)))
        assert_matches_oracle(x, b, label=f"{layout}/{path}/max_len={max_len}")


@pytest.mark.parametrize("path", PATHS)
def test_batch_of_zero_rollouts(path):
    z = torch.zeros(0)
    b = RolloutBatch(token_logprobs=z, offsets=torch.zeros(1, dtype=torch.int64), reward=z,
                     group_offsets=torch.zeros(1, dtype=torch.int64))
    x = rollout_features(b, backend=path, validate=False)
    assert x.shape == (0, NUM_FEATURES) and x.dtype == torch.float32
    assert rollout_features_naive(b).shape == (0, NUM_FEATURES)
