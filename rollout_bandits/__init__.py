"""rollout-bandits: a contextual-bandit rollout scheduler core for RLVR."""

from rollout_bandits.bandit import (
    BufferConfig,
    NeuralUCBConfig,
    Scheduler,
    SchedulerConfig,
    ScheduleStep,
)
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.schedule import Selection, schedule
from rollout_bandits.kernels.ucb_score import ScorerWeights

__version__ = "0.1.0"

__all__ = [
    "BufferConfig",
    "NeuralUCBConfig",
    "RolloutBatch",
    "ScheduleStep",
    "Scheduler",
    "SchedulerConfig",
    "ScorerWeights",
    "Selection",
    "__version__",
    "schedule",
]
