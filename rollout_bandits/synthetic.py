"""Seeded random RolloutBatches shaped like real RLVR data, for tests, benchmarks and `make run`."""

from __future__ import annotations

import torch

from rollout_bandits.batch import RolloutBatch


def synthetic_batch(
    num_groups: int = 8,
    group_size: int | tuple[int, int] = 8,
    mean_len: int = 64,
    *,
    max_len: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    with_entropy: bool = True,
    with_cur: bool = True,
    ragged: bool = True,
    pass_rate: float = 0.5,
) -> RolloutBatch:
    """`group_size` an int, or (lo, hi) for group sizes drawn uniformly in [lo, hi].

    Lengths are uniform in [1, 2 * mean_len - 1] when ragged (mean `mean_len`),
    else all `mean_len`; rollouts at `max_len` are marked truncated.
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(group_size, int):
        sizes = torch.full((num_groups,), group_size, dtype=torch.int64)
    else:
        lo, hi = group_size
        sizes = torch.randint(lo, hi + 1, (num_groups,), generator=g)
    n = int(sizes.sum())
    if ragged:
        lengths = torch.randint(1, max(2 * mean_len, 2), (n,), generator=g)
    else:
        lengths = torch.full((n,), mean_len, dtype=torch.int64)
    max_len = max_len or int(lengths.max())
    lengths = lengths.clamp_max(max_len)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    t = int(offsets[-1])
    # Log-probs of a sampled token: mostly near 0, a heavy tail of unlikely tokens.
    logprobs = -torch.empty(t).exponential_(2.0, generator=g)
    entropy = torch.rand(t, generator=g) * 2.0
    cur = logprobs + 0.05 * torch.randn(t, generator=g)
    group_ids = torch.repeat_interleave(torch.arange(num_groups), sizes)
    reward = (torch.rand(n, generator=g) < pass_rate).float()
    batch = RolloutBatch(
        token_logprobs=logprobs.to(dtype),
        offsets=offsets,
        reward=reward,
        group_ids=group_ids,
        token_entropy=entropy.to(dtype) if with_entropy else None,
        cur_logprobs=cur.to(dtype) if with_cur else None,
        age=torch.randint(0, 4, (n,), generator=g).float(),
        reuse_count=torch.randint(0, 3, (n,), generator=g).float(),
        truncated=lengths >= max_len,
        clip_ratio=torch.rand(n, generator=g) * 0.2,
        max_response_len=max_len,
    )
    return batch.to(device)
