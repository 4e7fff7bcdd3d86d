"""schedule: the fused scheduling pipeline, features -> neural-UCB score -> per-group top-k.

On CUDA tensors (backend "auto" or "triton") it is three Triton launches
(rollout_features, ucb_score, group_topk) plus one `nonzero` for the index
list; the token streams, the only large input, are read once, by the first
launch. On CPU tensors ("auto" is "cpu" there) the same three steps run their
fast CPU paths; "reference" runs the vectorized PyTorch formulation anywhere.
All give the same contexts and scores up to float tolerance, and the same
selection wherever two scores of a group are not within tolerance of a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.group_topk import group_topk
from rollout_bandits.kernels.rollout_features import NUM_FEATURES, FeatureConfig, rollout_features
from rollout_bandits.kernels.ucb_score import ScorerWeights, ucb_score
from rollout_bandits.validation import describe, fail, resolve_backend


@dataclass
class Selection:
    """What `schedule` decided: `indices` [K] int64 ascending and `mask` [N] bool of the kept
    rollouts, with the per-rollout `scores` = `mean` + `bonus` [N] and the `contexts` [N, D]."""

    indices: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    mean: torch.Tensor
    bonus: torch.Tensor
    contexts: torch.Tensor

    @property
    def num_selected(self) -> int:
        return int(self.indices.numel())


def schedule(batch: RolloutBatch, weights: ScorerWeights, *, k: int | None = None,
             ratio: float | None = None, keep_contrast: bool = True,
             feature_config: FeatureConfig | None = None, backend: str = "auto",
             validate: bool = True) -> Selection:
    """Score every rollout of `batch` and keep the top k (or ceil(ratio * size)) per group.

    Selection rules (k clipping, keep-contrast on `batch.reward`): see kernels/group_topk.py.
    backend: one of validation.BACKENDS (auto: Triton on CUDA, the CPU paths on the CPU). `validate=False`
    skips the checks that read whole tensors (and sync a GPU), for trusted producers.
    """
    if not isinstance(batch, RolloutBatch):
        fail("schedule", "batch", describe(batch), "a RolloutBatch")
    if not isinstance(weights, ScorerWeights):
        fail("schedule", "weights", describe(weights), "ScorerWeights")
    resolve_backend(backend, batch.device, "schedule")
    if batch.offsets.dim() != 1 or batch.num_rollouts < 1:
        fail("schedule", "batch", "an empty batch (0 rollouts)", "at least one rollout")
    if (k is None) == (ratio is None):
        fail("schedule", "k", f"k={k!r} and ratio={ratio!r}", "exactly one of k and ratio")
    # Cheap checks first, before any launch.
    weights.validate(num_features=NUM_FEATURES)
    if weights.device != batch.device:
        fail("schedule", "weights", f"device {weights.device}", f"the device of the batch, {batch.device}")
    contexts = rollout_features(batch, feature_config, backend=backend, validate=validate)
    scores, mean, bonus = ucb_score(contexts, weights, backend=backend, validate=False)
    indices, mask = group_topk(scores, batch.group_offsets, k=k, ratio=ratio, rewards=batch.reward,
                               keep_contrast=keep_contrast, backend=backend, validate=validate)
    return Selection(indices=indices, mask=mask, scores=scores, mean=mean, bonus=bonus, contexts=contexts)
