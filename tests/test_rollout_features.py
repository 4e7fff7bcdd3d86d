"""rollout_features: the reference against hand-computed values, the Triton kernel against the reference.

Parity shapes are drawn fresh each run (the seed is in the failure message);
on the CPU the kernel runs in the Triton interpreter, so shapes stay small.
"""

import importlib
import math
import random

import pytest
import torch

from rollout_bandits import RolloutBatch
from rollout_bandits.kernels import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    FeatureConfig,
    rollout_features,
    rollout_features_reference,
    rollout_features_triton,
)
from rollout_bandits.synthetic import synthetic_batch

F = FEATURE_INDEX
# The package re-exports the function under the module's name: fetch the module itself.
rf_module = importlib.import_module("rollout_bandits.kernels.rollout_features")


def test_feature_names_cover_the_papers_seven():
    for name in ("reward", "age", "reuse_count", "entropy_mean", "clip_ratio", "length_frac", "truncated"):
        assert name in FEATURE_NAMES
    assert NUM_FEATURES == len(set(FEATURE_NAMES))


def test_reference_matches_hand_computed_values():
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
    x = rollout_features_reference(b, FeatureConfig(low_quantile=0.5))
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


def test_quantile_is_the_nearest_rank_definition():
    b = synthetic_batch(3, (1, 6), 30, seed=11)
    for q in (0.0, 0.1, 0.37, 1.0):
        x = rollout_features_reference(b, FeatureConfig(low_quantile=q))
        for i in range(b.num_rollouts):
            s, e = int(b.offsets[i]), int(b.offsets[i + 1])
            row = b.token_logprobs[s:e].sort().values
            assert x[i, F["logp_low_quantile"]] == row[math.floor(q * (e - s - 1))]


def test_missing_optional_streams_give_zero_features():
    b = synthetic_batch(2, 3, 5, seed=0, with_entropy=False, with_cur=False)
    x = rollout_features_reference(b)
    for name in ("entropy_mean", "log_ratio_abs_mean", "log_ratio_abs_max"):
        assert bool((x[:, F[name]] == 0).all())


def test_masked_nonfinite_tokens_are_left_out():
    lp = torch.tensor([-1.0, float("nan"), -3.0, float("-inf"), float("nan")])
    b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3, 5]), reward=torch.zeros(2),
                     group_offsets=torch.tensor([0, 2]), mask_nonfinite=True)
    x = rollout_features_reference(b)
    assert x[0, F["logp_mean"]] == -2.0 and x[0, F["logp_min"]] == -3.0
    assert x[1, F["logp_mean"]] == 0.0 and x[1, F["logp_min"]] == 0.0  # no finite token
    with pytest.raises(ValueError, match="mask_nonfinite"):
        rollout_features_reference(RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3, 5]),
                                                reward=torch.zeros(2), group_offsets=torch.tensor([0, 2])))


def test_dispatcher_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        rollout_features(synthetic_batch(1, 2, 3), backend="cuda-graph")


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


def _assert_parity(got: torch.Tensor, want: torch.Tensor, seed: int, kind: str) -> None:
    assert got.shape == want.shape and got.dtype == torch.float32
    assert bool(torch.isfinite(got).all()), f"kernel left unwritten (NaN) outputs, seed={seed} kind={kind}"
    for j, name in enumerate(FEATURE_NAMES):
        torch.testing.assert_close(got[:, j].cpu(), want[:, j].cpu(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m, n=name: f"{n} (seed={seed}, kind={kind}): {m}")


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_triton_matches_reference_interpreted(kind):
    seed = _fresh_seed()
    b = _random_batch(kind, seed)
    _assert_parity(rollout_features_triton(b), rollout_features_reference(b), seed, kind)


def test_triton_multi_chunk_quantile(monkeypatch):
    """Rollouts longer than the in-register limit take the chunked bisection path."""
    monkeypatch.setattr(rf_module, "MAX_ONE_CHUNK", 64)
    seed = _fresh_seed()
    b = _random_batch("very_unequal", seed)
    for q in (0.1, 0.9):
        cfg = FeatureConfig(low_quantile=q)
        _assert_parity(rollout_features_triton(b, cfg), rollout_features_reference(b, cfg), seed, "multi_chunk")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_triton_matches_reference_cuda(kind):
    seed = _fresh_seed()
    b = _random_batch(kind, seed, device="cuda")
    _assert_parity(rollout_features(b), rollout_features_reference(b), seed, kind)


@pytest.mark.gpu
def test_cuda_large_ragged_parity():
    seed = _fresh_seed()
    b = synthetic_batch(512, (1, 16), 300, seed=seed, dtype=torch.bfloat16, device="cuda")
    _assert_parity(rollout_features(b), rollout_features_reference(b), seed, "large_bf16")
