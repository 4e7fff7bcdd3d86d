import math

import pytest
import torch
from _bandit_helpers import single_thread  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.gains import (
    GainInputs,
    ProbeInputs,
    batch_gain,
    batch_value_entropy,
    compute_gains,
)
from rollout_bandits.bandit.scheduler import Scheduler, SchedulerConfig
from rollout_bandits.batch import RolloutBatch


def test_batch_gain_hand_computed_sequence_with_guard_on_and_off():
    w, emin = 0.5, 0.3
    # (V, E) per round; R_t = V_{t+1} - V_t - w * 1[E_t > emin] * (E_{t+1} - E_t)
    seq = [(0.20, 1.00), (0.30, 1.20), (0.35, 0.25), (0.50, 0.40), (0.40, 0.10)]
    want = [
        0.10 - 0.5 * 0.20,  # E_0 = 1.0 > 0.3: guard on, entropy rise penalized -> 0.0
        0.05 - 0.5 * (-0.95),  # guard on, entropy fall rewarded -> 0.525
        0.15,  # E_2 = 0.25 <= 0.3: guard off, the rise to 0.40 is not penalized
        -0.10 - 0.5 * (-0.30),  # E_3 = 0.40 > 0.3: guard on -> 0.05
    ]
    got = [batch_gain(seq[t][0], seq[t + 1][0], seq[t][1], seq[t + 1][1], entropy_weight=w, entropy_min=emin)
           for t in range(4)]
    assert got == pytest.approx(want, abs=1e-12)
    assert batch_gain(0.2, 0.3, 1.0, 2.0, entropy_weight=0.0, entropy_min=emin) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="v_next"):
        batch_gain(0.2, float("nan"), 1.0, 1.0, entropy_weight=w, entropy_min=emin)


def _batch(rewards, entropy_per_token, lengths=(2, 3, 1, 2), group_ids=(0, 0, 1, 1)):
    lengths = torch.tensor(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    t = int(offsets[-1])
    return RolloutBatch(token_logprobs=-torch.linspace(0.1, 1.0, t), offsets=offsets,
                        reward=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(group_ids),
                        token_entropy=torch.tensor(entropy_per_token, dtype=torch.float32))


def test_batch_value_and_entropy_are_token_level_means():
    b = _batch([1.0, 0.0, 1.0, 1.0], [0.1, 0.3, 0.5, 0.5, 0.5, 2.0, 1.0, 1.0])
    v, e = batch_value_entropy(b)
    assert v == pytest.approx(0.75)
    assert e == pytest.approx(5.9 / 8)


def test_scheduler_labels_round_t_with_the_batch_gain_after_round_t_plus_1():
    cfg = SchedulerConfig(gain="batch", entropy_weight=0.5, entropy_min=0.3, reuse_ratio=0.0,
                          intra_k=1, keep_contrast=False)
    s = Scheduler(cfg)
    rounds = [([0.0, 0.0, 1.0, 0.0], [1.0] * 8),  # V=0.25, E=1.0
              ([1.0, 0.0, 1.0, 0.0], [1.2] * 8),  # V=0.5,  E=1.2
              ([1.0, 1.0, 1.0, 0.0], [0.2] * 8),  # V=0.75, E=0.2
              ([1.0, 1.0, 1.0, 1.0], [0.4] * 8)]  # V=1.0,  E=0.4
    want = [0.25 - 0.5 * 0.2, 0.25 - 0.5 * (-1.0), 0.25]  # the last: guard off (E_2 = 0.2 <= 0.3)
    pulled = []
    for t, (r, e) in enumerate(rounds):
        step = s.select(_batch(r, e))
        if t > 0:
            assert s.counters["last_batch_gain"] == pytest.approx(want[t - 1])
            # Round t-1's pulled arms were observed with that label, and are no longer pending.
            assert not torch.isin(pulled[-1], s.pending["arm_ids"]).any()
            ys = s.learner.replay.y[: s.learner.replay.size]
            assert ys[-pulled[-1].numel():].tolist() == pytest.approx([want[t - 1]] * pulled[-1].numel())
        pulled.append(step.arm_ids)
    assert s.stats()["observed_arms"] == sum(p.numel() for p in pulled[:-1])


def _inputs(selected, before, after, rewards=(1.0, 0.0, 1.0, 0.0, 1.0), lengths=(2, 1, 1, 2, 1),
            group_offsets=(0, 3, 5), advantage=None, probe=None):
    lengths = torch.tensor(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return GainInputs(logp_before=torch.tensor(before), logp_after=torch.tensor(after), offsets=offsets,
                      reward=torch.tensor(rewards), group_offsets=torch.tensor(group_offsets),
                      selected=torch.tensor(selected), arm_ids=torch.arange(10, 15),
                      advantage=None if advantage is None else torch.tensor(advantage), probe=probe)


BEFORE = [-1.0, -2.0, -0.5, -0.7, -1.0, -1.0, -0.3]
AFTER = [-0.8, -1.8, -0.6, -0.7, -1.2, -0.6, -0.3]
# per-rollout mean token log-ratio: r0 = 0.2, r1 = -0.1, r2 = 0.0, r3 = (-0.2 + 0.4) / 2 = 0.1, r4 = 0.0


def test_self_gain_hand_computed():
    inp = _inputs([True, True, False, True, False], BEFORE, AFTER, advantage=[2.0, -1.0, 0.5, 3.0, -3.0])
    out = compute_gains("self", inp)
    assert out.arm_ids.tolist() == [10, 11, 13]
    assert out.gains.tolist() == pytest.approx([2.0 * 0.2, -1.0 * -0.1, 3.0 * 0.1], abs=1e-6)


def test_heldout_gain_hand_computed():
    inp = _inputs([True, True, False, True, False], BEFORE, AFTER)
    out = compute_gains("heldout", inp, log_ratio_clip=2.0, ratio_level="token")
    # Group 0 = rows 0..2, held-out row 2: (exp(0) - 1) * (1 - 2/3) = 0 -> dJ = 0, split over 2 arms.
    # Group 1 = rows 3..4, held-out row 4: (exp(0) - 1) * ... = 0.
    assert out.arm_ids.tolist() == [10, 11, 13]
    assert out.gains.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)
    # Make the held-out rows move: row 2 log-ratio 0.3, row 4 log-ratio -0.5.
    after = list(AFTER)
    after[3] = -0.4
    after[6] = -0.8
    out = compute_gains("heldout", _inputs([True, True, False, True, False], BEFORE, after))
    dj0 = (math.exp(0.3) - 1) * (1.0 - 2 / 3)
    dj1 = (math.exp(-0.5) - 1) * (1.0 - 0.5)
    assert out.gains.tolist() == pytest.approx([dj0 / 2, dj0 / 2, dj1 / 1], rel=1e-6)
    # Sequence-level ratio with a clip: row 2 has 1 token, row 4 has 1 token: same values.
    out_seq = compute_gains("heldout", _inputs([True, True, False, True, False], BEFORE, after),
                            ratio_level="sequence", log_ratio_clip=0.25)
    dj0c = (math.exp(0.25) - 1) * (1.0 - 2 / 3)
    dj1c = (math.exp(-0.25) - 1) * (1.0 - 0.5)
    assert out_seq.gains.tolist() == pytest.approx([dj0c / 2, dj0c / 2, dj1c], rel=1e-6)


def test_auto_uses_heldout_where_the_group_has_unselected_rollouts_else_self():
    after = list(AFTER)
    after[3] = -0.4
    # Group 0 has an unselected row (2); group 1 is fully selected.
    inp = _inputs([True, True, False, True, True], BEFORE, after, advantage=[2.0, -1.0, 0.5, 3.0, -3.0])
    out = compute_gains("auto", inp)
    dj0 = (math.exp(0.3) - 1) * (1.0 - 2 / 3)
    assert out.arm_ids.tolist() == [10, 11, 13, 14]
    assert out.gains.tolist() == pytest.approx([dj0 / 2, dj0 / 2, 3.0 * 0.1, -3.0 * 0.0], rel=1e-5, abs=1e-7)


def test_probe_gain_is_shared_by_every_pulled_arm():
    probe = ProbeInputs(logp_before=torch.tensor([-1.0, -1.0, -2.0]), logp_after=torch.tensor([-0.9, -1.1, -2.0]),
                        offsets=torch.tensor([0, 1, 2, 3]), reward=torch.tensor([1.0, 0.0, 1.0]),
                        group_offsets=torch.tensor([0, 2, 3]))
    out = compute_gains("probe", _inputs([True, False, False, True, False], BEFORE, AFTER, probe=probe))
    g0 = ((math.exp(0.1) - 1) * 0.5 + (math.exp(-0.1) - 1) * -0.5) / 2
    assert out.arm_ids.tolist() == [10, 13]
    assert out.gains.tolist() == pytest.approx([g0 / 2, g0 / 2], rel=1e-5)  # mean over the 2 probe groups
    with pytest.raises(ValueError, match="probe"):
        compute_gains("probe", _inputs([True, False, False, True, False], BEFORE, AFTER))


def test_bad_gain_inputs_are_value_errors():
    bad = list(AFTER)
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="logp_after"):
        compute_gains("self", _inputs([True] * 5, BEFORE, bad))
    with pytest.raises(ValueError, match="logp_after"):
        compute_gains("self", _inputs([True] * 5, BEFORE, AFTER[:-1]))
    with pytest.raises(ValueError, match="batch"):
        compute_gains("batch", _inputs([True] * 5, BEFORE, AFTER))
