"""Hypothesis fuzzing of RolloutBatch, Scheduler.select / observe and train_batch (issue 14).

Every exception must be a ValueError worded "Owner.field: found ..., expected ..."; no index
out of range; no NaN/inf context or score returned; no group with reward variance dropped;
train_batch passes its own validate(); a rejected call leaves the scheduler's state_dict as it was.
"""

import math
import re

import torch
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rollout_bandits import RolloutBatch
from rollout_bandits.bandit import BufferConfig, NeuralUCBConfig, Scheduler, SchedulerConfig
from rollout_bandits.bandit.ee_net import EENetConfig

WORDING = re.compile(r"^[A-Za-z_][\w.]*(\[[^\]]*\])?(\.\w+)*: found .*, expected ", re.S)
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAN, INF = float("nan"), float("inf")
SPECIAL = [NAN, INF, -INF, -1e30, -3e38, 1e20, 3e38, -0.0, 1e-40]




def _floats(lo, hi):
    return st.one_of(st.floats(lo, hi, allow_nan=False), st.sampled_from(SPECIAL))


@st.composite
def batch_kwargs(draw, feature_ok=True):
    """A valid-looking batch, then (often) one field made bad in one of many ways."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    n = sum(sizes)
    allow_empty = draw(st.booleans())
    lengths = draw(st.lists(st.integers(0 if allow_empty else 1, 5), min_size=n, max_size=n))
    with_cur = draw(st.booleans())
    t = sum(lengths)
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16]))
    special = draw(st.integers(0, 3)) == 0
    lp_values = _floats(-20.0, 0.0) if special else st.floats(-20.0, 0.0)
    lp = torch.tensor(draw(st.lists(lp_values, min_size=t, max_size=t)), dtype=torch.float32).to(dtype)
    rewards = draw(st.lists(_floats(-2.0, 2.0) if special else st.sampled_from([0.0, 1.0, 0.5, -1.0]),
                            min_size=n, max_size=n))
    offsets = torch.zeros(n + 1, dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    go = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    go[1:] = torch.cumsum(torch.tensor(sizes), 0)
    kw = dict(
        token_logprobs=lp, offsets=offsets, reward=torch.tensor(rewards),
        group_offsets=go if draw(st.booleans()) else None,
        group_ids=torch.repeat_interleave(torch.arange(len(sizes)) * 3 + 7, torch.tensor(sizes)),
        token_entropy=torch.rand(t).to(dtype) if draw(st.booleans()) else None,
        cur_logprobs=(lp.float() + 0.1).to(dtype) if with_cur else None,
        age=torch.tensor(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))).float(),
        token_ids=torch.arange(t) + 5,
        mask_nonfinite=draw(st.booleans()),
        allow_empty_rollouts=allow_empty,
        nonfinite_reward=draw(st.sampled_from(["error", "zero", "group_min"])),
        max_response_len=draw(st.sampled_from([None, 5, 8])),
    )
    if kw["group_offsets"] is None and draw(st.booleans()):
        kw["group_ids"] = None
        kw["group_offsets"] = go
    if draw(st.integers(0, 3)) == 0:
        field, bad = draw(st.sampled_from(_corruptions(n, t, len(sizes))))
        kw[field] = bad
    return kw


def _corruptions(n, t, g):
    return [
        ("token_logprobs", None), ("token_logprobs", [0.0] * t), ("token_logprobs", torch.zeros(t, 1)),
        ("token_logprobs", torch.zeros(t, dtype=torch.int64)), ("token_logprobs", torch.zeros(t, dtype=torch.float64)),
        ("offsets", torch.zeros(n + 1)), ("offsets", torch.zeros(0, dtype=torch.int64)),
        ("offsets", torch.arange(n + 1) * 2), ("offsets", torch.arange(n + 1).flip(0)), ("offsets", None),
        ("offsets", torch.zeros(2, n + 1, dtype=torch.int64)),
        ("reward", None), ("reward", torch.zeros(n + 1)), ("reward", torch.zeros(n, dtype=torch.int64)),
        ("reward", "1"), ("reward", torch.full((n,), NAN)),
        ("group_offsets", torch.tensor([0, n + 1])), ("group_offsets", torch.zeros(g + 1)),
        ("group_offsets", torch.tensor([0, 0, n])), ("group_offsets", torch.tensor([[0, n]])),
        ("group_ids", torch.arange(n) % 2), ("group_ids", torch.zeros(n)), ("group_ids", torch.arange(n + 1)),
        ("group_ids", [0] * n), ("group_ids", torch.arange(n)),
        ("token_entropy", torch.zeros(t + 1)), ("token_entropy", torch.full((t,), NAN)),
        ("cur_logprobs", torch.zeros(t, dtype=torch.int32)),
        ("age", torch.full((n,), -1.0)), ("age", torch.full((n,), INF)), ("age", torch.zeros(n, dtype=torch.bool)),
        ("reuse_count", torch.zeros(n + 2)), ("clip_ratio", torch.full((n,), 2.0)),
        ("truncated", torch.zeros(n)), ("truncated", torch.zeros(n + 1, dtype=torch.bool)),
        ("token_ids", torch.zeros(t)), ("token_ids", torch.zeros(t + 3, dtype=torch.int64)),
        ("max_response_len", True), ("max_response_len", 0), ("max_response_len", 2.5), ("max_response_len", "8"),
        ("max_response_len", 1),
        ("mask_nonfinite", "no"), ("mask_nonfinite", 1), ("allow_empty_rollouts", "yes"),
        ("nonfinite_reward", "drop"), ("nonfinite_reward", None),
    ]


def _build(kw):
    """The batch, or None after a clearly worded ValueError."""
    try:
        return RolloutBatch(**kw).validate()
    except ValueError as err:
        assert WORDING.match(str(err)), str(err)
        return None


@FUZZ
@given(batch_kwargs())
def test_rollout_batch_is_valid_or_a_clear_value_error(kw):
    b = _build(kw)
    if b is None:
        return
    n = b.num_rollouts
    assert b.group_index().numel() == n and b.to_padded()["mask"].sum() == b.num_tokens
    half = b.take(torch.arange(0, n, 2))
    RolloutBatch.concat([half, b]).validate()
    r = b.finite_reward()
    assert r.shape == (n,) and (b.nonfinite_reward == "error" or bool(torch.isfinite(r).all()))


CONFIGS = {
    "cbs_batch": SchedulerConfig(gain="batch", reuse_m=3, learner=NeuralUCBConfig(hidden=8, train_passes=1.0)),
    "cbs_heldout_store": SchedulerConfig(candidates="store", reuse_ratio=1.0, learner=NeuralUCBConfig(
        hidden=8, train_passes=1.0, bonus="diag"), buffer=BufferConfig(capacity=24, max_bytes=4096)),
    "ee_net_self": SchedulerConfig(explorer="ee_net", gain="self", reuse_m=2,
                                   ee_net=EENetConfig(hidden=8, train_passes=1.0, grad_width=8, explore_hidden=8)),
    "cbs_maxvar_auto": SchedulerConfig(intra_rule="max_variance", gain="auto", intra_k=2,
                                       learner=NeuralUCBConfig(hidden=8, train_passes=1.0)),
    "pods": SchedulerConfig(policy="pods"),
    "dapo": SchedulerConfig(policy="dapo_filter"),
    "random_k": SchedulerConfig(policy="random_k", intra_ratio=0.3),
    "fifo": SchedulerConfig(policy="reuse_fifo", reuse_m=3),
}


def _warm(name, with_entropy):
    """A scheduler two rounds in (so the buffer, the learner and the pending arms are not empty)."""
    from rollout_bandits.synthetic import synthetic_batch

    s = Scheduler(CONFIGS[name], seed=3)
    for t in range(2):
        b = synthetic_batch(3, (1, 4), 3, seed=t, with_entropy=with_entropy)
        b.token_ids = torch.arange(b.num_tokens)
        b.cur_logprobs = None
        step = s.select(b, prompt_ids=torch.arange(3) + 10 * t)
        if s.config.policy == "cbs" and s.config.gain != "batch":
            s.observe_step(step, step.default_logp_before() + 0.01)
    return s


# Per select argument: (good values, bad values) for a batch of n rollouts in g groups.
_ARG_VALUES = {
    "prompt_ids": lambda n, g: ([None, torch.arange(g), torch.arange(n)],
                                [torch.arange(g + 1), torch.zeros(g), ["a"] * g, [[1]] * g,
                                 torch.zeros(g, dtype=torch.bool), 2**70]),
    "contexts": lambda n, g: ([None, None, torch.rand(n, 15)],
                              [torch.zeros(n, 14), torch.full((n, 15), NAN), torch.zeros(n, 15, dtype=torch.int64),
                               torch.zeros(n + 1, 15), "x"]),
    "advantage": lambda n, g: ([None, torch.randn(n)],
                               [torch.randn(n + 1), torch.full((n,), INF), torch.zeros(n, dtype=torch.int64),
                                [0.0] * n, torch.full((n,), 1e39, dtype=torch.float64)]),
    "prompt_tokens": lambda n, g: ([None, [[1, 2]] * g, [torch.arange(3)] * n, [[]] * g],
                                   [[[1]] * (g + 2), [None] * g, [[1.5]] * g, ["ab"] * g, [[2**70]] * g,
                                    [torch.zeros(2, 2, dtype=torch.int64)] * g, "tokens"]),
}


def _check_step(step, s, tokens_given):
    b = step.batch
    n = b.num_rollouts
    idx = step.fresh.indices
    assert idx.numel() == 0 or (int(idx.min()) >= 0 and int(idx.max()) < n)
    for v in (step.fresh.contexts, step.fresh.scores, step.fresh.mean, step.fresh.bonus,
              step.reused_scores, step.reused_mean, step.reused_bonus):
        assert bool(torch.isfinite(v).all())
    if step.reused is not None:
        assert bool(torch.isfinite(step.reused.contexts).all())
    # No group with reward variance dropped.
    r = b.reward.double()
    gidx = b.group_index().cpu()
    kept = torch.zeros(b.num_groups, dtype=torch.int64).index_add_(0, gidx, step.fresh.mask.cpu().long())
    for gg in range(b.num_groups):
        rg = r[gidx == gg]
        if float(rg.max()) > float(rg.min()):
            assert int(kept[gg]) > 0, f"group {gg} with rewards {rg.tolist()} dropped"
    tb = step.train_batch.validate()
    rows = tb.num_rollouts
    assert rows == step.num_selected == step.arm_ids.numel() == step.train_advantage.numel()
    assert step.train_advantage_for(False).numel() == rows and len(step.train_prompt_tokens) == rows
    assert bool(torch.isfinite(step.train_advantage).all()) and bool(torch.isfinite(tb.reward).all())
    if tokens_given:
        assert all(p is not None for p in step.train_prompt_tokens[: step.num_fresh_selected])
    s.record_clip_ratio(step, torch.zeros(rows))


def _expect_value_error_or_ok(call, s, before):
    """Run call(); on a ValueError the wording names the field and the state is as it was."""
    try:
        return call(), True
    except ValueError as err:
        assert WORDING.match(str(err)), str(err)
        assert states_equal(before, roundtrip(s.state_dict())) == []
        return None, False


def _fuzz_observe(s, data):
    """observe() with pending or unknown arm ids and any gains (huge ones included)."""
    pending = s.pending["arm_ids"].tolist()
    ids = data.draw(st.lists(st.sampled_from(pending + [-1, 10**6]) if pending else st.integers(-2, 50),
                             max_size=6), label="arm_ids")
    gains = data.draw(st.lists(_floats(-1.0, 1.0), min_size=len(ids), max_size=len(ids)), label="gains")
    before = roundtrip(s.state_dict())
    _, ok = _expect_value_error_or_ok(lambda: s.observe(torch.tensor(ids, dtype=torch.int64), gains), s, before)
    event(f"direct observe {'ok' if ok else 'rejected'}")
    if ok and ids:  # the learner still schedules (or refuses clearly) after whatever it learned
        from rollout_bandits.synthetic import synthetic_batch

        b = synthetic_batch(2, 3, 3, seed=9, with_entropy="token_entropy" in (s.buffer.arena if s.buffer else {}))
        b.token_ids, b.cur_logprobs = torch.arange(b.num_tokens), None
        before = roundtrip(s.state_dict())
        step, ok = _expect_value_error_or_ok(lambda: s.select(b), s, before)
        if ok:
            _check_step(step, s, False)


@FUZZ
@given(name=st.sampled_from(sorted(CONFIGS)), kw=batch_kwargs(), data=st.data())
def test_select_and_observe_fuzz(name, kw, data):
    # Warmed on batches with the same streams (a change of streams is refused: tested elsewhere).
    s = _warm(name, isinstance(kw.get("token_entropy"), torch.Tensor))
    batch = _build(kw)
    if batch is None:
        batch = kw  # a bad batch still goes to select (built later inside the call, or not at all)
        n = g = 2
    else:
        n, g = batch.num_rollouts, batch.num_groups
    args = {}
    for k, values in _ARG_VALUES.items():
        good, bad = values(max(n, 1), max(g, 1))
        args[k] = data.draw(st.sampled_from(bad if data.draw(st.integers(0, 9), label=f"{k} bad?") == 0 else good),
                            label=k)
    before = roundtrip(s.state_dict())

    def select():
        b = RolloutBatch(**batch) if isinstance(batch, dict) else batch
        return s.select(b, **args)

    step, ok = _expect_value_error_or_ok(select, s, before)
    event(f"select {'ok' if ok else 'rejected'}")
    if not ok:
        return
    _check_step(step, s, args["prompt_tokens"] is not None)
    _fuzz_observe(s, data)
    if s.config.policy != "cbs" or s.config.gain == "batch":
        return
    gb = step.gain_batch
    after = step.default_logp_before() + 0.01
    bad_after = data.draw(st.sampled_from([None, None, None, None, None, "short", "nan", "int", "2d"]),
                          label="logp_after")
    if bad_after == "short":
        after = after[:-1]
    elif bad_after == "nan" and after.numel():
        after[0] = NAN
    elif bad_after == "int":
        after = after.long()
    elif bad_after == "2d":
        after = after[None]
    mid = roundtrip(s.state_dict())
    arms, ok = _expect_value_error_or_ok(lambda: s.observe_step(step, after), s, mid)
    event(f"observe {'ok' if ok else 'rejected'} {bad_after}")
    if ok:
        assert bool(torch.isfinite(arms.gains).all()) and gb.num_rollouts == step.gain_arm_ids.numel()
        assert math.isfinite(s.stats()["regret_estimate"])
