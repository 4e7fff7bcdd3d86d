"""Fresh-batch selection rules of the baselines the scheduler is compared with.

Each returns (indices int64 ascending, mask bool [N]) like `group_topk`, so the
Scheduler runs them behind the same interface (SchedulerConfig.policy):
- keep_all:    plain GRPO, every rollout.
- random_k:    uniform random k (or ceil(ratio * n_g)) per group.
- max_variance (PODS, Xu et al. 2025): per group the k rollouts whose rewards have the largest
  variance. The best size-k subset by variance is always "the i lowest plus the k - i highest"
  rewards for some i, so trying every i is exact.
- dapo_filter: DAPO dynamic sampling, drop groups whose rewards are all equal (zero advantage).
- max_variance_by_score [ours]: the subset composition of max_variance (how many rollouts of each
  reward value a group keeps), with the rollouts inside each reward value chosen by a score (the
  CBS scheduler's `intra_rule="max_variance"`).
The reuse-only baseline (`reuse_fifo`) is a policy of the Scheduler: keep-all plus replay of
the oldest window rollouts, without learning.
"""

from __future__ import annotations

import torch

from rollout_bandits.batch import group_index
from rollout_bandits.validation import fail, shape_str


def _sizes(group_offsets: torch.Tensor) -> torch.Tensor:
    return (group_offsets[1:] - group_offsets[:-1]).to(torch.int64).cpu()


def per_group_k(group_offsets: torch.Tensor, k: int | None, ratio: float | None) -> torch.Tensor:
    """k_g as group_topk computes it: min(k, n_g), or ceil(ratio * n_g) clipped to [1, n_g]."""
    sizes = _sizes(group_offsets)
    if k is not None:
        return sizes.clamp_max(k)
    kg = torch.ceil(sizes.double() * float(ratio) - 1e-9).to(torch.int64)
    return torch.minimum(kg.clamp_min(1), sizes)


def _finish(mask: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.to(device)
    return torch.nonzero(mask).flatten(), mask


def keep_all(group_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(group_offsets[-1])
    return _finish(torch.ones(n, dtype=torch.bool), group_offsets.device)


def random_k(group_offsets: torch.Tensor, *, k: int | None = None, ratio: float | None = None,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = _sizes(group_offsets)
    gidx = group_index(group_offsets.cpu())
    starts = torch.cumsum(sizes, 0) - sizes
    keys = torch.rand(int(sizes.sum()), generator=generator)
    perm = torch.argsort(keys)
    perm = perm[torch.sort(gidx[perm], stable=True).indices]
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(perm.numel()) - starts[gidx[perm]]
    kg = per_group_k(group_offsets, k, ratio)
    return _finish(rank < kg[gidx], group_offsets.device)


def max_variance(rewards: torch.Tensor, group_offsets: torch.Tensor, *, k: int | None = None,
                 ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PODS max-variance down-sampling, vectorized over groups (loop over the split point i <= k)."""
    sizes = _sizes(group_offsets)
    g, smax = sizes.numel(), int(sizes.max())
    gidx = group_index(group_offsets.cpu())
    starts = torch.cumsum(sizes, 0) - sizes
    r = rewards.detach().cpu().double()
    # Rows of rewards sorted ascending within each group, padded.
    order = torch.argsort(r, stable=True)
    order = order[torch.sort(gidx[order], stable=True).indices]
    pos = torch.arange(r.numel()) - starts[gidx[order]]
    vals = torch.zeros(g, smax, dtype=torch.float64)
    vals[gidx[order], pos] = r[order]
    csum = torch.zeros(g, smax + 1, dtype=torch.float64)
    csum[:, 1:] = torch.cumsum(vals, 1)
    csq = torch.zeros(g, smax + 1, dtype=torch.float64)
    csq[:, 1:] = torch.cumsum(vals * vals, 1)
    kg = per_group_k(group_offsets, k, ratio)
    rows = torch.arange(g)
    best_var = torch.full((g,), -1.0, dtype=torch.float64)
    best_i = torch.zeros(g, dtype=torch.int64)
    for i in range(int(kg.max()) + 1):
        ok = i <= kg
        lo = torch.minimum(torch.full_like(kg, i), kg)
        hi_n = kg - lo  # the hi_n largest: sorted positions [n_g - hi_n, n_g)
        s = csum[rows, lo] + csum[rows, sizes] - csum[rows, sizes - hi_n]
        q = csq[rows, lo] + csq[rows, sizes] - csq[rows, sizes - hi_n]
        var = q / kg - (s / kg) ** 2
        better = ok & (var > best_var + 1e-12)
        best_var = torch.where(better, var, best_var)
        best_i = torch.where(better, lo, best_i)
    p = pos
    grp = gidx[order]
    take = (p < best_i[grp]) | (p >= (sizes - (kg - best_i))[grp])
    mask = torch.zeros(r.numel(), dtype=torch.bool)
    mask[order[take]] = True
    return _finish(mask, group_offsets.device)


def max_variance_by_score(rewards: torch.Tensor, group_offsets: torch.Tensor, scores: torch.Tensor, *,
                          k: int | None = None, ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, as many rollouts of each reward value as `max_variance` keeps (so the same,
    maximal, reward variance: a subset's variance depends only on its reward values), picking the
    highest-`scores` rollouts within each reward value. Ties in score keep the earlier rollout."""
    sizes = _sizes(group_offsets)
    n = int(sizes.sum())
    if scores.shape != (n,):
        fail("max_variance_by_score", "scores", f"shape {shape_str(scores)}", f"[{n}]")
    _, pods = max_variance(rewards, group_offsets, k=k, ratio=ratio)
    gidx = group_index(group_offsets.cpu())
    r = rewards.detach().cpu().double()
    _, block = torch.unique(torch.stack([gidx.double(), r], 1), dim=0, return_inverse=True)
    nb = int(block.max()) + 1 if n else 0
    quota = torch.zeros(nb, dtype=torch.int64).index_add_(0, block, pods.cpu().to(torch.int64))
    order = torch.argsort(-scores.detach().cpu().double(), stable=True)
    order = order[torch.sort(block[order], stable=True).indices]
    counts = torch.zeros(nb, dtype=torch.int64).index_add_(0, block, torch.ones(n, dtype=torch.int64))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[block[order]]
    return _finish(rank < quota[block], group_offsets.device)


def dapo_filter(rewards: torch.Tensor, group_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = _sizes(group_offsets)
    gidx = group_index(group_offsets.cpu())
    r = rewards.detach().cpu().float()
    rmin = torch.full((sizes.numel(),), float("inf")).scatter_reduce(0, gidx, r, "amin")
    rmax = torch.full((sizes.numel(),), -float("inf")).scatter_reduce(0, gidx, r, "amax")
    return _finish((rmax > rmin)[gidx], group_offsets.device)
