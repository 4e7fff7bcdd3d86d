"""ScheduleStep: what `Scheduler.select` decided for one round, in the shapes a trainer uses."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from rollout_bandits.bandit.buffer import BufferedRollouts
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.schedule import Selection
from rollout_bandits.validation import check_bool


@dataclass
class ScheduleStep:
    """What `select` decided for one round, and everything the trainer needs to act on it."""

    round: int
    batch: RolloutBatch  # the fresh batch as given (non-finite rewards resolved, see nonfinite_reward)
    fresh: Selection  # indices/mask into `batch`, scores/mean/bonus/contexts [N]
    fresh_arm_ids: torch.Tensor  # [N] every fresh rollout's arm id
    fresh_group_uids: torch.Tensor  # [N] global group ids (unique across rounds)
    fresh_prompt_ids: torch.Tensor  # [N]
    fresh_advantage: torch.Tensor  # [N] (r - group mean) / (group std + 1e-6), full group; or the trainer's
    fresh_advantage_centered: torch.Tensor  # [N] r - group mean; or the trainer's advantage
    fresh_prompt_tokens: list | None  # [N] prompt token ids per rollout, or None when not given
    reused: BufferedRollouts | None
    reused_scores: torch.Tensor
    reused_mean: torch.Tensor
    reused_bonus: torch.Tensor

    @property
    def num_fresh_selected(self) -> int:
        return int(self.fresh.indices.numel())

    @property
    def num_reused(self) -> int:
        return 0 if self.reused is None else int(self.reused.arm_ids.numel())

    @property
    def num_selected(self) -> int:
        """Rows of train_batch (0: an empty selection, nothing to train on this round)."""
        return self.num_fresh_selected + self.num_reused

    def _train_rows(self, fresh: torch.Tensor, reused: torch.Tensor | None) -> torch.Tensor:
        """A per-rollout fresh tensor [N] at the selected rows, then the reused rows' values."""
        a = fresh[self.fresh.indices.cpu()]
        return a if self.reused is None else torch.cat([a, reused])

    @property
    def arm_ids(self) -> torch.Tensor:
        """The pulled arms: selected fresh rollouts, then reused ones (the rows of train_batch)."""
        return self._train_rows(self.fresh_arm_ids, None if self.reused is None else self.reused.arm_ids)

    def _fresh_taken(self) -> RolloutBatch:
        idx = self.fresh.indices
        b = self.batch.take(idx)
        return replace(b, group_offsets=None, group_ids=self.fresh_group_uids[idx.cpu()].to(b.device))

    @cached_property
    def train_batch(self) -> RolloutBatch:
        """Selected fresh rollouts then reused ones, group_ids = global group uids (groups adjacent);
        a valid batch of 0 rollouts when nothing was selected.

        Reused rollouts carry their behaviour log-probs; like the paper, no importance weight is
        applied by the scheduler (their staleness is in the features)."""
        return RolloutBatch.concat([self._fresh_taken()] + ([] if self.reused is None else [self.reused.batch]))

    @property
    def train_advantage(self) -> torch.Tensor:
        """GRPO's group-normalized advantage of each train_batch row (or the trainer's own)."""
        return self.train_advantage_for(normalize_std=True)

    def train_advantage_for(self, normalize_std: bool) -> torch.Tensor:
        """Each train_batch row's advantage against its full original group: (r - mean) / (std +
        1e-6), or r - mean without the std (Dr.GRPO). Where the trainer gave `select` its own
        advantages, those, whatever normalize_std."""
        check_bool("ScheduleStep.train_advantage_for", "normalize_std", normalize_std)
        if normalize_std:
            return self._train_rows(self.fresh_advantage, None if self.reused is None else self.reused.advantage)
        return self._train_rows(self.fresh_advantage_centered,
                                None if self.reused is None else self.reused.advantage_centered)

    @property
    def train_prompt_ids(self) -> torch.Tensor:
        return self._train_rows(self.fresh_prompt_ids, None if self.reused is None else self.reused.prompt_ids)

    @property
    def train_prompt_tokens(self) -> list:
        """Each train_batch row's prompt token ids ([P] int64), None where `select` was not given them."""
        fresh = self.fresh_prompt_tokens
        rows = [None if fresh is None else fresh[i] for i in self.fresh.indices.cpu().tolist()]
        return rows + ([] if self.reused is None else list(self.reused.prompt_tokens))

    @cached_property
    def gain_batch(self) -> RolloutBatch:
        """Every fresh rollout (selected or not) then the reused ones: the rows the per-arm gain
        signals need log-probs for (heldout reads the unselected fresh ones)."""
        fresh = replace(self.batch, group_offsets=None,
                        group_ids=self.fresh_group_uids.to(self.batch.device))
        return RolloutBatch.concat([fresh] + ([] if self.reused is None else [self.reused.batch]))

    @property
    def gain_selected(self) -> torch.Tensor:
        m = self.fresh.mask.cpu()
        return m if self.reused is None else torch.cat([m, torch.ones(self.num_reused, dtype=torch.bool)])

    @property
    def gain_arm_ids(self) -> torch.Tensor:
        return self.fresh_arm_ids if self.reused is None else torch.cat([self.fresh_arm_ids, self.reused.arm_ids])

    @property
    def gain_advantage(self) -> torch.Tensor:
        a = self.fresh_advantage
        return a if self.reused is None else torch.cat([a, self.reused.advantage])

    def default_logp_before(self) -> torch.Tensor:
        """Fresh: cur_logprobs if given, else the behaviour log-probs; reused: behaviour log-probs."""
        b = self.batch
        fresh = (b.cur_logprobs if b.cur_logprobs is not None else b.token_logprobs).float().cpu()
        if self.reused is None:
            return fresh
        return torch.cat([fresh, self.reused.batch.token_logprobs.float()])
