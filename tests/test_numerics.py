"""Issue 17: every features path against the float64 oracle (kernels/naive.py) on adversarial shapes.

Paths: "cpu" (numpy backend), "reference" (vectorized PyTorch), "triton" (the kernel: the
interpreter on the CPU, so its shapes are smaller; CUDA where present). Tolerances come from
float32's unit roundoff (tests/_oracle_tol.py), not from what passes. Each numbered item of the
issue has its own test below the oracle suite.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from _oracle_tol import assert_matches_oracle

from rollout_bandits import RolloutBatch, ScorerWeights, schedule
from rollout_bandits.kernels import FEATURE_INDEX, NUM_FEATURES, FeatureConfig, rollout_features
from rollout_bandits.kernels.naive import rollout_features_naive

F = FEATURE_INDEX
HAS_CUDA = torch.cuda.is_available()
PATHS = ["cpu", "reference", "triton"] + (["triton-cuda"] if HAS_CUDA else [])
BF16 = torch.finfo(torch.bfloat16)


def _features(batch: RolloutBatch, path: str, cfg: FeatureConfig | None = None, validate: bool = True):
    if path == "triton-cuda":
        return rollout_features(batch.to("cuda"), cfg, backend="triton", validate=validate).cpu()
    return rollout_features(batch, cfg, backend=path, validate=validate)


def _batch(lengths, group_sizes, g: torch.Generator, *, lp_scale=5.0, lp_shift=0.0, dtype=torch.float32,
           rewards=None, index_dtype=torch.int64, **kw) -> RolloutBatch:
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    off = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lengths, 0)
    goff = torch.zeros(len(group_sizes) + 1, dtype=torch.int64)
    goff[1:] = torch.cumsum(torch.as_tensor(group_sizes), 0)
    t, n = int(off[-1]), lengths.numel()
    lp = (lp_shift - torch.rand(t, generator=g, dtype=torch.float64) * lp_scale)
    return RolloutBatch(
        token_logprobs=lp.to(dtype), offsets=off.to(index_dtype), group_offsets=goff.to(index_dtype),
        reward=rewards if rewards is not None else torch.randn(n, generator=g, dtype=torch.float64).float() * 3,
        token_entropy=(torch.rand(t, generator=g) * 4).to(dtype),
        cur_logprobs=(lp + torch.randn(t, generator=g, dtype=torch.float64) * 0.3).to(dtype),
        age=torch.randint(0, 9, (n,), generator=g).float(), reuse_count=torch.randint(0, 3, (n,), generator=g).float(),
        truncated=torch.rand(n, generator=g) < 0.3, clip_ratio=torch.rand(n, generator=g), **kw)


def _ragged_groups(n: int, g: torch.Generator, max_size: int = 6) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(int(torch.randint(1, max_size + 1, (1,), generator=g)), n - sum(sizes)))
    return sizes


def _lengths(n: int, g: torch.Generator, hi: int = 40, lo: int = 1) -> list[int]:
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()


# Each builder: (generator, small) -> (batch, validate). `small` = interpreter sizes.
def _long_beside_short(g, small):
    long = 5_000 if small else 200_000  # longer than the kernel's token block: its chunked path
    return _batch([1, long, 1, 3, 1], [2, 3], g, lp_shift=-1e4), True


def _group_of_1000(g, small):
    n = 24 if small else 1000
    rewards = (1e3 + torch.rand(n, generator=g) * 100).float()  # continuous, far from 0
    return _batch(_lengths(n, g, 12), [n], g, rewards=rewards), True


def _n(count):
    def build(g, small):
        n = min(count, 24) if small else count
        return _batch(_lengths(n, g), _ragged_groups(n, g), g), True
    return build


def _groups_of_one(g, small):
    return _batch(_lengths(9, g), [1] * 9, g), True


def _ties_signed_zeros(g, small):
    b = _batch(_lengths(12, g, 30), _ragged_groups(12, g), g)
    pick = lambda vals, m: torch.tensor(vals)[torch.randint(0, len(vals), (m,), generator=g)]  # noqa: E731
    b.token_logprobs = pick([0.0, -0.0, -1.0, -0.5, -1.0], b.num_tokens)
    b.cur_logprobs = pick([0.0, -0.0, -0.5], b.num_tokens)
    b.reward = pick([0.0, -0.0, 1.0], b.num_rollouts)
    return b, True


def _masked_nonfinite(g, small):
    b = _batch(_lengths(14, g, 25), _ragged_groups(14, g), g, mask_nonfinite=True)
    bad = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for name in ("token_logprobs", "token_entropy", "cur_logprobs"):
        s = getattr(b, name)
        hit = torch.rand(s.numel(), generator=g) < 0.25
        setattr(b, name, torch.where(hit, bad[torch.randint(0, 3, (s.numel(),), generator=g)], s))
    s, e = int(b.offsets[3]), int(b.offsets[4])
    b.token_logprobs[s:e] = float("nan")  # a rollout with no counted token
    return b, True


def _half_extremes(dtype):
    def build(g, small):
        b = _batch(_lengths(10, g, 20), _ragged_groups(10, g), g, dtype=dtype)
        fin = torch.finfo(dtype)
        ext = torch.tensor([fin.min, -fin.max / 2, fin.min / 3, -fin.tiny, -1.0, fin.max], dtype=dtype)
        for name in ("token_logprobs", "cur_logprobs", "token_entropy"):
            s = getattr(b, name)
            hit = torch.rand(s.numel(), generator=g) < 0.5
            setattr(b, name, torch.where(hit, ext[torch.randint(0, ext.numel(), (s.numel(),), generator=g)], s))
        return b, dtype != torch.bfloat16  # bf16's extremes are beyond validation.MAX_MAGNITUDE
    return build


def _int32_offsets(g, small):
    return _batch(_lengths(11, g), _ragged_groups(11, g), g, index_dtype=torch.int32), True


SHAPES = {
    "long-beside-short": _long_beside_short, "group-of-1000": _group_of_1000, "N1": _n(1), "N7": _n(7),
    "N257": _n(257), "N1025": _n(1025), "groups-of-one": _groups_of_one, "ties-signed-zeros": _ties_signed_zeros,
    "masked-nonfinite": _masked_nonfinite, "bf16-extremes": _half_extremes(torch.bfloat16),
    "fp16-extremes": _half_extremes(torch.float16), "int32-offsets": _int32_offsets,
}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # +-inf features, on purpose
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_features_match_float64_oracle(shape, path):
    seed = random.SystemRandom().randrange(2**31)
    small = path == "triton"
    if small and shape in ("N257", "N1025"):
        pytest.skip("same as N7 at interpreter size")
    batch, validate = SHAPES[shape](torch.Generator().manual_seed(seed), small)
    for q in (0.65,) if small else (0.1, 0.65):
        cfg = FeatureConfig(low_quantile=q)
        assert_matches_oracle(_features(batch, path, cfg, validate), batch, cfg, f"{shape}/{path} seed={seed} q={q}")


# ------------------------------------------------------------ the five items
@pytest.mark.parametrize("path", PATHS)
def test_item1_all_equal_groups_have_exactly_zero_std_and_advantage(path):
    """7 x 100.1 (not a binary fraction) left a float32 residue that / (std + eps) made 0.88."""
    g = torch.Generator().manual_seed(1)
    reward = torch.cat([torch.full((7,), 100.1), torch.full((3,), -1e-3), torch.tensor([2.5, 2.5 + 2**-20]),
                        torch.full((5,), 0.3)]).double()
    dtypes = (torch.float64, torch.float32) + ((torch.bfloat16,) if path != "triton" else ())
    for rw in (reward.to(d) for d in dtypes):
        b = _batch([3] * 17, [7, 3, 2, 5], g, rewards=rw)
        x = _features(b, path)
        equal = torch.ones(17, dtype=torch.bool)
        equal[10:12] = False
        assert torch.equal(x[equal, F["group_reward_std"]], torch.zeros(15)), path
        assert torch.equal(x[equal, F["advantage"]], torch.zeros(15)), path
        assert torch.equal(x[equal, F["group_reward_mean"]], rw[equal].float()), path
        assert_matches_oracle(x, b, label=f"item1/{path}/{rw.dtype}")


@pytest.mark.parametrize("path", PATHS)
def test_item2_bf16_near_its_minimum_does_not_overflow_the_sums(path):
    lp = torch.tensor([BF16.min, BF16.min, -1.0, -1.0, BF16.min], dtype=torch.bfloat16)
    b = RolloutBatch(token_logprobs=lp, offsets=torch.tensor([0, 3, 5]), reward=torch.zeros(2),
                     group_offsets=torch.tensor([0, 2]), token_entropy=-lp, cur_logprobs=lp)
    x = _features(b, path, validate=False)
    exact = (2 * float(BF16.min) - 1.0) / 3  # fits float32
    assert float(x[0, F["logp_mean"]]) == float(torch.tensor(exact, dtype=torch.float32))
    assert float(x[0, F["entropy_mean"]]) == float(torch.tensor(-exact, dtype=torch.float32))
    assert_matches_oracle(x, b, label=f"item2/{path}")
    # With validation these values are an error naming the input field, not a NaN score later.
    with pytest.raises(ValueError, match=r"RolloutBatch\.token_logprobs: found -3\.38953e\+38 at token 0"):
        _features(b, path)


@pytest.mark.parametrize("path", PATHS)
def test_item3_long_rollouts_are_summed_without_order_error(path):
    """A 200k-token rollout at about -1e4 was 10.5 off when summed in order in float32."""
    g = torch.Generator().manual_seed(3)
    n = 8_000 if path == "triton" else 200_000
    b = _batch([n, 1], [2], g, lp_shift=-1e4, lp_scale=1.0, mask_nonfinite=True)
    x = _features(b, path)
    want = rollout_features_naive(b)
    err = abs(float(x[0, F["logp_mean"]]) - float(want[0, F["logp_mean"]]))
    assert err <= 2.0 ** -24 * 1e4 * 1.001, err  # within float32's rounding of the exact mean
    assert_matches_oracle(x, b, label=f"item3/{path}")


@pytest.mark.parametrize("path", PATHS)
def test_item4_quantile_rank_is_exact_for_decimal_q(path):
    """q = 0.65 of n = 181 is rank floor(0.65 * 180) = 117, not 116 (0.65 rounded to float32)."""
    lens = [181, 341, 361, 381] if path != "reference" else [181, 341, 361, 381, 7, 21]
    g = torch.Generator().manual_seed(4)
    b = _batch(lens, [len(lens)], g)
    b.token_logprobs = -torch.cat([torch.randperm(m, generator=g) for m in lens]).float()  # distinct values
    for q in ("0.65", "0.35", "0.15", "0.05"):
        x = _features(b, path, FeatureConfig(low_quantile=float(q)))
        for i, m in enumerate(lens):
            rank = int(Fraction(q) * (m - 1))  # exact rational floor
            s = int(b.offsets[i])
            assert float(x[i, F["logp_low_quantile"]]) == float(b.token_logprobs[s:s + m].sort().values[rank]), (q, m)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("path", PATHS)
def test_item5_one_masking_rule_for_the_log_ratio(path):
    """A counted token (finite log-prob and current log-prob) stays in the |log ratio| statistics even
    when the ratio overflows float32: the kernel kept it, the reference dropped it."""
    lp = torch.tensor([BF16.min, -1.0, -2.0, float("nan"), -3.0], dtype=torch.bfloat16)
    cur = torch.tensor([BF16.max, -1.5, float("inf"), -1.0, -3.0], dtype=torch.bfloat16)
    b = RolloutBatch(token_logprobs=lp, cur_logprobs=cur, offsets=torch.tensor([0, 5]), reward=torch.zeros(1),
                     group_offsets=torch.tensor([0, 1]), mask_nonfinite=True)
    x = _features(b, path, validate=False)
    # Tokens 0, 1, 4 count (2: cur is inf, 3: the log-prob is NaN): (2 * 3.39e38 + 0.5 + 0) / 3.
    assert float(x[0, F["log_ratio_abs_mean"]]) == float(torch.tensor((2 * float(BF16.max) + 0.5) / 3))
    assert float(x[0, F["log_ratio_abs_max"]]) == float("inf")
    assert_matches_oracle(x, b, label=f"item5/{path}")
    with pytest.raises(ValueError, match=r"RolloutBatch\.token_logprobs: found -3\.38953e\+38"):
        _features(b, path)


# -------------------------------------------------- issue 14 item 12 (extreme finite inputs)
@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("field,value,match", [
    ("reward", 1e20, r"RolloutBatch\.reward: found 1e\+20 at rollout 2"),
    ("token_logprobs", -3e38, r"RolloutBatch\.token_logprobs: found -3e\+38 at token 5 \(rollout 1\)"),
    ("token_logprobs", -1e30, r"RolloutBatch\.token_logprobs: found -1e\+30"),
    ("cur_logprobs", 2e16, r"RolloutBatch\.cur_logprobs: found 2e\+16"),
    ("age", 1e16, r"RolloutBatch\.age: found 1e\+16 at rollout 2"),
], ids=["reward-1e20", "logprob-3e38", "logprob-1e30", "cur-2e16", "age-1e16"])
def test_extreme_finite_inputs_name_the_input_field(backend, field, value, match):
    b = _batch([4, 4, 4, 4], [2, 2], torch.Generator().manual_seed(0))
    getattr(b, field)[5 if field in ("token_logprobs", "cur_logprobs") else 2] = value
    w = ScorerWeights.random(NUM_FEATURES, 8, seed=0)
    with pytest.raises(ValueError, match=match):
        schedule(b, w, k=1, backend=backend)


# ------------------------------------------------------------------ all_finite
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64])
def test_all_finite_agrees_with_isfinite_wherever_the_bad_value_sits(dtype):
    """The checks' finiteness test (one aminmax: NaN propagates through min and max) says what
    isfinite(x).all() says for NaN, +inf and -inf at any position, alone or mixed, and for
    finite extremes (the dtype's max and min, subnormals), empty and integer tensors."""
    from rollout_bandits.validation import all_finite

    rng = random.Random(17)
    info = torch.finfo(dtype)
    for _ in range(200):
        n = rng.randint(1, 300)
        x = (torch.randn(n, dtype=torch.float64) * 10 ** rng.randint(-3, 3)).to(dtype)
        x[rng.randrange(n)] = rng.choice([info.max, -info.max, info.tiny / 4, 0.0])
        for _ in range(rng.choice([0, 0, 1, 2])):
            x[rng.randrange(n)] = rng.choice([float("nan"), float("inf"), -float("inf")])
        if dtype.is_complex and rng.random() < 0.5:
            x[rng.randrange(n)] = complex(1.0, rng.choice([float("nan"), float("inf")]))
        x = x.reshape(-1, 1) if rng.random() < 0.5 else x
        assert all_finite(x) == bool(torch.isfinite(x).all()), x
    assert all_finite(torch.zeros(0, 3, dtype=dtype))
    assert all_finite(torch.arange(5))
