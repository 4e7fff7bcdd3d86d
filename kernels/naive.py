"""Plain oracles of the three kernels, written from their documented definitions.

One Python loop over rollouts or groups, no vectorization tricks, float64 (or
exact) arithmetic: slow and obviously correct. The tests hold the Triton kernels
and the fast paths (the vectorized PyTorch references, the numpy CPU backend) to
these. The definitions are in the module docstrings of kernels/rollout_features.py,
kernels/ucb_score.py and kernels/group_topk.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.feature_spec import FEATURE_INDEX, NUM_FEATURES, QUANTILE_SLACK, FeatureConfig


def _counted(values: torch.Tensor, keep: torch.Tensor) -> list[float]:
    return values.double()[keep].tolist()


def rollout_features_naive(batch: RolloutBatch, config: FeatureConfig | None = None) -> torch.Tensor:
    """[N, NUM_FEATURES] float64, exact up to one float64 rounding per feature (math.fsum sums,
    rational group statistics)."""
    cfg = config or FeatureConfig()
    n = batch.num_rollouts
    out = torch.zeros(n, NUM_FEATURES, dtype=torch.float64)
    off = batch.offsets.tolist()
    longest = max((off[i + 1] - off[i] for i in range(n)), default=0)
    denom = batch.max_response_len or max(longest, 1)

    def mean(xs: list[float]) -> float:
        return math.fsum(xs) / len(xs) if xs else 0.0

    for i in range(n):
        s, e = off[i], off[i + 1]
        lp = batch.token_logprobs[s:e].double()
        finite = torch.isfinite(lp) if batch.mask_nonfinite else torch.ones_like(lp, dtype=torch.bool)
        row = _counted(lp, finite)
        srt = sorted(row)
        rank = min(math.floor(cfg.low_quantile * max(len(row) - 1, 0) + QUANTILE_SLACK), max(len(row) - 1, 0))
        x = {"logp_mean": mean(row), "logp_min": srt[0] if row else 0.0,
             "logp_low_quantile": srt[rank] if row else 0.0, "length_frac": (e - s) / denom}
        if batch.token_entropy is not None:
            ent = batch.token_entropy[s:e].double()
            x["entropy_mean"] = mean(_counted(ent, torch.isfinite(ent) if batch.mask_nonfinite else finite))
        if batch.cur_logprobs is not None:
            cur = batch.cur_logprobs[s:e].double()
            both = finite & torch.isfinite(cur) if batch.mask_nonfinite else finite
            ratio = [abs(c - p) for c, p in zip(_counted(cur, both), _counted(lp, both), strict=True)]
            x["log_ratio_abs_mean"] = mean(ratio)
            x["log_ratio_abs_max"] = max(ratio, default=0.0)
        for name in ("truncated", "age", "reuse_count", "clip_ratio"):
            v = getattr(batch, name)
            x[name] = float(v[i]) if v is not None else 0.0
        for name, v in x.items():
            out[i, FEATURE_INDEX[name]] = v

    goff = batch.group_offsets.tolist()
    for g in range(len(goff) - 1):
        a, b = goff[g], goff[g + 1]
        rewards = [Fraction(float(r)) for r in batch.reward[a:b].double().tolist()]
        mu = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mu) ** 2 for r in rewards) / len(rewards))
        for i, r in zip(range(a, b), rewards, strict=True):
            out[i, FEATURE_INDEX["reward"]] = float(r)
            out[i, FEATURE_INDEX["group_reward_mean"]] = float(mu)
            out[i, FEATURE_INDEX["group_reward_std"]] = std
            out[i, FEATURE_INDEX["advantage"]] = float((r - mu) / Fraction(std + cfg.std_eps))
    return out


def ucb_score_naive(x: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, mean, bonus) [N] float64, one row at a time: h = act(x W1 + b1), phi = act(h W2 + b2),
    mean = phi . w3 + b3, bonus = gamma sqrt(phi^T Zinv phi) (Zinv = diag(zinv_diag) if diagonal)."""
    w = weights
    d64 = lambda t: t.detach().double().cpu()  # noqa: E731
    w1, b1, w2, b2, w3, b3 = (d64(t) for t in (w.w1, w.b1, w.w2, w.b2, w.w3, w.b3))
    zinv = d64(w.zinv) if w.zinv is not None else torch.diag(d64(w.zinv_diag))

    def act(z: torch.Tensor) -> torch.Tensor:
        if w.activation == "gelu":
            return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))
        return z.clamp_min(0.0)

    rows = []
    for xi in d64(x):
        phi = act(act(xi @ w1 + b1) @ w2 + b2)
        mean = float(phi @ w3 + b3)
        bonus = float(w.gamma) * math.sqrt(max(float(phi @ zinv @ phi), 0.0))
        rows.append((mean + bonus, mean, bonus))
    score, mean, bonus = torch.tensor(rows, dtype=torch.float64).reshape(-1, 3).unbind(1)
    return score, mean, bonus


def _order(scores: list[float], members) -> list[int]:
    """Higher score first, ties by the lower index (-0.0 == 0.0 in Python's float order)."""
    return sorted(members, key=lambda i: (-scores[i], i))


def group_topk_naive(scores: torch.Tensor, group_offsets: torch.Tensor, *, k: int | None = None,
                     ratio: float | None = None, rewards: torch.Tensor | None = None,
                     keep_contrast: bool = True) -> torch.Tensor:
    """bool [N] mask of the kept rollouts, one group at a time by the rules of kernels/group_topk.py."""
    s, off = scores.float().tolist(), group_offsets.tolist()
    r = rewards.float().tolist() if rewards is not None and keep_contrast else None
    keep = [False] * len(s)
    for g in range(len(off) - 1):
        a, b = off[g], off[g + 1]
        size = b - a
        kg = min(k, size) if k is not None else min(max(math.ceil(ratio * size - 1e-9), 1), size)
        order = _order(s, range(a, b))
        top = order[:kg]
        if r is not None and max(r[a:b]) > min(r[a:b]):
            lo = min(r[a:b])
            top = order[: max(kg, 2)]
            kinds = {r[i] > lo for i in top}
            if len(kinds) == 1:
                missing = not kinds.pop()
                top = top[:-1] + [next(i for i in order if (r[i] > lo) == missing)]
        for i in top:
            keep[i] = True
    return torch.tensor(keep, dtype=torch.bool)


def global_topm_naive(scores: torch.Tensor, m: int) -> torch.Tensor:
    """bool [N] mask of the m best scores (all when m >= N), ties by the lower index."""
    s = scores.float().tolist()
    keep = torch.zeros(len(s), dtype=torch.bool)
    keep[_order(s, range(len(s)))[:m]] = True
    return keep
