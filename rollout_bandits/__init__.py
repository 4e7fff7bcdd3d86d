"""rollout-bandits: a contextual-bandit rollout scheduler core for RLVR."""

from rollout_bandits.batch import RolloutBatch

__version__ = "0.1.0"

__all__ = ["RolloutBatch", "__version__"]
