"""Triton kernels, each with its vectorized PyTorch reference, a dispatcher over validation.BACKENDS
and a plain oracle in kernels/naive.py (rollout_features also has a fast CPU backend)."""

from rollout_bandits.kernels.group_topk import (
    global_topm,
    global_topm_reference,
    global_topm_triton,
    group_topk,
    group_topk_reference,
    group_topk_triton,
)
from rollout_bandits.kernels.rollout_features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    FeatureConfig,
    rollout_features,
    rollout_features_cpu,
    rollout_features_reference,
    rollout_features_triton,
)
from rollout_bandits.kernels.schedule import Selection, schedule
from rollout_bandits.kernels.ucb_score import (
    ScorerWeights,
    ucb_score,
    ucb_score_reference,
    ucb_score_triton,
)

__all__ = [
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "NUM_FEATURES",
    "FeatureConfig",
    "rollout_features",
    "rollout_features_cpu",
    "rollout_features_reference",
    "rollout_features_triton",
    "ScorerWeights",
    "ucb_score",
    "ucb_score_reference",
    "ucb_score_triton",
    "global_topm",
    "global_topm_reference",
    "global_topm_triton",
    "group_topk",
    "group_topk_reference",
    "group_topk_triton",
    "Selection",
    "schedule",
]
