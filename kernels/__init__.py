"""Triton kernels, each with its vectorized PyTorch reference and a dispatcher."""

from rollout_bandits.kernels.rollout_features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUM_FEATURES,
    FeatureConfig,
    rollout_features,
    rollout_features_reference,
    rollout_features_triton,
)

__all__ = [
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "NUM_FEATURES",
    "FeatureConfig",
    "rollout_features",
    "rollout_features_reference",
    "rollout_features_triton",
]
