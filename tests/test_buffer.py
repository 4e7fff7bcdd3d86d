import gc

import pytest
import torch
from _bandit_helpers import roundtrip, single_thread, states_equal  # noqa: F401  (single_thread: autouse)

from rollout_bandits.bandit.buffer import BufferConfig, RolloutBuffer
from rollout_bandits.bandit.gains import group_advantage
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.rollout_features import FEATURE_INDEX, rollout_features
from rollout_bandits.synthetic import synthetic_batch


class _Feeder:
    """Inserts seeded synthetic rounds with fresh arm ids, as the scheduler does."""

    def __init__(self, buffer, groups=4, size=4, mean_len=8, token_ids=True):
        self.buffer, self.groups, self.size, self.mean_len, self.token_ids = buffer, groups, size, mean_len, token_ids
        self.next_id = 0
        self.round = 0
        self.batches = {}

    def insert(self, scores=None, used=None):
        b = synthetic_batch(self.groups, self.size, self.mean_len, seed=self.round)
        if self.token_ids:
            b.token_ids = torch.arange(b.num_tokens) + 1000 * self.round
        n = b.num_rollouts
        b.age, b.reuse_count = torch.zeros(n), torch.zeros(n)  # fresh rollouts
        ids = self.next_id + torch.arange(n)
        self.next_id += n
        self.buffer.advance(self.round)
        stored = self.buffer.insert(
            b, contexts=rollout_features(b), arm_ids=ids, group_uids=self.groups * self.round + b.group_index(),
            prompt_ids=ids // self.size, advantage=group_advantage(b.reward, b.group_offsets),
            scores=torch.rand(n) if scores is None else scores, used=torch.zeros(n, dtype=torch.bool) if used is None else used,
            round_index=self.round)
        self.batches[self.round] = (b, ids)
        self.round += 1
        return b, ids, stored


def test_gather_returns_the_stored_rollouts_exactly():
    buf = RolloutBuffer(BufferConfig(capacity=64))
    f = _Feeder(buf)
    b, ids, stored = f.insert()
    assert torch.equal(stored, ids)
    out = buf.gather(buf.live_slots())
    out.batch.validate()
    assert torch.equal(out.arm_ids, ids)  # one round: group uid order == insertion order
    assert torch.equal(out.batch.token_logprobs, b.token_logprobs)
    assert torch.equal(out.batch.token_entropy, b.token_entropy)
    assert torch.equal(out.batch.token_ids, b.token_ids)
    assert torch.equal(out.batch.offsets, b.offsets)
    assert torch.equal(out.batch.reward, b.reward)
    assert torch.equal(out.batch.truncated, b.truncated)
    assert torch.allclose(out.batch.clip_ratio, b.clip_ratio)
    assert torch.equal(out.prompt_ids, ids // 4)


def test_clip_ratio_of_the_latest_update_reaches_features_and_gather():
    buf = RolloutBuffer(BufferConfig(capacity=64))
    b, ids, _ = _Feeder(buf).insert()
    clip = torch.linspace(0.0, 1.0, ids.numel())
    buf.set_clip_ratio(torch.cat([ids, torch.tensor([10**6])]), torch.cat([clip, torch.tensor([0.5])]))
    live = buf.live_slots()
    ctx = buf.candidate_contexts(live)
    got = buf.gather(live)
    order = torch.argsort(got.arm_ids)
    torch.testing.assert_close(got.batch.clip_ratio[order], clip)
    torch.testing.assert_close(ctx[:, FEATURE_INDEX["clip_ratio"]], clip[buf.slot["arm_id"][live]])


def test_ageing_and_staleness_columns_follow_the_rounds():
    buf = RolloutBuffer(BufferConfig(capacity=64, max_age=None))
    f = _Feeder(buf)
    b, ids, _ = f.insert()
    f.insert()
    f.insert()
    slots, found = buf.slots_of(ids)
    assert found.all()
    ctx = buf.candidate_contexts(slots)
    assert torch.equal(ctx[:, FEATURE_INDEX["age"]], b.age + 2)
    buf.mark_used(slots[:3])
    ctx = buf.candidate_contexts(slots)
    assert torch.equal(ctx[:3, FEATURE_INDEX["reuse_count"]], b.reuse_count[:3] + 1)


def test_eviction_by_age_use_count_and_window():
    buf = RolloutBuffer(BufferConfig(capacity=256, max_age=2, max_reuse=None))
    f = _Feeder(buf)
    for _ in range(6):
        f.insert()
    buf.advance(6)
    assert len(buf) and int(buf.slot["age"][buf.valid].max()) <= 2

    buf = RolloutBuffer(BufferConfig(capacity=256, max_age=None, max_reuse=2))
    f = _Feeder(buf)
    _, ids, _ = f.insert()
    slots, _ = buf.slots_of(ids[:4])
    buf.mark_used(slots)
    buf.mark_used(slots)
    f.insert()
    assert not buf.slots_of(ids[:4])[1].any() and buf.slots_of(ids[4:])[1].all()

    buf = RolloutBuffer(BufferConfig(capacity=256, max_age=None, max_reuse=None, window_rounds=2,
                                     evict_order="fifo"))
    f = _Feeder(buf)
    for _ in range(5):
        f.insert()
    buf.advance(5)  # the round being selected: candidates are exactly rounds 3 and 4
    rounds = buf.slot["round"][buf.live_slots()]
    assert sorted(set(rounds.tolist())) == [3, 4] and len(buf) == 32


@pytest.mark.parametrize("order", ["fifo", "score"])
def test_capacity_eviction_order(order):
    buf = RolloutBuffer(BufferConfig(capacity=20, max_age=None, max_reuse=None, evict_order=order))
    f = _Feeder(buf)
    _, ids0, _ = f.insert(scores=torch.arange(16).float())  # ids 0..15, score = id
    _, ids1, _ = f.insert(scores=torch.full((16,), 100.0))
    assert len(buf) == 20
    kept0 = ids0[buf.slots_of(ids0)[1]]
    assert buf.slots_of(ids1)[1].all()
    # FIFO drops the oldest (lowest ids), score drops the lowest scores (here also lowest ids).
    assert torch.equal(kept0, torch.arange(12, 16))


def test_byte_budget_is_never_exceeded_and_tokens_stay_intact():
    cfg = BufferConfig(capacity=1000, max_bytes=4000, max_age=None, max_reuse=None, evict_order="fifo")
    buf = RolloutBuffer(cfg)
    f = _Feeder(buf, mean_len=16)
    for _ in range(12):
        f.insert()
        assert buf.nbytes <= cfg.max_bytes
        assert buf.live_tokens * buf.bytes_per_token <= cfg.max_bytes
    # Every live entry still holds exactly its original tokens.
    out = buf.gather(buf.live_slots())
    for i, arm in enumerate(out.arm_ids.tolist()):
        rnd = next(r for r, (_, ids) in f.batches.items() if arm in ids.tolist())
        b, ids = f.batches[rnd]
        j = ids.tolist().index(arm)
        want = b.token_logprobs[int(b.offsets[j]): int(b.offsets[j + 1])]
        got = out.batch.token_logprobs[int(out.batch.offsets[i]): int(out.batch.offsets[i + 1])]
        assert torch.equal(want, got)


def test_mismatched_streams_are_a_value_error():
    buf = RolloutBuffer()
    f = _Feeder(buf)
    f.insert()
    f.token_ids = False
    with pytest.raises(ValueError, match="token_ids"):
        f.insert()


def test_state_dict_roundtrip_decides_identically():
    cfg = BufferConfig(capacity=40, max_bytes=6000, max_age=3, max_reuse=2)
    a = RolloutBuffer(cfg)
    f = _Feeder(a)
    for _ in range(4):
        f.insert()
    b = RolloutBuffer(cfg)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert states_equal(a.state_dict(), b.state_dict()) == []
    fa, fb = _Feeder(a), _Feeder(b)
    fa.round = fb.round = 4
    fa.next_id = fb.next_id = f.next_id
    for _ in range(3):
        torch.manual_seed(0)
        fa.insert(scores=torch.linspace(0, 1, 16))
        fb.insert(scores=torch.linspace(0, 1, 16))
        ga, gb = a.gather(a.live_slots()), b.gather(b.live_slots())
        assert torch.equal(ga.arm_ids, gb.arm_ids)
        assert torch.equal(ga.batch.token_logprobs, gb.batch.token_logprobs)
        assert torch.equal(ga.contexts, gb.contexts)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_memory_stays_flat_over_10000_cycles():
    """10,000 insert / select / evict cycles: entry count, token bytes and resident size bounded."""
    cfg = BufferConfig(capacity=256, max_bytes=96 * 1024, max_age=6, max_reuse=3, evict_order="score")
    buf = RolloutBuffer(cfg)
    g = torch.Generator().manual_seed(0)
    n, d = 16, cfg.feature_dim
    lengths = torch.randint(1, 32, (200, n), generator=g)
    base_ctx = torch.rand(n, d)
    batches = []
    for lens in lengths:  # built once: the loop measures the buffer, not batch construction
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lens, 0)
        t = int(offsets[-1])
        batches.append(RolloutBatch(token_logprobs=-torch.rand(t), offsets=offsets, reward=(lens % 2).float(),
                                    group_ids=torch.arange(n) // 4, token_entropy=torch.rand(t),
                                    token_ids=torch.arange(t)))
    next_id = 0
    rss_at_1000 = None
    for cycle in range(10_000):
        batch = batches[cycle % 200]
        buf.advance(cycle)
        live = buf.live_slots()
        if live.numel():
            scores = torch.rand(live.numel(), generator=g)
            buf.set_scores(live, scores)
            pick = live[torch.topk(scores, min(4, live.numel())).indices]
            out = buf.gather(pick)
            buf.mark_used(out.slots)
            buf.set_last_gain(out.arm_ids, torch.rand(out.arm_ids.numel(), generator=g))
        ids = next_id + torch.arange(n)
        next_id += n
        buf.insert(batch, contexts=base_ctx, arm_ids=ids, group_uids=ids // 4, prompt_ids=ids // 4,
                   advantage=torch.zeros(n), scores=torch.rand(n, generator=g),
                   used=torch.zeros(n, dtype=torch.bool), round_index=cycle)
        assert len(buf) <= cfg.capacity
        assert buf.nbytes <= cfg.max_bytes
        if cycle == 999:
            gc.collect()
            rss_at_1000 = _rss_bytes()
    gc.collect()
    growth = _rss_bytes() - rss_at_1000
    assert growth < 8 * 2**20, f"resident size grew by {growth / 2**20:.1f} MiB over 9,000 cycles"
    assert buf.evicted_total > 100_000
