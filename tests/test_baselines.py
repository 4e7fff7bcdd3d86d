import itertools

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit import Scheduler, SchedulerConfig
from rollout_bandits.bandit.baselines import dapo_filter, max_variance, random_k
from rollout_bandits.synthetic import synthetic_batch


def _batch(t):
    b = synthetic_batch(5, (3, 9), 10, seed=200 + t)
    b.age, b.reuse_count = torch.zeros(b.num_rollouts), torch.zeros(b.num_rollouts)
    return b


def test_keep_all_is_plain_grpo():
    s = Scheduler(SchedulerConfig(policy="keep_all"))
    b = _batch(0)
    step = s.select(b)
    assert step.fresh.mask.all() and step.reused is None
    s.observe(step.arm_ids, torch.zeros(step.arm_ids.numel()))  # accepted, nothing to learn
    assert s.stats()["selection_rate"] == 1.0


def test_random_k_counts_and_seeded():
    go = torch.tensor([0, 3, 11, 16])
    a = random_k(go, k=2, generator=torch.Generator().manual_seed(0))[1]
    b = random_k(go, k=2, generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(a, b)
    assert [int(a[go[i]:go[i + 1]].sum()) for i in range(3)] == [2, 2, 2]
    r = random_k(go, ratio=0.5, generator=torch.Generator().manual_seed(1))[1]
    assert [int(r[go[i]:go[i + 1]].sum()) for i in range(3)] == [2, 4, 3]


def test_pods_max_variance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 4, 6]
    go = torch.tensor([0] + list(itertools.accumulate(sizes)))
    rewards = torch.randint(0, 4, (sum(sizes),), generator=g).float() / 3
    for k in (1, 2, 3, 4):
        _, mask = max_variance(rewards, go, k=k)
        for i, n in enumerate(sizes):
            r = rewards[go[i]:go[i + 1]].double()
            kk = min(k, n)
            best = max(r[list(c)].var(unbiased=False).item() for c in itertools.combinations(range(n), kk))
            chosen = r[mask[go[i]:go[i + 1]]]
            assert chosen.numel() == kk
            assert chosen.var(unbiased=False).item() == pytest.approx(best, abs=1e-9)


def test_dapo_filter_drops_zero_variance_groups():
    go = torch.tensor([0, 3, 6, 8])
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    _, mask = dapo_filter(rewards, go)
    assert mask.tolist() == [False] * 3 + [True] * 3 + [False] * 2


@pytest.mark.parametrize("policy", ["keep_all", "random_k", "pods", "dapo_filter", "reuse_fifo"])
def test_every_baseline_runs_behind_the_scheduler_interface(policy):
    cfg = SchedulerConfig(policy=policy, intra_k=2, reuse_m=4, gain="self")
    s = Scheduler(cfg)
    for t in range(3):
        step = s.select(_batch(t), prompt_ids=torch.arange(5))
        step.train_batch.validate()
        gb = step.gain_batch
        arms = s.observe_step(step, step.default_logp_before() + 0.01)
        assert arms.arm_ids.numel() == step.arm_ids.numel()
        assert set(arms.arm_ids.tolist()) == set(step.arm_ids.tolist())
        assert gb.num_rollouts == step.batch.num_rollouts + step.num_reused
    st = s.stats()
    assert st["round"] == 3 and st["policy"] == policy
    resumed = Scheduler(cfg)
    resumed.load_state_dict(roundtrip(s.state_dict()))
    assert torch.equal(s.select(_batch(3)).arm_ids, resumed.select(_batch(3)).arm_ids)


def test_reuse_fifo_replays_the_oldest_window_rollouts_without_learning():
    s = Scheduler(SchedulerConfig(policy="reuse_fifo", reuse_m=5, window_rounds=3, gain="batch"))
    first = s.select(_batch(0))
    second = s.select(_batch(1))
    assert torch.equal(torch.sort(second.reused.arm_ids).values, first.fresh_arm_ids[:5])
    third = s.select(_batch(2))
    # Round 0's first five were used once; FIFO takes the next oldest (ties broken by insertion order).
    assert torch.equal(torch.sort(third.reused.arm_ids).values, first.fresh_arm_ids[5:10])
    assert s.learner is None


def test_max_variance_by_score_keeps_the_composition_and_follows_the_score():
    from rollout_bandits.bandit.baselines import max_variance_by_score

    g = torch.Generator().manual_seed(3)
    for _trial in range(20):
        sizes = torch.randint(1, 10, (6,), generator=g)
        go = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
        n = int(go[-1])
        r = torch.randint(0, 3, (n,), generator=g).float() / 2
        s = torch.randn(n, generator=g)
        _, pods = max_variance(r, go, ratio=0.5)
        idx, mask = max_variance_by_score(r, go, s, ratio=0.5)
        assert torch.equal(idx, torch.nonzero(mask).flatten())
        for i in range(6):
            a, b = int(go[i]), int(go[i + 1])
            # Same multiset of rewards as PODS keeps ...
            assert sorted(r[a:b][mask[a:b]].tolist()) == sorted(r[a:b][pods[a:b]].tolist())
            # ... and within each reward value the kept ones out-score the dropped ones.
            for v in r[a:b].unique():
                same = r[a:b] == v
                kept, dropped = s[a:b][same & mask[a:b]], s[a:b][same & ~mask[a:b]]
                if kept.numel() and dropped.numel():
                    assert kept.min() >= dropped.max()


def test_cbs_with_the_max_variance_rule():
    s = Scheduler(SchedulerConfig(intra_rule="max_variance"))
    for t in range(3):
        b = _batch(t)
        step = s.select(b)
        _, pods = max_variance(b.reward, b.group_offsets, ratio=0.5)
        assert int(step.fresh.mask.sum()) == int(pods.sum())
        s.observe(step.arm_ids, torch.randn(step.arm_ids.numel()))
    with pytest.raises(ValueError, match="intra_rule"):
        SchedulerConfig(intra_rule="best")
