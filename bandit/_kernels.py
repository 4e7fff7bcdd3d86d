"""The kernels the scheduler calls, with a stand-in for `kernels.schedule` until it lands.

`rollout_bandits.kernels.schedule` (fused features -> score -> select) is
written in parallel; while it is missing, `schedule` here composes the three
public kernels with the same signature, so the scheduler's code does not change
when the fused version appears.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.kernels.group_topk import global_topm, group_topk
from rollout_bandits.kernels.rollout_features import FeatureConfig, rollout_features
from rollout_bandits.kernels.ucb_score import ScorerWeights, ucb_score

try:  # pragma: no cover - depends on the parallel kernels work
    from rollout_bandits.kernels.schedule import Selection, schedule

    HAVE_FUSED_SCHEDULE = True
except ImportError:
    HAVE_FUSED_SCHEDULE = False

    @dataclass
    class Selection:
        """Fresh-batch selection: kept `indices` (ascending) and `mask` [N], per-rollout
        `scores`/`mean`/`bonus` [N] and the raw `contexts` [N, D] they were computed from."""

        indices: torch.Tensor
        mask: torch.Tensor
        scores: torch.Tensor
        mean: torch.Tensor
        bonus: torch.Tensor
        contexts: torch.Tensor

    def schedule(batch, weights: ScorerWeights, *, k=None, ratio=None, keep_contrast=True,
                 feature_config: FeatureConfig | None = None, backend: str = "auto") -> Selection:
        """Unfused stand-in: the three kernels one after another."""
        contexts = rollout_features(batch, feature_config, backend=backend)
        score, mean, bonus = ucb_score(contexts, weights, backend=backend)
        indices, mask = group_topk(score, batch.group_offsets, k=k, ratio=ratio, rewards=batch.reward,
                                   keep_contrast=keep_contrast, backend=backend)
        return Selection(indices, mask, score, mean, bonus, contexts)


__all__ = [
    "HAVE_FUSED_SCHEDULE",
    "FeatureConfig",
    "ScorerWeights",
    "Selection",
    "global_topm",
    "group_topk",
    "rollout_features",
    "schedule",
    "ucb_score",
]
