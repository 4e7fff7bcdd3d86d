import math
import re

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit import (
    EXPLORERS,
    BufferConfig,
    NeuralLinearConfig,
    NeuralUCBConfig,
    Scheduler,
    SchedulerConfig,
)
from rollout_bandits.kernels.rollout_features import rollout_features
from rollout_bandits.synthetic import synthetic_batch


def _batch(t, groups=6, size=8):
    b = synthetic_batch(groups, size, 12, seed=100 + t)
    b.token_ids = torch.arange(b.num_tokens) + 10_000 * t
    b.age, b.reuse_count = torch.zeros(b.num_rollouts), torch.zeros(b.num_rollouts)
    return b


def _after(step, t):
    g = torch.Generator().manual_seed(t)
    gb = step.gain_batch
    return step.default_logp_before() + 0.02 * torch.randn(gb.num_tokens, generator=g)


def _run(s, rounds, start=0):
    out = []
    for t in range(start, start + rounds):
        step = s.select(_batch(t), prompt_ids=torch.arange(6) + 100 * t)
        if s.config.gain != "batch":
            s.observe_step(step, _after(step, t))
        out.append((step.fresh.indices.clone(), step.arm_ids.clone(), step.fresh.scores.clone()))
    return out


def test_select_shapes_arm_ids_and_train_batch():
    s = Scheduler(SchedulerConfig(intra_ratio=0.25, reuse_m=5, gain="self"))
    seen = set()
    for t in range(3):
        b = _batch(t)
        step = s.select(b, prompt_ids=torch.arange(6) + 100 * t)
        assert step.num_fresh_selected == 6 * 2  # ceil(0.25 * 8) per group
        assert step.num_reused == (0 if t == 0 else 5)
        ids = set(step.fresh_arm_ids.tolist())
        assert not ids & seen  # fresh arm ids are new every round
        seen |= ids
        tb = step.train_batch.validate()
        assert tb.num_rollouts == step.arm_ids.numel() == step.train_advantage.numel()
        # Fresh rows are exactly the chosen rollouts' tokens; reused rows are earlier arms.
        assert torch.equal(tb.token_ids[: int(tb.offsets[step.num_fresh_selected])],
                           b.take(step.fresh.indices).token_ids)
        if t:
            assert step.reused.arm_ids.max() < step.fresh_arm_ids.min()
            assert bool((step.reused.batch.age >= 1).all())
            # Prompt ids travel with reused rollouts.
            assert bool((step.reused.prompt_ids // 100 < t).all())
            assert torch.equal(step.train_prompt_ids[-5:], step.reused.prompt_ids)
        s.observe_step(step, _after(step, t))
    st = s.stats()
    for key in ("selection_rate", "mean_score", "mean_bonus", "buffer_size", "buffer_age_histogram",
                "regret_estimate", "observed_arms"):
        assert key in st
    assert st["selection_rate"] == pytest.approx(0.25)
    assert st["observed_arms"] == 12 + 17 + 17
    assert st["buffer_size"] == 144 and math.isfinite(st["regret_estimate"])


def test_window_candidates_are_exactly_the_last_L_rounds():
    s = Scheduler(SchedulerConfig(candidates="window", window_rounds=2, reuse_m=1000, gain="batch"))
    arms_by_round = []
    for t in range(5):
        step = s.select(_batch(t))
        if t >= 2:
            want = torch.cat(arms_by_round[t - 2: t])
            assert torch.equal(torch.sort(step.reused.arm_ids).values, want)
        arms_by_round.append(step.fresh_arm_ids)


def test_store_candidates_respect_buffer_limits():
    cfg = SchedulerConfig(candidates="store", reuse_m=4, gain="batch",
                          buffer=BufferConfig(capacity=64, max_age=2, max_reuse=2))
    s = Scheduler(cfg)
    for t in range(6):
        s.select(_batch(t))
        st = s.stats()
        assert st["buffer_size"] <= 64
        assert len(st["buffer_age_histogram"]) == 3


@pytest.mark.parametrize("gain,explorer", [("batch", "neural_ucb"), ("auto", "neural_ucb"), ("self", "ee_net"),
                                          ("heldout", "neural_linear"), ("batch", "neural_linear"),
                                          ("self", "linucb")])
def test_resume_makes_exactly_the_same_decisions(gain, explorer):
    cfg = SchedulerConfig(gain=gain, explorer=explorer, reuse_m=6, candidates="store",
                          learner=NeuralUCBConfig(hidden=16), neural_linear=NeuralLinearConfig(hidden=16))
    straight = _run(Scheduler(cfg), 6)
    first = Scheduler(cfg)
    _run(first, 3)
    resumed = Scheduler(cfg)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert states_equal(first.state_dict(), resumed.state_dict()) == []
    rest = _run(resumed, 3, start=3)
    for (i1, a1, s1), (i2, a2, s2) in zip(straight[3:], rest, strict=True):
        assert torch.equal(i1, i2) and torch.equal(a1, a2) and torch.equal(s1, s2)


def test_bad_input_value_errors_leave_state_unchanged():
    s = Scheduler(SchedulerConfig(gain="self", reuse_m=4))
    _run(s, 2)
    step = s.select(_batch(2))
    before = roundtrip(s.state_dict())
    arms = s.gains(step, _after(step, 2))
    nan_gains = arms.gains.clone()
    nan_gains[0] = float("nan")
    with pytest.raises(ValueError, match="gains"):
        s.observe(arms.arm_ids, nan_gains)
    inf_gains = arms.gains.clone()
    inf_gains[-1] = float("inf")
    with pytest.raises(ValueError, match="gains"):
        s.observe(arms.arm_ids, inf_gains)
    with pytest.raises(ValueError, match="never selected"):
        s.observe(torch.tensor([arms.arm_ids[0].item(), 10**9]), torch.zeros(2))
    unselected = step.fresh_arm_ids[~step.fresh.mask]
    with pytest.raises(ValueError, match="never selected"):
        s.observe(unselected[:2], torch.zeros(2))
    with pytest.raises(ValueError, match="repeated"):
        s.observe(arms.arm_ids[[0, 0]], torch.zeros(2))
    with pytest.raises(ValueError, match=r"contexts.*\[N, 15\]"):
        s.select(_batch(3), contexts=torch.zeros(48, 14))
    with pytest.raises(ValueError, match="contexts"):
        s.select(_batch(3), contexts=torch.full((48, 15), float("nan")))
    with pytest.raises(ValueError, match="prompt_ids"):
        s.select(_batch(3), prompt_ids=torch.arange(5))
    with pytest.raises(ValueError, match="logp_after"):
        s.gains(step, _after(step, 2)[:-1])
    assert states_equal(before, s.state_dict()) == []
    s.observe(arms.arm_ids, arms.gains)  # the valid call still works
    with pytest.raises(ValueError, match="already observed"):
        s.observe(arms.arm_ids, arms.gains)


@pytest.mark.parametrize("explorer", list(EXPLORERS))
def test_round_zero_scores_standardized_contexts(explorer):
    """Issue 16: the scheduler takes the batch's context statistics before it scores, so the
    first round's scores are those of a learner that has seen the batch's scale (they were
    those of raw contexts, with a first-round bonus in the hundreds)."""
    s = Scheduler(SchedulerConfig(explorer=explorer, gain="self", reuse_m=0))
    b = _batch(0)
    ctx = rollout_features(b) * 100.0 + 50.0  # contexts on a scale far from 1, as many are
    step = s.select(b, contexts=ctx)
    fresh = Scheduler(SchedulerConfig(explorer=explorer, gain="self", reuse_m=0)).learner
    raw_bonus = fresh.score(ctx)[2]  # what round 0 used to score
    fresh.update_feature_stats(ctx)
    for got, want in zip((step.fresh.scores, step.fresh.mean, step.fresh.bonus), fresh.score(ctx), strict=True):
        assert torch.equal(got, want)
    if explorer != "ee_net":  # EE-Net's bonus reads a unit-RMS gradient: bounded either way
        assert float(step.fresh.bonus.abs().max()) < 0.1 * float(raw_bonus.abs().max())


def test_a_failed_select_restores_the_context_statistics():
    s = Scheduler(SchedulerConfig(explorer="linucb", gain="self", reuse_m=0))
    _run(s, 2)
    before = roundtrip(s.state_dict())
    wild = _batch(5)
    wild.token_logprobs[3] = -1e30  # the features are finite, the learner cannot score them
    with pytest.raises(ValueError):
        s.select(wild)
    assert states_equal(before, s.state_dict()) == []


def test_custom_contexts_and_feature_width():
    cfg = SchedulerConfig(explorer="neural_ucb", learner=NeuralUCBConfig(feature_dim=4),
                          buffer=BufferConfig(feature_dim=4), gain="batch", reuse_m=3)
    s = Scheduler(cfg)
    with pytest.raises(ValueError, match="feature width"):
        s.select(_batch(0))
    for t in range(3):
        b = _batch(t)
        step = s.select(b, contexts=rollout_features(b)[:, :4])
        assert step.fresh.contexts.shape == (48, 4)
    with pytest.raises(ValueError, match="SchedulerConfig.buffer.feature_dim"):
        SchedulerConfig(explorer="neural_ucb", learner=NeuralUCBConfig(feature_dim=4))


def test_config_validation_names_the_field():
    for kw, field in [({"policy": "greedy"}, "policy"), ({"intra_ratio": 0.0}, "intra_ratio"),
                      ({"gain": "reward"}, "gain"), ({"window_rounds": 0}, "window_rounds"),
                      ({"explorer": "ucb"}, "explorer"), ({"entropy_weight": -1.0}, "entropy_weight"),
                      ({"intra_k": 0}, "intra_k"), ({"candidates": "all"}, "candidates")]:
        with pytest.raises(ValueError, match=f"SchedulerConfig.{field}"):
            SchedulerConfig(**kw)
    with pytest.raises(ValueError, match="BufferConfig.capacity"):
        SchedulerConfig(buffer={"capacity": 0})
    with pytest.raises(ValueError, match="seed"):
        Scheduler(seed=1).load_state_dict(Scheduler().state_dict())
    with pytest.raises(ValueError, match="config"):
        Scheduler(SchedulerConfig(intra_ratio=0.25)).load_state_dict(Scheduler().state_dict())
    with pytest.raises(ValueError, match="Scheduler.seed"):
        Scheduler(seed=-1)


def test_batch_gain_needs_no_gains_call():
    s = Scheduler(SchedulerConfig(gain="batch"))
    step = s.select(_batch(0))
    with pytest.raises(ValueError, match="batch"):
        s.gains(step, _after(step, 0))


# ------------------------------------------------- issue 14: atomic select, empty selections, extremes
_WORDING = r"^(RolloutBatch|Scheduler\.select|NeuralUCB|EENet)\.[\w\[\]'.]+: found .*, expected "


def _same_decisions(a, b):
    for (i1, a1, s1), (i2, a2, s2) in zip(a, b, strict=True):
        assert torch.equal(i1, i2) and torch.equal(a1, a2) and torch.equal(s1, s2)


@pytest.mark.parametrize("gain", ["batch", "heldout"])
def test_a_rejected_select_changes_nothing(gain):
    """Issue 14 item 6: next_arm_id, buffer ages, reuse counts and (batch gain) the learner stay put."""
    cfg = SchedulerConfig(gain=gain, reuse_m=5, candidates="store", learner=NeuralUCBConfig(hidden=16, train_passes=1.0))
    clean, dirty = Scheduler(cfg), Scheduler(cfg)
    _run(clean, 2)
    _run(dirty, 2)
    before = roundtrip(dirty.state_dict())
    no_entropy = _batch(2)
    no_entropy.token_entropy = None  # the buffer holds entropies: refused (once at insert, after the changes)
    with pytest.raises(ValueError, match="token_entropy"):
        dirty.select(no_entropy)
    wild = _batch(2)
    wild.token_logprobs[3] = -1e30  # finite, but the learner cannot score it (after the batch gain trained it)
    with pytest.raises(ValueError, match=_WORDING):
        dirty.select(wild)
    with pytest.raises(ValueError, match="advantage"):
        dirty.select(_batch(2), advantage=torch.full((48,), float("nan")))
    with pytest.raises(ValueError, match="prompt_tokens"):
        dirty.select(_batch(2), prompt_tokens=[[1, 2]] * 5)
    assert states_equal(before, dirty.state_dict()) == []
    _same_decisions(_run(clean, 2, start=2), _run(dirty, 2, start=2))


@pytest.mark.parametrize("case", ["zero_variance_groups", "groups_of_one"])
def test_an_empty_selection_is_a_valid_empty_train_batch(case):
    """Issue 14 item 7: dapo_filter with nothing to keep gave an IndexError from train_batch."""
    s = Scheduler(SchedulerConfig(policy="dapo_filter"))
    for t in range(2):
        b = synthetic_batch(4, 1 if case == "groups_of_one" else 4, 6, seed=t)
        if case == "zero_variance_groups":
            b.reward = torch.ones(b.num_rollouts)
        step = s.select(b, prompt_ids=torch.arange(4))
        tb = step.train_batch.validate()
        assert tb.num_rollouts == 0 and tb.num_groups == 0 and step.num_selected == 0
        assert step.train_advantage.numel() == step.train_prompt_ids.numel() == step.arm_ids.numel() == 0
        assert step.train_prompt_tokens == []
        s.record_clip_ratio(step, torch.zeros(0))
        assert s.stats()["empty_selections"] == t + 1


def test_train_batch_passes_its_own_validate_when_max_response_len_changes():
    """Issue 14 item 11: round 1 with max_response_len=8, round 2 without it and 20-token rollouts."""
    s = Scheduler(SchedulerConfig(reuse_m=100, gain="batch"))
    s.select(synthetic_batch(3, 4, 4, max_len=8, seed=0)).train_batch.validate()
    long = synthetic_batch(3, 4, 20, ragged=False, seed=1)
    long.max_response_len = None
    step = s.select(long)
    assert step.num_reused > 0
    tb = step.train_batch.validate()
    assert tb.max_response_len >= int(tb.lengths.max())


@pytest.mark.parametrize("policy", ["cbs", "keep_all", "pods"])
@pytest.mark.parametrize("extreme", ["reward_1e20", "logprob_-1e30", "logprob_-3e38", "entropy_1e30"])
def test_extreme_finite_inputs_are_a_clear_error_or_finite(policy, extreme):
    """Issue 14 item 12: no infinite context or score is returned, no internal tensor is blamed."""
    s = Scheduler(SchedulerConfig(policy=policy, gain="batch"))
    s.select(_batch(0))
    b = _batch(1)
    if extreme == "reward_1e20":
        b.reward = b.reward * 1e20 + 1.0
    elif extreme.startswith("logprob"):
        b.token_logprobs[5] = float(extreme.split("_")[1])
    else:
        b.token_entropy[5] = 1e30
    before = roundtrip(s.state_dict())
    try:
        step = s.select(b)
    except ValueError as err:
        assert re.match(_WORDING, str(err)), str(err)
        assert states_equal(before, s.state_dict()) == []
        return
    for v in (step.fresh.contexts, step.fresh.scores, step.fresh.mean, step.fresh.bonus):
        assert bool(torch.isfinite(v).all())


@pytest.mark.parametrize("gain", ["heldout", "self", "auto"])
def test_a_masked_batch_that_select_accepts_is_observed(gain):
    """Issue 14 item 12: mask_nonfinite=True passed select, then observe_step rejected it."""
    s = Scheduler(SchedulerConfig(gain=gain, reuse_m=4))
    for t in range(3):
        b = _batch(t)
        b.cur_logprobs = None  # the gains read the behaviour log-probs, NaN included
        b.token_logprobs[[2, 40]] = float("nan")
        b.token_entropy[7] = float("inf")
        b.mask_nonfinite = True
        step = s.select(b)
        arms = s.observe_step(step, _after(step, t))
        assert arms.arm_ids.numel() > 0 and bool(torch.isfinite(arms.gains).all())
        step.train_batch.validate()
