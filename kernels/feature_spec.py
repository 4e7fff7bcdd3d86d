"""What the rollout features are, shared by every path that computes them.

The Triton kernel, the PyTorch reference, the fast CPU path and the float64
oracle (kernels/naive.py) all follow the definitions in kernels/rollout_features.py;
this module holds the pieces they share: the column names, the config, the
rank of the low quantile, and the group statistics of the reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.validation import check_field_types, check_float

FEATURE_NAMES: tuple[str, ...] = (
    "reward",
    "group_reward_mean",
    "group_reward_std",
    "advantage",
    "logp_mean",
    "logp_min",
    "logp_low_quantile",
    "entropy_mean",
    "log_ratio_abs_mean",
    "log_ratio_abs_max",
    "length_frac",
    "truncated",
    "age",
    "reuse_count",
    "clip_ratio",
)
NUM_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

# floor(q * (n - 1)) is taken in float64 with this slack, so that q = 0.65, n = 181 gives 117 although
# 0.65 is not a binary fraction (group_topk does the same for ratios with ceil(.) - 1e-9).
QUANTILE_SLACK = 1e-9


@dataclass(frozen=True)
class FeatureConfig:
    """low_quantile: q of the nearest-rank low quantile of each rollout's log-probs.
    std_eps: added to the group reward std before dividing the advantage by it."""

    low_quantile: float = 0.1
    std_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_field_types(self)
        check_float("FeatureConfig", "low_quantile", self.low_quantile, 0.0, 1.0)
        check_float("FeatureConfig", "std_eps", self.std_eps, 0.0, lo_open=True)


def quantile_rank(q: float, counts: torch.Tensor) -> torch.Tensor:
    """0-based rank floor(q * (n - 1)) of the low quantile among n counted tokens, int64 (0 when n = 0)."""
    last = (counts.to(torch.int64) - 1).clamp_min(0)
    k = torch.floor(float(q) * last.to(torch.float64) + QUANTILE_SLACK).to(torch.int64)
    return torch.minimum(k, last)


def max_len(batch: RolloutBatch) -> tuple[int, int]:
    """(longest rollout, the length_frac denominator: max_response_len, else the longest, at least 1)."""
    longest = int(batch.lengths.max()) if batch.num_rollouts else 0
    return longest, batch.max_response_len or max(longest, 1)


def _segment_sum(values: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    return torch.segment_reduce(values, "sum", lengths=sizes, unsafe=True)


def group_reward_stats(batch: RolloutBatch, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per rollout, float64: its group's reward mean and population std, and its advantage
    (r - mean) / (std + eps).

    Deviations are taken from a pivot (the group's first reward) in float64, so a group whose
    rewards are all equal has exactly 0 deviations, std and advantage whatever the reward's
    binary representation (a float32 mean of 7 x 100.1 leaves a residue that / (std + eps) blows up).
    """
    r = batch.reward.to(torch.float64)
    sizes = batch.group_sizes
    n = r.numel()
    gidx = torch.repeat_interleave(torch.arange(sizes.numel(), device=r.device), sizes, output_size=n)
    pivot = r[batch.group_offsets[:-1].to(torch.int64)][gidx]
    d = r - pivot
    mean_d = torch.repeat_interleave(_segment_sum(d, sizes) / sizes, sizes, output_size=n)
    dev = d - mean_d
    std = torch.repeat_interleave((_segment_sum(dev * dev, sizes) / sizes).sqrt(), sizes, output_size=n)
    return pivot + mean_d, std, dev / (std + eps)


def assemble(batch: RolloutBatch, cfg: FeatureConfig, lp_mean, lp_min, lp_q, ent_mean, r_mean, r_max,
             length_frac) -> torch.Tensor:
    """The [N, NUM_FEATURES] float32 contexts from the per-rollout token statistics (each rounded to
    float32 once, here) and the group statistics of the reward."""
    g_mean, g_std, adv = group_reward_stats(batch, cfg.std_eps)
    cols = [batch.reward, g_mean, g_std, adv, lp_mean, lp_min, lp_q, ent_mean, r_mean, r_max, length_frac,
            batch.per_rollout("truncated"), batch.per_rollout("age"), batch.per_rollout("reuse_count"),
            batch.per_rollout("clip_ratio")]
    return torch.stack([c.to(torch.float32) for c in cols], dim=1)


def prepare(batch: RolloutBatch, config: FeatureConfig | None, validate: bool) -> FeatureConfig:
    """What every features path does first: the config (defaults when None) and, when asked, the
    batch's validation."""
    if validate:
        batch.validate()
    return config or FeatureConfig()


def empty_features(batch: RolloutBatch) -> torch.Tensor:
    """The contexts of a batch with 0 rollouts."""
    return torch.zeros((0, NUM_FEATURES), dtype=torch.float32, device=batch.device)
