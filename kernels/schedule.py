"""schedule: the fused scheduling pipeline, features -> neural-UCB score -> per-group top-k.

On CUDA tensors (backend "auto" or "triton") it is three Triton launches
(rollout_features, ucb_score, group_topk); the token streams, the only large
input, are read once, by the first launch. With validate=False nothing is read
back on the host (the index list is taken from the mask when first read), so
the call can be captured in a CUDA graph. On CPU tensors ("auto" is "cpu" there) the same three steps run their
fast CPU paths; "reference" runs the vectorized PyTorch formulation anywhere.
All give the same contexts and scores up to float tolerance, and the same
selection wherever two scores of a group are not within tolerance of a tie.
"""

from __future__ import annotations

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.group_topk import group_topk, group_topk_mask
from rollout_bandits.kernels.rollout_features import NUM_FEATURES, FeatureConfig, rollout_features
from rollout_bandits.kernels.ucb_score import ScorerWeights, ucb_score
from rollout_bandits.validation import describe, fail, resolve_backend, use_triton


class Selection:
    """What `schedule` decided: `indices` [K] int64 ascending and `mask` [N] bool of the kept
    rollouts, with the per-rollout `scores` = `mean` + `bonus` [N] and the `contexts` [N, D].

    `indices` may be given as None: it is then taken from `mask` when first read. `schedule`
    leaves it so, because the index list's length is data (its `nonzero` waits for the GPU),
    and the call itself launches without a host sync (it can be captured in a CUDA graph).
    """

    __slots__ = ("_indices", "mask", "scores", "mean", "bonus", "contexts")

    def __init__(self, indices: torch.Tensor | None, mask: torch.Tensor, scores: torch.Tensor,
                 mean: torch.Tensor, bonus: torch.Tensor, contexts: torch.Tensor) -> None:
        self._indices = indices
        self.mask, self.scores, self.mean, self.bonus, self.contexts = mask, scores, mean, bonus, contexts

    @property
    def indices(self) -> torch.Tensor:
        if self._indices is None:
            self._indices = torch.nonzero(self.mask).flatten()
        return self._indices

    @indices.setter
    def indices(self, value: torch.Tensor) -> None:
        self._indices = value

    @property
    def num_selected(self) -> int:
        return int(self.indices.numel())

    def __repr__(self) -> str:
        return f"Selection(kept {int(self.mask.sum())} of {self.mask.numel()} rollouts)"


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
    sel = dict(k=k, ratio=ratio, rewards=batch.reward, keep_contrast=keep_contrast, validate=validate)
    if use_triton(backend, batch.device, "schedule"):
        indices, mask = None, group_topk_mask(scores, batch.group_offsets, **sel)
    else:
        indices, mask = group_topk(scores, batch.group_offsets, backend=backend, **sel)
    return Selection(indices, mask, scores, mean, bonus, contexts)
