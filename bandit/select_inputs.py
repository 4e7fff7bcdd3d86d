"""What `Scheduler.select` accepts besides the batch, checked and brought to one form each."""

from __future__ import annotations

import torch

from rollout_bandits.bandit.gains import group_advantage, group_centered_reward
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.validation import all_finite, check_tensor, describe, fail, shape_str

_SEL = "Scheduler.select"


def prompt_ids_per_rollout(prompt_ids, batch: RolloutBatch) -> torch.Tensor:
    """[N] int64 ids (-1: not given) from ids per group [G] or per rollout [N]."""
    n, g = batch.num_rollouts, batch.num_groups
    if prompt_ids is None:
        return torch.full((n,), -1, dtype=torch.int64)
    want = f"integer ids, one per group [{g}] or per rollout [{n}]"
    try:
        p = torch.as_tensor(prompt_ids)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        fail(_SEL, "prompt_ids", describe(prompt_ids), want)
    if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool or p.dim() != 1 or \
            p.numel() not in (g, n):
        fail(_SEL, "prompt_ids", f"{shape_str(p)} {p.dtype}", want)
    p = p.cpu().to(torch.int64)
    return torch.repeat_interleave(p, batch.group_sizes.cpu()) if p.numel() == g and g != n else p


def prompt_tokens_per_rollout(prompt_tokens, batch: RolloutBatch) -> list | None:
    """[N] int64 tensors (shared by a group's rollouts) from sequences per group or per rollout."""
    if prompt_tokens is None:
        return None
    n, g = batch.num_rollouts, batch.num_groups
    if not isinstance(prompt_tokens, (list, tuple)) or len(prompt_tokens) not in (g, n):
        found = describe(prompt_tokens) + (f" of {len(prompt_tokens)}" if isinstance(prompt_tokens, (list, tuple))
                                           else "")
        fail(_SEL, "prompt_tokens", found, f"a list of token id sequences, one per group [{g}] or rollout [{n}]")
    out = []
    for i, p in enumerate(prompt_tokens):
        t = None
        if isinstance(p, torch.Tensor) and p.dim() == 1 and not (
                p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool):
            t = p.detach().to("cpu", torch.int64)
        elif isinstance(p, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in p):
            try:
                t = torch.tensor(p, dtype=torch.int64).reshape(-1)
            except (OverflowError, RuntimeError, ValueError):
                t = None
        if t is None:
            fail(_SEL, "prompt_tokens", f"entry {i}: {describe(p)}", "a 1-D integer tensor or a list of int64 ids")
        out.append(t)
    if len(out) == g and g != n:
        out = [out[i] for i in batch.group_index().cpu().tolist()]
    return out


def advantages(advantage, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage, centered advantage) [N]: GRPO's and Dr.GRPO's, or the trainer's own twice."""
    r, go = batch.reward.detach().cpu(), batch.group_offsets.cpu()
    if advantage is None:
        return group_advantage(r, go), group_centered_reward(batch)
    n = batch.num_rollouts
    a = check_tensor(_SEL, "advantage", advantage, shape=(n,), kind="float", expected=f"[{n}] (one per rollout)")
    a = a.detach().to("cpu", torch.float32)
    if not all_finite(a):
        i = int(torch.nonzero(~torch.isfinite(a))[0])
        fail(_SEL, "advantage", f"{a[i].item()} at rollout {i}", "finite advantages (in float32)")
    return a, a
