"""Losses against values computed by hand."""

import math

import pytest
import torch

from rollout_bandits.trainer.losses import LossConfig, clipped_surrogate, group_advantages, policy_loss


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    go = torch.tensor([0, 3, 4, 5])  # groups {1,0,0}, {1}, {1}
    a = group_advantages(r, go, normalize_std=False)
    torch.testing.assert_close(a, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0]))
    a = group_advantages(r, go, normalize_std=True, eps=0.0 + 1e-12)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 3)
    torch.testing.assert_close(a[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / std)
    assert a[3] == 0 and a[4] == 0


def _two_rollouts():
    # rollout 0: 2 tokens, A = +1; rollout 1: 1 token, A = -1
    old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.5, 0.75, 0.25]))  # ratios 1.0, 1.5, 0.5
    return new, old, torch.tensor([1.0, -1.0]), torch.tensor([0, 2, 3])


def test_grpo_sequence_mean_by_hand():
    new, old, adv, off = _two_rollouts()
    out = clipped_surrogate(new, old, adv, off, clip_low=0.2, clip_high=0.2, aggregation="seq_mean")
    # token losses: -min(1*1, 1*1) = -1; -min(1.5, 1.2) = -1.2; -min(-0.5, -0.8) = 0.8
    expected = ((-1.0 - 1.2) / 2 + 0.8) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(out.clip_ratio, torch.tensor([0.5, 1.0]))


def test_dapo_token_mean_and_clip_higher_by_hand():
    new, old, adv, off = _two_rollouts()
    out = clipped_surrogate(new, old, adv, off, clip_low=0.2, clip_high=0.28, aggregation="token_mean")
    expected = (-1.0 - 1.28 + 0.8) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_dr_grpo_constant_normalizer_by_hand():
    new, old, adv, off = _two_rollouts()
    out = clipped_surrogate(new, old, adv, off, clip_low=0.2, clip_high=0.2, aggregation="constant", max_len=4)
    expected = ((-1.0 - 1.2) / 4 + 0.8 / 4) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_reinforce_on_policy():
    logits = torch.zeros(3, requires_grad=True)
    logp = torch.log_softmax(torch.stack([logits, torch.zeros(3)], 1), 1)[:, 0]
    out = clipped_surrogate(logp, logp.detach(), torch.tensor([2.0]), torch.tensor([0, 3]),
                            clip_low=0.2, clip_high=0.2, aggregation="seq_mean")
    out.loss.backward()
    # d/dlogit of -A * mean(log sigmoid(logit)) at 0 = -A * 0.5 / 3
    torch.testing.assert_close(logits.grad, torch.full((3,), -2.0 * 0.5 / 3))


def test_reused_rollouts_without_weighting_train_as_on_policy():
    new, old, adv, off = _two_rollouts()
    reused = torch.tensor([True, False])
    plain = policy_loss(LossConfig("grpo", reuse_weighting="none"), new, old, adv, off, reused=reused)
    # rollout 0 now has ratio 1 on both tokens: loss -1; rollout 1 unchanged: 0.8
    assert plain.loss.item() == pytest.approx((-1.0 + 0.8) / 2, rel=1e-6)
    is_w = policy_loss(LossConfig("grpo", reuse_weighting="clipped_is"), new, old, adv, off, reused=reused)
    assert is_w.loss.item() == pytest.approx(((-1.0 - 1.2) / 2 + 0.8) / 2, rel=1e-6)


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="LossConfig.name"):
        LossConfig("ppo2")
    with pytest.raises(ValueError, match="reuse_weighting"):
        LossConfig(reuse_weighting="full_is")
    with pytest.raises(ValueError, match="clip_low"):
        LossConfig(clip_low=1.5)
    new, old, adv, off = _two_rollouts()
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(new, old, adv[:1], off, clip_low=0.2, clip_high=0.2, aggregation="seq_mean")
    with pytest.raises(ValueError, match="aggregation"):
        clipped_surrogate(new, old, adv, off, clip_low=0.2, clip_high=0.2, aggregation="sum")
