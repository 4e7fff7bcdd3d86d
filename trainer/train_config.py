"""TrainConfig: every setting of the RL loop (one dataclass, one validation path), and the
loop's stage names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rollout_bandits.bandit.prompts import PromptSchedulerConfig
from rollout_bandits.bandit.scheduler_config import SchedulerConfig
from rollout_bandits.config import build_dataclass
from rollout_bandits.trainer.generation import GenerationConfig
from rollout_bandits.trainer.losses import LossConfig
from rollout_bandits.trainer.policy import DEFAULT_WARMUP_STEPS, PolicyConfig
from rollout_bandits.trainer.tasks import FAMILIES, MAX_DIFFICULTY, make_task
from rollout_bandits.validation import (
    check_bool,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    check_str,
    fail,
)

STAGES = ("prompts", "generate", "verify", "schedule", "update", "probe", "observe")
SCHEDULING_STAGES = ("prompts", "schedule", "observe")
EVAL_SPLITS = ("eval", "val")
MAX_SEED = 2**31 - 1  # seeds are mixed into torch generator seeds (seed * 1_000_033 + step)


@dataclass
class TrainConfig:
    """The whole run. The embedded default is what `make run` trains (tiny model, CBS on)."""

    steps: int = 200
    prompts_per_step: int = 64
    group_size: int = 8
    lr: float = 5e-5
    max_grad_norm: float = 1.0
    tasks: tuple[str, ...] = ()  # empty: every family
    difficulty: int = 1
    verifier_noise: float = 0.0
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    warmup_lr: float = 3e-3
    eval_every: int = 25
    eval_problems: int = 64  # per family, greedy
    eval_split: str = "eval"  # what the periodic evaluation measures: held-out "eval" or "val"
    eval_distinct: bool = False  # distinct problems (up to eval_problems; fewer where the split is smaller)
    eval_fraction: float = 0.1  # held-out share of each family's prompt space (by prompt hash)
    val_fraction: float = 0.0  # validation share (by hash, disjoint from train and held-out)
    fresh_fraction: float = 1.0  # share of prompts_per_step generated each round (reuse fills the rest)
    checkpoint_every: int = 25
    out_dir: str = "runs/default"
    mini_batch_rollouts: int = 0  # > 0: one optimizer step per mini-batch of this many rollouts
    probe_fraction: float = 0.5  # share of the fresh groups the gain probe re-scores after the update
    num_threads: int = 1  # the tiny policy's ops are too small to gain from more; 0 keeps torch's choice
    seed: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    prompts: PromptSchedulerConfig = field(default_factory=PromptSchedulerConfig)

    def __post_init__(self) -> None:
        o = "TrainConfig"
        check_field_types(self)
        for name in ("steps", "prompts_per_step", "group_size", "eval_every", "eval_problems", "checkpoint_every"):
            check_int(o, name, getattr(self, name), 1)
        for name in ("warmup_steps", "mini_batch_rollouts"):
            check_int(o, name, getattr(self, name), 0)
        for name in ("lr", "warmup_lr", "max_grad_norm"):  # max_grad_norm <= 0 would flip or zero every update
            check_float(o, name, getattr(self, name), 0.0, lo_open=True)
        for t in self.tasks:
            check_choice(o, "tasks", t, tuple(FAMILIES))
        check_int(o, "difficulty", self.difficulty, 1, MAX_DIFFICULTY)
        check_float(o, "verifier_noise", self.verifier_noise, 0.0, 0.5)
        check_choice(o, "eval_split", self.eval_split, EVAL_SPLITS)
        check_bool(o, "eval_distinct", self.eval_distinct)
        check_float(o, "eval_fraction", self.eval_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        check_float(o, "val_fraction", self.val_fraction, 0.0, 1.0 - self.eval_fraction, hi_open=True)
        if self.eval_split == "val" and self.val_fraction == 0:
            fail(o, "val_fraction", "0 with eval_split='val'", "a validation share > 0 to evaluate on")
        check_float(o, "fresh_fraction", self.fresh_fraction, 0.0, 1.0, lo_open=True)
        if self.prompts.policy == "learned" and self.prompts.label == "gain" and (
                self.scheduler.policy != "cbs" or self.scheduler.gain == "batch"):
            fail(o, "prompts.label", f"'gain' with scheduler.policy={self.scheduler.policy!r} and "
                 f"scheduler.gain={self.scheduler.gain!r}", "variance | std, or a cbs scheduler with a per-arm "
                 "gain (self | heldout | probe | auto) whose gains label the groups")
        check_float(o, "probe_fraction", self.probe_fraction, 0.0, 1.0, lo_open=True)
        check_int(o, "num_threads", self.num_threads, 0, 1024)
        check_int(o, "seed", self.seed, 0, MAX_SEED)
        check_str(o, "out_dir", self.out_dir)

    @property
    def family_names(self) -> tuple[str, ...]:
        return self.tasks or tuple(FAMILIES)

    @property
    def fresh_prompts(self) -> int:
        """Prompts generated for each round (the generation budget)."""
        return max(1, math.ceil(self.fresh_fraction * self.prompts_per_step - 1e-9))

    def make_tasks(self, noise: float | None = None) -> list:
        """The configured task families (`noise`: the verifier noise, default the config's)."""
        return [make_task(name, difficulty=self.difficulty, noise=self.verifier_noise if noise is None else noise,
                          seed=self.seed, eval_fraction=self.eval_fraction, val_fraction=self.val_fraction)
                for name in self.family_names]


def config_from_dict(values: dict) -> TrainConfig:
    return build_dataclass(TrainConfig, values)
