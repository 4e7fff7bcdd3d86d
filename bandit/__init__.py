"""The contextual-bandit learner, the rollout buffer and the scheduler."""

from rollout_bandits.bandit._online import Explorer, ExplorerConfig, LearnerConfig, OnlineLearner
from rollout_bandits.bandit.buffer import BufferConfig, BufferedRollouts, RolloutBuffer
from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.gains import (
    GAIN_SIGNALS,
    ArmGains,
    GainInputs,
    ProbeInputs,
    batch_gain,
    compute_gains,
)
from rollout_bandits.bandit.linucb import LinUCB, LinUCBConfig
from rollout_bandits.bandit.neural_linear import NeuralLinear, NeuralLinearConfig
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.bandit.scheduler import EXPLORERS, POLICIES, Scheduler, SchedulerConfig, ScheduleStep

__all__ = [
    "GAIN_SIGNALS",
    "POLICIES",
    "ArmGains",
    "BufferConfig",
    "BufferedRollouts",
    "EENet",
    "EENetConfig",
    "EXPLORERS",
    "Explorer",
    "ExplorerConfig",
    "GainInputs",
    "LearnerConfig",
    "LinUCB",
    "LinUCBConfig",
    "NeuralLinear",
    "NeuralLinearConfig",
    "NeuralUCB",
    "NeuralUCBConfig",
    "OnlineLearner",
    "ProbeInputs",
    "RolloutBuffer",
    "ScheduleStep",
    "Scheduler",
    "SchedulerConfig",
    "batch_gain",
    "compute_gains",
]
