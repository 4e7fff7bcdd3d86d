"""What trainer adapters hand the scheduler (issue 10, item 1): their own advantages, prompt
token ids, fully masked (0-token) rollouts, non-finite rewards, and empty selections."""

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)

from rollout_bandits import RolloutBatch
from rollout_bandits.bandit import Scheduler, SchedulerConfig
from rollout_bandits.bandit.gains import group_advantage
from rollout_bandits.kernels.rollout_features import FEATURE_INDEX, rollout_features_reference
from rollout_bandits.synthetic import synthetic_batch


def _batch(t, groups=4, size=4):
    b = synthetic_batch(groups, size, 6, seed=50 + t)
    b.token_ids = torch.arange(b.num_tokens) + 1000 * t
    b.reward = torch.arange(b.num_rollouts).float().remainder(3) * (t + 1)  # every group mixed
    return b


def _by_arm(step, values):
    """{arm id: value} over the rows of train_batch."""
    return dict(zip(step.arm_ids.tolist(), values, strict=True))


def test_the_trainers_advantages_are_used_and_reused():
    s = Scheduler(SchedulerConfig(reuse_m=6, gain="batch"))
    given = {}
    for t in range(4):
        b = _batch(t)
        adv = torch.randn(b.num_rollouts, generator=torch.Generator().manual_seed(t)) * 3
        step = s.select(b, advantage=adv)
        given.update(zip(step.fresh_arm_ids.tolist(), adv.tolist(), strict=True))
        for normalize_std in (True, False):
            got = _by_arm(step, step.train_advantage_for(normalize_std).tolist())
            assert got == pytest.approx({a: given[a] for a in got}, abs=1e-6)
        assert step.num_reused == (0 if t == 0 else 6)


def test_the_default_advantages_are_grpos_and_dr_grpos():
    s = Scheduler(SchedulerConfig(reuse_m=5, gain="batch"))
    full = {}
    for t in range(3):
        b = _batch(t)
        b.reward = torch.randn(b.num_rollouts, generator=torch.Generator().manual_seed(t)) * 3.7  # inexact sums
        step = s.select(b)
        ids = step.fresh_arm_ids.tolist()
        norm = group_advantage(b.reward, b.group_offsets)
        centered = b.reward - rollout_features_reference(b)[:, FEATURE_INDEX["group_reward_mean"]]
        full.update({a: (float(x), float(y)) for a, x, y in zip(ids, norm, centered, strict=True)})
        for k, normalize_std in ((0, True), (1, False)):
            got = _by_arm(step, step.train_advantage_for(normalize_std).tolist())
            assert got == {a: full[a][k] for a in got}  # exact: against the original full group
    with pytest.raises(ValueError, match="normalize_std"):
        step.train_advantage_for("no")


def test_prompt_tokens_come_back_with_reused_rows_and_survive_a_checkpoint():
    cfg = SchedulerConfig(reuse_m=8, gain="batch", candidates="store")
    s = Scheduler(cfg)
    prompts = {}
    for t in range(5):
        b = _batch(t)
        tokens = [list(range(100 * t + g, 100 * t + g + 3 + g)) for g in range(b.num_groups)]
        step = s.select(b, prompt_ids=torch.arange(4) + 10 * t, prompt_tokens=tokens)
        for a, g in zip(step.fresh_arm_ids.tolist(), b.group_index().tolist(), strict=True):
            prompts[a] = tokens[g]
        rows = step.train_prompt_tokens
        assert len(rows) == step.train_batch.num_rollouts
        assert [r.tolist() for r in rows] == [prompts[a] for a in step.arm_ids.tolist()]
        if t == 2:
            resumed = Scheduler(cfg)
            resumed.load_state_dict(roundtrip(s.state_dict()))
            assert states_equal(s.state_dict(), resumed.state_dict()) == []
            s = resumed
    assert step.num_reused == 8
    # Without prompt tokens: None for those rows; a mix of both rounds keeps each row's own.
    step = s.select(_batch(5))
    assert step.train_prompt_tokens[: step.num_fresh_selected] == [None] * step.num_fresh_selected
    assert all(p is not None for p in step.train_prompt_tokens[step.num_fresh_selected:])
    with pytest.raises(ValueError, match=r"Scheduler.select.prompt_tokens: found entry 1"):
        s.select(_batch(6), prompt_tokens=[[1], [2.5], [3], [4]])


def test_live_prompt_ids_and_clip_ratios_through_the_scheduler():
    s = Scheduler(SchedulerConfig(reuse_m=4, gain="batch", window_rounds=2))
    for t in range(4):
        step = s.select(_batch(t), prompt_ids=torch.arange(4) + 10 * t)
        clip = torch.linspace(0, 1, step.num_selected)
        s.record_clip_ratio(step, clip)
        stored, found = s.buffer.slots_of(step.arm_ids)
        assert torch.equal(s.buffer.slot["clip_ratio"][stored], clip[found])
        # The window keeps the rollouts of rounds t-2 .. t.
        assert s.live_prompt_ids().tolist() == [10 * r + g for r in range(max(t - 2, 0), t + 1) for g in range(4)]
    with pytest.raises(ValueError, match="Scheduler.record_clip_ratio.clip_ratio"):
        s.record_clip_ratio(step, torch.full((step.num_selected,), 1.5))
    assert Scheduler(SchedulerConfig(policy="pods")).live_prompt_ids().numel() == 0


def _with_empty_rollouts(t):
    """A batch whose rollouts 1 and 5 hold no tokens (fully masked, as TRL's truncated completions)."""
    b = _batch(t)
    lp = b.to_padded()
    mask = lp["mask"].clone()
    mask[[1, 5]] = False
    return RolloutBatch.from_padded(lp["token_logprobs"], mask, b.reward, group_size=4,
                                    entropy=lp["token_entropy"], token_ids=lp["token_ids"],
                                    allow_empty_rollouts=True)


def test_zero_token_rollouts_when_the_batch_opts_in():
    b = _with_empty_rollouts(0)
    assert b.lengths[[1, 5]].tolist() == [0, 0]
    with pytest.raises(ValueError, match="RolloutBatch.offsets: found rollout 1 with 0 tokens"):
        RolloutBatch(**{**b.__dict__, "allow_empty_rollouts": False}).validate()
    ctx = rollout_features_reference(b.validate())
    assert bool(torch.isfinite(ctx).all())
    for name in ("logp_mean", "logp_min", "entropy_mean", "length_frac"):
        assert ctx[[1, 5], FEATURE_INDEX[name]].tolist() == [0.0, 0.0]
    s = Scheduler(SchedulerConfig(reuse_m=6, gain="heldout", backend="reference"))
    for t in range(3):
        step = s.select(_with_empty_rollouts(t))
        tb = step.train_batch.validate()
        assert tb.num_rollouts == step.num_selected
        arms = s.observe_step(step, step.default_logp_before() + 0.01)
        assert bool(torch.isfinite(arms.gains).all())
    assert s.stats()["buffer_size"] > 0


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_zero_token_rollouts_on_every_feature_path(backend):
    """With current log-probs too, and a batch whose every rollout is empty."""
    b = _with_empty_rollouts(0)
    b.cur_logprobs = b.token_logprobs + 0.1
    empty = RolloutBatch(token_logprobs=torch.zeros(0), offsets=torch.zeros(3, dtype=torch.int64),
                         reward=torch.tensor([1.0, 0.0]), group_offsets=torch.tensor([0, 2]),
                         token_entropy=torch.zeros(0), cur_logprobs=torch.zeros(0),
                         token_ids=torch.zeros(0, dtype=torch.int64), allow_empty_rollouts=True)
    s = Scheduler(SchedulerConfig(reuse_m=4, backend=backend))
    for batch in (b, empty, b):
        step = s.select(batch)
        assert bool(torch.isfinite(step.fresh.contexts).all()) and bool(torch.isfinite(step.fresh.scores).all())
        assert step.train_batch.validate().num_rollouts == step.num_selected > 0
        arms = s.observe_step(step, step.default_logp_before() + 0.01)
        assert bool(torch.isfinite(arms.gains).all())
    assert step.num_reused == 4


@pytest.mark.parametrize("option", ["zero", "group_min"])
def test_nonfinite_rewards_by_the_batch_option(option):
    b = _batch(0)
    b.reward[[1, 6]] = torch.tensor([float("nan"), float("-inf")])
    with pytest.raises(ValueError, match="RolloutBatch.reward: found nan"):
        Scheduler().select(b)
    b.nonfinite_reward = option
    want = b.reward.clone()
    if option == "zero":
        want[[1, 6]] = 0.0
    else:  # the lowest finite reward of the rollout's group
        want[1] = min(float(b.reward[i]) for i in (0, 2, 3))
        want[6] = min(float(b.reward[i]) for i in (4, 5, 7))
    assert torch.equal(b.finite_reward(), want)
    s = Scheduler(SchedulerConfig(reuse_m=4, gain="batch"))
    step = s.select(b)
    assert torch.equal(step.batch.reward, want)
    assert bool(torch.isfinite(step.train_batch.validate().reward).all())
    assert bool(torch.isfinite(step.fresh.contexts).all())
    step = s.select(_batch(1))
    assert bool(torch.isfinite(step.train_batch.reward).all()) and step.num_reused == 4
