"""SchedulerConfig: what the scheduler does each round, and the names of its policies, explorers
and intra-group rules (one validation path: every field is checked here, before anything runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rollout_bandits.bandit.buffer import BufferConfig
from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.gains import GAIN_SIGNALS
from rollout_bandits.bandit.linucb import LinUCB, LinUCBConfig
from rollout_bandits.bandit.neural_linear import NeuralLinear, NeuralLinearConfig
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.validation import (
    BACKENDS,
    check_bool,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    fail,
)

POLICIES = ("cbs", "keep_all", "random_k", "pods", "dapo_filter", "reuse_fifo")
# explorer -> (its SchedulerConfig field, its class)
EXPLORERS = {"neural_linear": ("neural_linear", NeuralLinear), "neural_ucb": ("learner", NeuralUCB),
             "ee_net": ("ee_net", EENet), "linucb": ("linucb", LinUCB)}
INTRA_RULES = ("topk", "max_variance")


@dataclass
class SchedulerConfig:
    """What the scheduler does each round. The method, and which parts are the paper's and which
    ours, is docs/method.md; the evidence behind each default is docs/RESULTS.md.

    policy: "cbs" (the contextual-bandit scheduler) or a baseline behind the same interface:
      keep_all (plain GRPO), random_k, pods (max-variance down-sampling), dapo_filter (drop
      zero-variance groups), reuse_fifo (keep all fresh, replay the oldest; no learning).
    explorer: cbs's learner: "neural_linear" (a ridge/UCB head on the MLP's last-layer features,
      configured by `neural_linear`), "neural_ucb" (`learner`), "ee_net" (`ee_net`) or "linucb"
      (`linucb`); the default is the one the regret benchmark's tuning environments chose
      (docs/bandit.md, "Explorers").
    intra_k / intra_ratio: keep k rollouts of each group, or its top `intra_ratio` (p).
    intra_rule: "topk" (the score ranks the whole group) or "max_variance" (PODS's reward
      composition; the score picks within each reward value).
    keep_contrast: a group with both correct and incorrect rollouts keeps one of each, so its
      advantage never collapses to zero.
    reuse_m / reuse_ratio: K buffer rollouts per round, or ceil(reuse_ratio * fresh kept); 0: none.
    candidates: "window" = exactly the rollouts of the last `window_rounds` (L) rounds (the
      paper's C_t), or "store" = the bounded scored buffer that `buffer` configures.
    gain: the arm reward the learner regresses (bandit/gains.py): "batch" (the paper's; costs
      nothing) or the per-arm "self" | "heldout" | "probe" | "auto" (one no-grad forward pass).
    entropy_weight / entropy_min: w_e and e_min of the batch gain's entropy term (the paper
      gives neither value).
    heldout_log_ratio_clip / heldout_ratio_level: the importance ratios of heldout and probe.
    pending_rounds: rounds a pulled arm waits for its gain before it is forgotten.
    feature_low_quantile: q of the log-prob quantile feature.
    backend: the kernels' backend (rollout_bandits.validation.BACKENDS).
    The seed of the scheduler's own randomness is `Scheduler(config, seed=...)`'s.
    """

    policy: str = "cbs"
    explorer: str = "neural_linear"
    intra_k: int | None = None
    intra_ratio: float = 0.5
    intra_rule: str = "topk"
    keep_contrast: bool = True
    reuse_m: int | None = None
    reuse_ratio: float = 0.5
    candidates: str = "window"
    window_rounds: int = 4
    gain: str = "heldout"
    entropy_weight: float = 0.5
    entropy_min: float = 0.1
    heldout_log_ratio_clip: float = 2.0
    heldout_ratio_level: str = "token"
    pending_rounds: int = 4
    feature_low_quantile: float = 0.1
    backend: str = "auto"
    learner: NeuralUCBConfig = field(default_factory=NeuralUCBConfig)
    ee_net: EENetConfig = field(default_factory=EENetConfig)
    neural_linear: NeuralLinearConfig = field(default_factory=NeuralLinearConfig)
    linucb: LinUCBConfig = field(default_factory=LinUCBConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)

    def __post_init__(self) -> None:
        check_field_types(self)
        o = "SchedulerConfig"
        check_choice(o, "policy", self.policy, POLICIES)
        check_choice(o, "explorer", self.explorer, tuple(EXPLORERS))
        check_int(o, "intra_k", self.intra_k, 1, allow_none=True)
        check_float(o, "intra_ratio", self.intra_ratio, 0.0, 1.0, lo_open=True)
        check_choice(o, "intra_rule", self.intra_rule, INTRA_RULES)
        check_bool(o, "keep_contrast", self.keep_contrast)
        check_int(o, "reuse_m", self.reuse_m, 0, allow_none=True)
        check_float(o, "reuse_ratio", self.reuse_ratio, 0.0, 16.0)
        check_choice(o, "candidates", self.candidates, ("window", "store"))
        check_int(o, "window_rounds", self.window_rounds, 1)
        check_choice(o, "gain", self.gain, GAIN_SIGNALS)
        check_float(o, "entropy_weight", self.entropy_weight, 0.0)
        check_float(o, "entropy_min", self.entropy_min, -math.inf)
        check_float(o, "heldout_log_ratio_clip", self.heldout_log_ratio_clip, 0.0, lo_open=True)
        check_choice(o, "heldout_ratio_level", self.heldout_ratio_level, ("token", "sequence"))
        check_int(o, "pending_rounds", self.pending_rounds, 1)
        check_float(o, "feature_low_quantile", self.feature_low_quantile, 0.0, 1.0)
        check_choice(o, "backend", self.backend, BACKENDS)
        if self.feature_dim != self.buffer.feature_dim:
            fail(o, "buffer.feature_dim", str(self.buffer.feature_dim),
                 f"{self.feature_dim}, the {self.explorer} learner's feature_dim")

    @property
    def explorer_config(self):
        """The config of the chosen explorer."""
        return getattr(self, EXPLORERS[self.explorer][0])

    @property
    def feature_dim(self) -> int:
        return self.explorer_config.feature_dim

    def effective_buffer(self) -> BufferConfig:
        """The window mode is exactly the last L rounds: FIFO, no age/use/score eviction."""
        if self.candidates == "window":
            return replace(self.buffer, window_rounds=self.window_rounds, evict_order="fifo",
                           max_age=None, max_reuse=None, score_floor=None)
        return self.buffer

    @property
    def reuses(self) -> bool:
        return self.policy in ("cbs", "reuse_fifo") and (self.reuse_m != 0) and \
            (self.reuse_m is not None or self.reuse_ratio > 0)
