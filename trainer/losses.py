"""Policy-gradient losses on ragged token streams: GRPO, DAPO, Dr.GRPO.

One clipped-surrogate core; each optimizer is a small named recipe in
`LOSSES` that chooses the advantage normalization, the clip range and how
token losses are aggregated:

- GRPO: A = (r - mean_g) / (std_g + eps); symmetric clip; mean over each
  sequence's tokens, then over sequences.
- DAPO: the same advantage; clip-higher (eps_low 0.2, eps_high 0.28); one
  token-level mean over the whole batch (dynamic sampling, dropping groups of
  equal rewards, is a selection rule: see the `dapo_filter` baseline).
- Dr.GRPO: A = r - mean_g (no std division); token sums divided by a
  constant (the max response length), then averaged over sequences.

Reused rollouts: with `reuse_weighting="none"` (the paper's choice) the ratio
is taken against the detached current log-probs, so a stale rollout is
trained on as if on-policy and its staleness only enters the scheduler's
features; with "clipped_is" the ratio is against its stored behaviour
log-probs and clipped like any PPO ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.validation import check_choice, check_field_types, check_float

AGGREGATIONS = ("seq_mean", "token_mean", "constant")
REUSE_WEIGHTINGS = ("none", "clipped_is")


@dataclass(frozen=True)
class LossConfig:
    name: str = "grpo"
    clip_low: float | None = None  # None: the recipe's default
    clip_high: float | None = None
    reuse_weighting: str = "none"
    std_eps: float = 1e-6

    def __post_init__(self) -> None:
        o = "LossConfig"
        check_field_types(self)
        check_choice(o, "name", self.name, tuple(LOSSES))
        check_choice(o, "reuse_weighting", self.reuse_weighting, REUSE_WEIGHTINGS)
        check_float(o, "clip_low", self.clip_low, 0.0, 1.0, lo_open=True, hi_open=True, allow_none=True)
        check_float(o, "clip_high", self.clip_high, 0.0, lo_open=True, allow_none=True)
        check_float(o, "std_eps", self.std_eps, 0.0, lo_open=True)


@dataclass(frozen=True)
class LossRecipe:
    normalize_std: bool
    clip_low: float
    clip_high: float
    aggregation: str


LOSSES: dict[str, LossRecipe] = {
    "grpo": LossRecipe(normalize_std=True, clip_low=0.2, clip_high=0.2, aggregation="seq_mean"),
    "dapo": LossRecipe(normalize_std=True, clip_low=0.2, clip_high=0.28, aggregation="token_mean"),
    "dr_grpo": LossRecipe(normalize_std=False, clip_low=0.2, clip_high=0.2, aggregation="constant"),
}


def group_advantages(reward: torch.Tensor, group_offsets: torch.Tensor, normalize_std: bool,
                     eps: float = 1e-6) -> torch.Tensor:
    """Per-rollout advantage within its group (population std, a group of one gets 0)."""
    sizes = (group_offsets[1:] - group_offsets[:-1]).to(torch.int64)
    r = reward.float()
    mean = torch.repeat_interleave(torch.segment_reduce(r, "sum", lengths=sizes) / sizes, sizes)
    adv = r - mean
    if normalize_std:
        var = torch.segment_reduce(adv * adv, "sum", lengths=sizes) / sizes
        adv = adv / (torch.repeat_interleave(var.sqrt(), sizes) + eps)
    return adv


@dataclass
class LossOutput:
    loss: torch.Tensor
    clip_ratio: torch.Tensor  # [N] fraction of each rollout's tokens whose ratio was clipped
    mean_ratio: float


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    offsets: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    aggregation: str,
    max_len: int | None = None,
) -> LossOutput:
    """The shared PPO-style core: -min(rho * A, clip(rho, 1 - lo, 1 + hi) * A) per token."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"clipped_surrogate: aggregation {aggregation!r}, expected one of {AGGREGATIONS}")
    if logp.shape != old_logp.shape:
        raise ValueError(f"clipped_surrogate: logp {tuple(logp.shape)} vs old_logp {tuple(old_logp.shape)}")
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    if advantages.shape != lengths.shape:
        raise ValueError(f"clipped_surrogate: advantages {tuple(advantages.shape)}, expected "
                         f"[{lengths.numel()}] (one per rollout)")
    adv_tok = torch.repeat_interleave(advantages.to(logp.dtype), lengths)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped_obj = ratio * adv_tok
    clipped_obj = clipped * adv_tok
    token_loss = -torch.minimum(unclipped_obj, clipped_obj)
    # A token counts as clipped when the clipped branch is the one that binds.
    was_clipped = (clipped_obj < unclipped_obj).float()
    clip_ratio = torch.segment_reduce(was_clipped.detach(), "sum", lengths=lengths) / lengths
    if aggregation == "token_mean":
        loss = token_loss.sum() / max(token_loss.numel(), 1)
    else:
        seq = torch.segment_reduce(token_loss, "sum", lengths=lengths)
        denom = lengths.to(seq.dtype) if aggregation == "seq_mean" else float(max_len or int(lengths.max()))
        loss = (seq / denom).mean()
    return LossOutput(loss=loss, clip_ratio=clip_ratio, mean_ratio=float(ratio.detach().mean()))


def policy_loss(
    config: LossConfig,
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    offsets: torch.Tensor,
    *,
    reused: torch.Tensor | None = None,
    max_len: int | None = None,
) -> LossOutput:
    """The configured loss. `reused` [N] marks buffer rollouts (see module doc for their ratio)."""
    recipe = LOSSES[config.name]
    old = behaviour_logp.to(logp.dtype)
    if reused is not None and config.reuse_weighting == "none" and bool(reused.any()):
        lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
        reused_tok = torch.repeat_interleave(reused, lengths)
        old = torch.where(reused_tok, logp.detach(), old)
    return clipped_surrogate(
        logp, old, advantages, offsets,
        clip_low=config.clip_low if config.clip_low is not None else recipe.clip_low,
        clip_high=config.clip_high if config.clip_high is not None else recipe.clip_high,
        aggregation=recipe.aggregation, max_len=max_len,
    )

