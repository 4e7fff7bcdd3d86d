"""RolloutBatch: every malformed input gets a ValueError naming the field; padded round trips."""

import subprocess
import sys

import pytest
import torch

from rollout_bandits import RolloutBatch
from rollout_bandits.batch import group_index
from rollout_bandits.synthetic import synthetic_batch


def _good(**over):
    kw = dict(
        token_logprobs=torch.tensor([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]),
        offsets=torch.tensor([0, 2, 3, 6]),
        reward=torch.tensor([1.0, 0.0, 1.0]),
        group_offsets=torch.tensor([0, 2, 3]),
        token_entropy=torch.rand(6),
        cur_logprobs=torch.zeros(6),
        age=torch.zeros(3),
        reuse_count=torch.zeros(3),
        truncated=torch.zeros(3, dtype=torch.bool),
        clip_ratio=torch.zeros(3),
    )
    kw.update(over)
    return RolloutBatch(**kw)


def test_good_batch_validates():
    b = _good().validate()
    assert b.num_rollouts == 3 and b.num_tokens == 6 and b.num_groups == 2
    assert b.lengths.tolist() == [2, 1, 3]
    assert b.group_index().tolist() == [0, 0, 1]


BAD_CASES = {
    "logprob_int_dtype": (dict(token_logprobs=torch.zeros(6, dtype=torch.int64)), "token_logprobs", "dtype"),
    "logprob_2d": (dict(token_logprobs=torch.zeros(2, 3)), "token_logprobs", "1-D"),
    "float64_stream": (dict(token_entropy=torch.zeros(6, dtype=torch.float64)), "token_entropy", "float32"),
    "entropy_len": (dict(token_entropy=torch.zeros(5)), "token_entropy", "[6]"),
    "cur_len": (dict(cur_logprobs=torch.zeros(7)), "cur_logprobs", "[6]"),
    "offsets_float": (dict(offsets=torch.tensor([0.0, 2.0, 3.0, 6.0])), "offsets", "int32 or int64"),
    "offsets_start": (dict(offsets=torch.tensor([1, 2, 3, 6])), "offsets", "offsets[0] == 0"),
    "offsets_end": (dict(offsets=torch.tensor([0, 2, 3, 5])), "offsets", "number of tokens"),
    "offsets_non_monotone": (dict(offsets=torch.tensor([0, 4, 3, 6])), "offsets", "monotone"),
    "empty_rollout": (dict(offsets=torch.tensor([0, 2, 2, 6])), "offsets", "0 tokens"),
    "groups_in_empty_batch": (
        dict(offsets=torch.tensor([0]), token_logprobs=torch.zeros(0), token_entropy=None,
             cur_logprobs=None, reward=torch.zeros(0), group_offsets=torch.tensor([0, 0]),
             age=None, reuse_count=None, truncated=None, clip_ratio=None),
        "group_offsets", "at least one rollout",
    ),
    "reward_len": (dict(reward=torch.zeros(2)), "reward", "[3]"),
    "reward_int": (dict(reward=torch.tensor([1, 0, 1])), "reward", "floating"),
    "reward_nan": (dict(reward=torch.tensor([1.0, float("nan"), 0.0])), "reward", "NaN"),
    "empty_group": (dict(group_offsets=torch.tensor([0, 2, 2, 3])), "group_offsets", "at least one rollout"),
    "group_offsets_end": (dict(group_offsets=torch.tensor([0, 2])), "group_offsets", "0 and 3"),
    "group_offsets_float": (dict(group_offsets=torch.tensor([0.0, 2.0, 3.0])), "group_offsets", "int32"),
    "age_len": (dict(age=torch.zeros(4)), "age", "[3]"),
    "age_negative": (dict(age=torch.tensor([0.0, -1.0, 0.0])), "age", ">= 0"),
    "reuse_bool": (dict(reuse_count=torch.zeros(3, dtype=torch.bool)), "reuse_count", "numeric"),
    "clip_above_one": (dict(clip_ratio=torch.tensor([0.0, 1.5, 0.0])), "clip_ratio", "[0, 1]"),
    "truncated_float": (dict(truncated=torch.zeros(3)), "truncated", "torch.bool"),
    "nan_logprob": (
        dict(token_logprobs=torch.tensor([-0.1, float("nan"), -0.3, -0.4, -0.5, -0.6])),
        "token_logprobs", "mask_nonfinite",
    ),
    "inf_entropy": (dict(token_entropy=torch.tensor([0.0, 0, 0, float("inf"), 0, 0])), "token_entropy", "inf"),
    "max_len_too_small": (dict(max_response_len=2), "max_response_len", "3 tokens"),
    "max_len_not_int": (dict(max_response_len=2.5), "max_response_len", "positive int"),
    "token_ids_len": (dict(token_ids=torch.zeros(4, dtype=torch.int64)), "token_ids", "[6]"),
    "not_a_tensor": (dict(age=[0, 0, 0]), "age", "torch.Tensor"),
    # Issue 14 item 13: these were an AttributeError, or silently accepted.
    "reward_none": (dict(reward=None), "reward", "torch.Tensor"),
    "offsets_none": (dict(offsets=None), "offsets", "torch.Tensor"),
    "group_ids_contradict_offsets": (dict(group_ids=torch.tensor([0, 1, 1])), "group_ids", "group_offsets"),
    "mask_nonfinite_string": (dict(mask_nonfinite="no"), "mask_nonfinite", "bool"),
    "max_len_bool": (dict(max_response_len=True), "max_response_len", "positive int"),
    "allow_empty_string": (dict(allow_empty_rollouts="yes"), "allow_empty_rollouts", "bool"),
    "nonfinite_reward_unknown": (dict(nonfinite_reward="drop"), "nonfinite_reward", "group_min"),
    "device_mix": (dict(age=torch.zeros(3, device="meta")), "age", "device"),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_validate_rejects(case):
    over, field, expected = BAD_CASES[case]
    with pytest.raises(ValueError) as err:
        _good(**over).validate()
    msg = str(err.value)
    assert f"RolloutBatch.{field}" in msg and expected in msg and "found" in msg


def test_an_empty_batch_is_valid():
    """0 rollouts (offsets [0], group_offsets [0]): what an empty selection trains on."""
    b = _good(offsets=torch.tensor([0]), token_logprobs=torch.zeros(0), token_entropy=None, cur_logprobs=None,
              reward=torch.zeros(0), group_offsets=torch.tensor([0]), age=None, reuse_count=None,
              truncated=None, clip_ratio=None).validate()
    assert b.num_rollouts == 0 and b.num_groups == 0 and b.group_index().numel() == 0
    assert b.to_padded()["mask"].shape == (0, 0)
    assert b.take(torch.zeros(0, dtype=torch.int64)).validate().num_rollouts == 0


def test_concat_keeps_rows_groups_and_streams():
    a = synthetic_batch(3, (1, 4), 5, seed=1)
    b = synthetic_batch(2, (2, 3), 7, seed=2, with_cur=False)
    a.age, b.age = None, torch.ones(b.num_rollouts)
    cat = RolloutBatch.concat([a, b]).validate()
    assert cat.num_rollouts == a.num_rollouts + b.num_rollouts
    assert cat.num_groups == a.num_groups + b.num_groups  # groups never merge across parts
    assert torch.equal(cat.token_logprobs, torch.cat([a.token_logprobs, b.token_logprobs]))
    assert cat.cur_logprobs is None and cat.token_entropy is not None  # missing in one part: dropped
    assert cat.age.tolist() == [0.0] * a.num_rollouts + [1.0] * b.num_rollouts  # default filled in
    assert torch.equal(cat.take(torch.arange(a.num_rollouts, cat.num_rollouts)).token_logprobs, b.token_logprobs)
    empty = a.take(torch.zeros(0, dtype=torch.int64))
    assert torch.equal(RolloutBatch.concat([empty, b]).token_logprobs, b.token_logprobs)
    assert RolloutBatch.concat([empty]).validate().num_rollouts == 0
    with pytest.raises(ValueError, match="RolloutBatch.concat.parts"):
        RolloutBatch.concat([])


def test_group_index_of_offsets():
    assert group_index(torch.tensor([0, 2, 3, 6])).tolist() == [0, 0, 1, 2, 2, 2]
    assert group_index(torch.tensor([0])).numel() == 0


def test_missing_groups_is_an_error():
    with pytest.raises(ValueError, match="group_offsets nor group_ids"):
        RolloutBatch(token_logprobs=torch.zeros(2), offsets=torch.tensor([0, 2]), reward=torch.zeros(1))


def test_group_ids_must_be_contiguous():
    with pytest.raises(ValueError, match="RolloutBatch.group_ids.*adjacent"):
        _good(group_offsets=None, group_ids=torch.tensor([0, 1, 0]))


def test_group_ids_give_offsets():
    b = _good(group_offsets=None, group_ids=torch.tensor([7, 7, 3]))
    assert b.group_offsets.tolist() == [0, 2, 3]


def test_mask_nonfinite_opt_in_accepts_nan():
    lp = torch.tensor([-0.1, float("nan"), -0.3, -0.4, -0.5, -0.6])
    _good(token_logprobs=lp, mask_nonfinite=True).validate()


def test_int32_offsets_accepted():
    _good(offsets=torch.tensor([0, 2, 3, 6], dtype=torch.int32),
          group_offsets=torch.tensor([0, 2, 3], dtype=torch.int32)).validate()


@pytest.mark.parametrize("left_pad", [False, True], ids=["right-padded", "left-padded"])
def test_from_padded_and_back(left_pad):
    g = torch.Generator().manual_seed(1)
    n, L = 6, 9
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    pos = torch.arange(L)[None, :]
    mask = (pos >= L - lengths[:, None]) if left_pad else (pos < lengths[:, None])
    lp = torch.randn(n, L, generator=g)
    ent = torch.rand(n, L, generator=g)
    ids = torch.randint(0, 50, (n, L), generator=g)
    b = RolloutBatch.from_padded(lp, mask, torch.rand(n), group_size=3, entropy=ent, token_ids=ids)
    b.validate()
    assert b.lengths.tolist() == lengths.tolist()
    assert b.group_offsets.tolist() == [0, 3, 6]
    back = b.to_padded(pad_value=-7.0)
    for i in range(n):
        li = int(lengths[i])
        assert torch.equal(back["token_logprobs"][i, :li], lp[i][mask[i]])
        assert torch.equal(back["token_entropy"][i, :li], ent[i][mask[i]])
        assert torch.equal(back["token_ids"][i, :li], ids[i][mask[i]])
        assert bool((back["token_logprobs"][i, li:] == -7.0).all())
        assert back["mask"][i].sum() == li and bool(back["mask"][i, :li].all())


def test_from_padded_bad_inputs():
    with pytest.raises(ValueError, match="mask"):
        RolloutBatch.from_padded(torch.zeros(2, 3), torch.ones(2, 4), torch.zeros(2), group_size=1)
    with pytest.raises(ValueError, match="group_size"):
        RolloutBatch.from_padded(torch.zeros(3, 3), torch.ones(3, 3), torch.zeros(3), group_size=2)
    with pytest.raises(ValueError, match="group_ids \\[N\\] or group_size"):
        RolloutBatch.from_padded(torch.zeros(3, 3), torch.ones(3, 3), torch.zeros(3))


def test_from_padded_refuses_wrong_types_and_contradictions():
    """Issue 14 item 13: group_size="4" was a TypeError; group_ids silently won over group_size."""
    lp, mask, r = torch.zeros(8, 3), torch.ones(8, 3), torch.zeros(8)
    with pytest.raises(ValueError, match="RolloutBatch.group_size: found '4'"):
        RolloutBatch.from_padded(lp, mask, r, group_size="4")
    with pytest.raises(ValueError, match="RolloutBatch.group_ids"):
        RolloutBatch.from_padded(lp, mask, r, group_size=4, group_ids=torch.arange(8) // 2)
    agree = RolloutBatch.from_padded(lp, mask, r, group_size=4, group_ids=torch.arange(8) // 4)
    assert agree.group_offsets.tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="RolloutBatch.token_logprobs"):
        RolloutBatch.from_padded([[0.0]], mask, r, group_size=4)
    with pytest.raises(ValueError, match="RolloutBatch.group_ids"):
        RolloutBatch(token_logprobs=torch.zeros(2), offsets=torch.tensor([0, 1, 2]), reward=torch.zeros(2),
                     group_ids=[0, 1])


def test_take_keeps_streams_and_groups():
    b = synthetic_batch(4, (1, 5), 6, seed=3)
    idx = torch.tensor([0, 2, 3, b.num_rollouts - 1])
    sub = b.take(idx).validate()
    assert sub.num_rollouts == 4
    for j, i in enumerate(idx.tolist()):
        s, e = int(b.offsets[i]), int(b.offsets[i + 1])
        ss, se = int(sub.offsets[j]), int(sub.offsets[j + 1])
        assert torch.equal(sub.token_logprobs[ss:se], b.token_logprobs[s:e])
        assert sub.reward[j] == b.reward[i]


def test_no_top_level_kernels_module(tmp_path):
    """transformers probes for a package called `kernels`: ours must not be it."""
    code = "import importlib.util as u, rollout_bandits.kernels; print(u.find_spec('kernels') is None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    for name in ("bandit", "trainer"):
        code = f"import importlib.util as u; print(u.find_spec('{name}') is None)"
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
        assert out.stdout.strip() == "True"
