import math

import pytest
import torch
from _bandit_helpers import one_thread, roundtrip, states_equal

from rollout_bandits.bandit import BufferConfig, NeuralUCBConfig, Scheduler, SchedulerConfig
from rollout_bandits.kernels.rollout_features import rollout_features
from rollout_bandits.synthetic import synthetic_batch


@pytest.fixture(autouse=True)
def _single_thread():
    n = one_thread()
    yield
    torch.set_num_threads(n)


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


@pytest.mark.parametrize("gain,explorer", [("batch", "neural_ucb"), ("auto", "neural_ucb"), ("self", "ee_net")])
def test_resume_makes_exactly_the_same_decisions(gain, explorer):
    cfg = SchedulerConfig(gain=gain, explorer=explorer, reuse_m=6, candidates="store",
                          learner=NeuralUCBConfig(hidden=16, train_steps=2))
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


def test_custom_contexts_and_feature_width():
    cfg = SchedulerConfig(learner=NeuralUCBConfig(feature_dim=4), buffer=BufferConfig(feature_dim=4),
                          gain="batch", reuse_m=3)
    s = Scheduler(cfg)
    with pytest.raises(ValueError, match="feature width"):
        s.select(_batch(0))
    for t in range(3):
        b = _batch(t)
        step = s.select(b, contexts=rollout_features(b)[:, :4])
        assert step.fresh.contexts.shape == (48, 4)
    with pytest.raises(ValueError, match="SchedulerConfig.buffer.feature_dim"):
        SchedulerConfig(learner=NeuralUCBConfig(feature_dim=4))


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
