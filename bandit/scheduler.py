"""Scheduler: the one object a trainer talks to.

Per RLVR step (round t):
    step = scheduler.select(batch, prompt_ids=...)      # fresh top-p% per group + global top-K reuse
    train on step.train_batch (advantages: step.train_advantage, prompts: step.train_prompt_ids)
    # gain="batch" (the paper's signal): nothing else; round t is labelled inside select(t+1).
    # gain="self" | "heldout" | "probe" | "auto": after the optimizer step,
    scheduler.observe_step(step, logp_after=..., logp_before=..., probe=...)
    #   = arms = scheduler.gains(step, ...); scheduler.observe(arms.arm_ids, arms.gains)

Every rollout the scheduler sees gets a stable integer arm id (fresh rollouts at select time;
reused ones keep theirs), so gains computed anywhere can be matched to the contexts that were
scored. All randomness lives in generators that `state_dict()` saves, so a resumed run makes the
same decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

import torch

from rollout_bandits.bandit import baselines
from rollout_bandits.bandit._online import (
    check_choice,
    check_contexts,
    check_float,
    check_gains,
    check_int,
    fail,
    shape_str,
)
from rollout_bandits.bandit.buffer import BufferConfig, BufferedRollouts, RolloutBuffer
from rollout_bandits.bandit.ee_net import EENet, EENetConfig
from rollout_bandits.bandit.gains import (
    GAIN_SIGNALS,
    ArmGains,
    GainInputs,
    ProbeInputs,
    batch_gain,
    batch_value_entropy,
    compute_gains,
    group_advantage,
)
from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.group_topk import global_topm, group_topk
from rollout_bandits.kernels.rollout_features import NUM_FEATURES, FeatureConfig, rollout_features
from rollout_bandits.kernels.schedule import Selection, schedule

POLICIES = ("cbs", "keep_all", "random_k", "pods", "dapo_filter", "reuse_fifo")
EXPLORERS = ("neural_ucb", "ee_net")
INTRA_RULES = ("topk", "max_variance")


@dataclass
class SchedulerConfig:
    """One validated config for the scheduler; nested configs for its learner and buffer.

    policy: cbs (the contextual-bandit scheduler) or a baseline: keep_all (GRPO), random_k,
      pods (max-variance down-sampling), dapo_filter (drop zero-variance groups), reuse_fifo
      (keep all fresh + replay the oldest window rollouts, no learning).
    Intra-group: keep `intra_k` per group, or the top `intra_ratio` (p) of each group.
    Reuse: `reuse_m` (K) buffer rollouts per step, or ceil(reuse_ratio * fresh kept); 0 disables.
    candidates: "window" = exactly the rollouts of the previous `window_rounds` (L) rounds, FIFO
      by round (the paper's C_t; the current round goes through intra-group selection), or
      "store" = the bounded scored buffer as `buffer` configures it (age / use / score eviction).
    gain: batch | self | heldout | probe | auto (see gains.py). Default "heldout", chosen by
      experiment (docs/RESULTS.md, "Ablations: gain" and the v2 rows; 7 families, 100 RL steps,
      3 seeds): with GRPO, paired by seed against the former default "auto", heldout was the only
      signal ahead (+0.6 +- 0.4 points of final held-out pass rate; batch -0.2, probe +0.2 +- 1.7,
      self -1.9), and re-running the main grid with it moved CBS from -0.6 / -1.4 / -2.6 to
      -0.0 / +0.2 / -0.8 points against keep-all for GRPO / DAPO / Dr.GRPO. Why `self` and `auto`
      lose: `self` (A * change of the arm's own log-prob) is positive for almost any trained-on
      rollout, so the learner learns "high |A|, already trained" rather than "useful" (its score
      tracks |A|, see the diagnostics), and `auto` gives that label to every reused arm. Caveats of
      heldout: it needs unselected rollouts in the group (intra_ratio = 1 leaves nothing to learn
      from) and labels no reused arm (the reuse scores extrapolate from fresh arms); under verifier
      noise it was worse than keep-all (the labels use the noisy rewards). `batch` (the paper's
      signal) costs no extra forward pass (the per-arm signals spend ~15% of a step on it).
      entropy_weight (w_e) = 0.5 and entropy_min (e_min) = 0.1 nats/token are [ours] defaults: the
      paper gives neither value.
    intra_rule: "topk" (the scheduler's score ranks the whole group, keep_contrast applies) or
      "max_variance" [ours, tried]: keep PODS's reward composition and let the score choose within
      each reward value. It was worse than topk in the ablation (-1.7 +- 0.9 points), so topk stays.
    """

    policy: str = "cbs"
    explorer: str = "neural_ucb"
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
    seed: int = 0
    backend: str = "auto"
    learner: NeuralUCBConfig = field(default_factory=NeuralUCBConfig)
    ee_net: EENetConfig = field(default_factory=EENetConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)

    def __post_init__(self) -> None:
        o = "SchedulerConfig"
        for name, cls in (("learner", NeuralUCBConfig), ("ee_net", EENetConfig), ("buffer", BufferConfig)):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, cls(**v))
            elif not isinstance(v, cls):
                fail(o, name, type(v).__name__, f"a {cls.__name__}")
        check_choice(o, "policy", self.policy, POLICIES)
        check_choice(o, "explorer", self.explorer, EXPLORERS)
        check_int(o, "intra_k", self.intra_k, 1, allow_none=True)
        check_float(o, "intra_ratio", self.intra_ratio, 0.0, 1.0, lo_open=True)
        check_choice(o, "intra_rule", self.intra_rule, INTRA_RULES)
        if not isinstance(self.keep_contrast, bool):
            fail(o, "keep_contrast", repr(self.keep_contrast), "a bool")
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
        check_int(o, "seed", self.seed, 0)
        check_choice(o, "backend", self.backend, ("auto", "triton", "reference"))
        learner_dim = (self.learner if self.explorer == "neural_ucb" else self.ee_net).feature_dim
        if learner_dim != self.buffer.feature_dim:
            fail(o, "buffer.feature_dim", str(self.buffer.feature_dim),
                 f"{learner_dim}, the {self.explorer} learner's feature_dim")

    @property
    def feature_dim(self) -> int:
        return (self.learner if self.explorer == "neural_ucb" else self.ee_net).feature_dim

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


def concat_batches(parts: list[RolloutBatch]) -> RolloutBatch:
    """Rollouts of several batches, in order; streams missing from any part are dropped."""
    parts = [p for p in parts if p is not None and p.num_rollouts > 0]
    dev = parts[0].device
    parts = [p.to(dev) for p in parts]
    offs, base = [torch.zeros(1, dtype=torch.int64, device=dev)], 0
    for p in parts:
        offs.append(p.offsets[1:].to(torch.int64) + base)
        base += p.num_tokens
    kw = {}
    for name in ("token_entropy", "cur_logprobs", "token_ids"):
        vals = [getattr(p, name) for p in parts]
        kw[name] = None if any(v is None for v in vals) else torch.cat(vals)
    for name, dt in (("age", torch.float32), ("reuse_count", torch.float32), ("clip_ratio", torch.float32),
                     ("truncated", torch.bool)):
        kw[name] = torch.cat([p.per_rollout(name, dt) for p in parts])
    lens = [p.max_response_len for p in parts if p.max_response_len is not None]
    return RolloutBatch(
        token_logprobs=torch.cat([p.token_logprobs.float() for p in parts]),
        offsets=torch.cat(offs),
        reward=torch.cat([p.reward.float() for p in parts]),
        group_ids=torch.cat([p.group_ids.to(dev) for p in parts]),
        max_response_len=max(lens) if lens else None,
        mask_nonfinite=any(p.mask_nonfinite for p in parts),
        **kw,
    )


@dataclass
class ScheduleStep:
    """What `select` decided for one round, and everything the trainer needs to act on it."""

    round: int
    batch: RolloutBatch  # the fresh batch as given
    fresh: Selection  # indices/mask into `batch`, scores/mean/bonus/contexts [N]
    fresh_arm_ids: torch.Tensor  # [N] every fresh rollout's arm id
    fresh_group_uids: torch.Tensor  # [N] global group ids (unique across rounds)
    fresh_prompt_ids: torch.Tensor  # [N]
    fresh_advantage: torch.Tensor  # [N] (r - group mean) / (group std + 1e-6), full group
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
    def arm_ids(self) -> torch.Tensor:
        """The pulled arms: selected fresh rollouts, then reused ones (the rows of train_batch)."""
        fresh = self.fresh_arm_ids[self.fresh.indices.cpu()]
        return fresh if self.reused is None else torch.cat([fresh, self.reused.arm_ids])

    def _fresh_taken(self) -> RolloutBatch:
        idx = self.fresh.indices
        b = self.batch.take(idx)
        return replace(b, group_offsets=None, group_ids=self.fresh_group_uids[idx.cpu()].to(b.device))

    @cached_property
    def train_batch(self) -> RolloutBatch:
        """Selected fresh rollouts then reused ones, group_ids = global group uids (groups adjacent).

        Reused rollouts carry their behaviour log-probs; like the paper, no importance weight is
        applied by the scheduler (their staleness is in the features)."""
        parts = [self._fresh_taken() if self.num_fresh_selected else None,
                 None if self.reused is None else self.reused.batch]
        return concat_batches(parts)

    @property
    def train_advantage(self) -> torch.Tensor:
        a = self.fresh_advantage[self.fresh.indices.cpu()]
        return a if self.reused is None else torch.cat([a, self.reused.advantage])

    @property
    def train_prompt_ids(self) -> torch.Tensor:
        p = self.fresh_prompt_ids[self.fresh.indices.cpu()]
        return p if self.reused is None else torch.cat([p, self.reused.prompt_ids])

    @cached_property
    def gain_batch(self) -> RolloutBatch:
        """Every fresh rollout (selected or not) then the reused ones: the rows the per-arm gain
        signals need log-probs for (heldout reads the unselected fresh ones)."""
        fresh = replace(self.batch, group_offsets=None,
                        group_ids=self.fresh_group_uids.to(self.batch.device))
        return concat_batches([fresh, None if self.reused is None else self.reused.batch])

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


class Scheduler:
    """Fresh intra-group top-p% + global top-K reuse, one learner scoring both."""

    def __init__(self, config: SchedulerConfig | None = None):
        self.config = cfg = config or SchedulerConfig()
        self.learner = None
        if cfg.policy == "cbs":
            self.learner = NeuralUCB(cfg.learner) if cfg.explorer == "neural_ucb" else EENet(cfg.ee_net)
        self.buffer = RolloutBuffer(cfg.effective_buffer()) if cfg.reuses else None
        self.feature_config = FeatureConfig(low_quantile=cfg.feature_low_quantile)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.round = 0
        self.next_arm_id = 0
        self.next_group_uid = 0
        d = cfg.feature_dim
        self.pending = {"arm_ids": torch.zeros(0, dtype=torch.int64), "contexts": torch.zeros(0, d),
                        "round": torch.zeros(0, dtype=torch.int64), "mean": torch.zeros(0)}
        self.batch_prev: dict | None = None  # the `batch` signal's V_t, E_t and round t's pulled arms
        self.counters = {"fresh_seen": 0, "fresh_selected": 0, "reused": 0, "observed": 0,
                         "regret_estimate": 0.0, "sq_err_ema": float("nan"), "last_selection_rate": float("nan"),
                         "last_mean_score": float("nan"), "last_mean_bonus": float("nan"),
                         "last_num_reused": 0, "last_batch_gain": float("nan")}

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    # ------------------------------------------------------------- validation
    def _prompt_ids(self, prompt_ids, batch: RolloutBatch) -> torch.Tensor:
        n, g = batch.num_rollouts, batch.num_groups
        if prompt_ids is None:
            return torch.full((n,), -1, dtype=torch.int64)
        p = torch.as_tensor(prompt_ids)
        if p.dtype.is_floating_point or p.dtype == torch.bool or p.dim() != 1 or p.numel() not in (g, n):
            fail("Scheduler.select", "prompt_ids", f"{shape_str(p)} {p.dtype}",
                 f"integer ids, one per group [{g}] or per rollout [{n}]")
        p = p.cpu().to(torch.int64)
        return torch.repeat_interleave(p, batch.group_sizes.cpu()) if p.numel() == g and g != n else p

    # ------------------------------------------------------------------ select
    def select(self, batch: RolloutBatch, *, prompt_ids=None, contexts: torch.Tensor | None = None) -> ScheduleStep:
        """Choose this round's training rollouts. `contexts` [N, D] overrides the feature kernel
        (custom features); `prompt_ids` [G] or [N] are stored so reused rollouts keep their prompt."""
        cfg = self.config
        if not isinstance(batch, RolloutBatch):
            fail("Scheduler.select", "batch", type(batch).__name__, "a RolloutBatch")
        batch.validate()
        n = batch.num_rollouts
        prompts = self._prompt_ids(prompt_ids, batch)
        if contexts is not None:
            check_contexts("Scheduler.select", contexts, self.feature_dim)
            if contexts.shape[0] != n:
                fail("Scheduler.select", "contexts", f"shape {shape_str(contexts)}", f"[{n}, {self.feature_dim}]")
        elif self.feature_dim != NUM_FEATURES:
            fail("Scheduler.select", "contexts", "None", f"contexts [N, {self.feature_dim}]: the learner's "
                 f"feature width {self.feature_dim} differs from rollout_features' {NUM_FEATURES}")

        # The paper's batch gain labels round t-1's pulled arms once this round's batch is seen.
        value, entropy = batch_value_entropy(batch)
        if cfg.gain == "batch" and self.batch_prev is not None:
            prev = self.batch_prev
            r = batch_gain(prev["value"], value, prev["entropy"], entropy,
                           entropy_weight=cfg.entropy_weight, entropy_min=cfg.entropy_min)
            self.counters["last_batch_gain"] = r
            ids = prev["arm_ids"][torch.isin(prev["arm_ids"], self.pending["arm_ids"])]
            self.observe(ids, torch.full((ids.numel(),), r))

        t = self.round
        fresh = self._select_fresh(batch, contexts)
        reused, r_score, r_mean, r_bonus = self._select_reuse(t, batch.device, fresh.indices.numel(), n)

        fresh_ids = self.next_arm_id + torch.arange(n)
        self.next_arm_id += n
        group_uids = self.next_group_uid + batch.group_index().cpu()
        self.next_group_uid += batch.num_groups
        advantage = group_advantage(batch.reward.detach().cpu(), batch.group_offsets.cpu())
        if self.buffer is not None:
            self.buffer.insert(batch, contexts=fresh.contexts, arm_ids=fresh_ids, group_uids=group_uids,
                               prompt_ids=prompts, advantage=advantage, scores=fresh.scores, used=fresh.mask,
                               round_index=t)
        if self.learner is not None:
            self.learner.update_feature_stats(fresh.contexts)

        idx = fresh.indices.cpu()
        pulled = fresh_ids[idx]
        p_ctx = fresh.contexts.detach().cpu().float()[idx]
        p_mean = fresh.mean.detach().cpu().float()[idx]
        p_bonus = fresh.bonus.detach().cpu().float()[idx]
        p_score = fresh.scores.detach().cpu().float()[idx]
        if reused is not None:
            pulled = torch.cat([pulled, reused.arm_ids])
            p_ctx = torch.cat([p_ctx, reused.contexts])
            p_mean = torch.cat([p_mean, r_mean.cpu()])
            p_bonus = torch.cat([p_bonus, r_bonus.cpu()])
            p_score = torch.cat([p_score, r_score.cpu()])
        if self.learner is not None:
            self._add_pending(pulled, p_ctx, p_mean, t)
        if cfg.gain == "batch":
            self.batch_prev = {"value": value, "entropy": entropy, "arm_ids": pulled.clone()}

        c = self.counters
        c["fresh_seen"] += n
        c["fresh_selected"] += int(idx.numel())
        c["reused"] += 0 if reused is None else int(reused.arm_ids.numel())
        c["last_num_reused"] = 0 if reused is None else int(reused.arm_ids.numel())
        c["last_selection_rate"] = idx.numel() / n
        if p_score.numel():
            c["last_mean_score"] = float(p_score.mean())
            c["last_mean_bonus"] = float(p_bonus.mean())
            if self.learner is not None:
                # UCB regret bound: each pull's regret is at most twice its confidence width.
                c["regret_estimate"] += 2.0 * float(p_bonus.abs().mean())
        self.round += 1
        return ScheduleStep(
            round=t, batch=batch, fresh=fresh, fresh_arm_ids=fresh_ids, fresh_group_uids=group_uids,
            fresh_prompt_ids=prompts, fresh_advantage=advantage, reused=reused,
            reused_scores=r_score, reused_mean=r_mean, reused_bonus=r_bonus,
        )

    def _k_ratio(self) -> tuple[int | None, float | None]:
        cfg = self.config
        return (cfg.intra_k, None) if cfg.intra_k is not None else (None, cfg.intra_ratio)

    def _select_fresh(self, batch: RolloutBatch, contexts: torch.Tensor | None) -> Selection:
        cfg = self.config
        k, ratio = self._k_ratio()
        if cfg.policy == "cbs":
            weights = self.learner.export_weights(batch.device)
            if cfg.intra_rule == "max_variance":
                ctx = contexts if contexts is not None else rollout_features(batch, self.feature_config,
                                                                              backend=cfg.backend)
                score, mean, bonus = self.learner.score(ctx, backend=cfg.backend)
                idx, mask = baselines.max_variance_by_score(batch.reward, batch.group_offsets, score, k=k,
                                                            ratio=ratio)
                return Selection(idx, mask, score, mean, bonus, ctx)
            if weights is not None and contexts is None:
                return schedule(batch, weights, k=k, ratio=ratio, keep_contrast=cfg.keep_contrast,
                                feature_config=self.feature_config, backend=cfg.backend)
            ctx = contexts if contexts is not None else rollout_features(batch, self.feature_config,
                                                                          backend=cfg.backend)
            score, mean, bonus = self.learner.score(ctx, backend=cfg.backend)
            idx, mask = group_topk(score, batch.group_offsets, k=k, ratio=ratio, rewards=batch.reward,
                                   keep_contrast=cfg.keep_contrast, backend=cfg.backend)
            return Selection(idx, mask, score, mean, bonus, ctx)
        ctx = contexts if contexts is not None else rollout_features(batch, self.feature_config, backend=cfg.backend)
        go = batch.group_offsets
        if cfg.policy in ("keep_all", "reuse_fifo"):
            idx, mask = baselines.keep_all(go)
        elif cfg.policy == "random_k":
            idx, mask = baselines.random_k(go, k=k, ratio=ratio, generator=self.generator)
        elif cfg.policy == "pods":
            idx, mask = baselines.max_variance(batch.reward, go, k=k, ratio=ratio)
        else:
            idx, mask = baselines.dapo_filter(batch.reward, go)
        z = torch.zeros(batch.num_rollouts, device=batch.device)
        return Selection(idx, mask, z, z, z, ctx)

    def _select_reuse(self, t: int, device, n_fresh_kept: int, n: int):
        empty = torch.zeros(0)
        if self.buffer is None:
            return None, empty, empty, empty
        self.buffer.advance(t)
        cfg = self.config
        m = cfg.reuse_m if cfg.reuse_m is not None else math.ceil(cfg.reuse_ratio * n_fresh_kept - 1e-9)
        live = self.buffer.live_slots()
        if m <= 0 or live.numel() == 0:
            return None, empty, empty, empty
        if cfg.policy == "reuse_fifo":
            # A replay queue: least-used first, oldest first among equals.
            chosen = live[torch.sort(self.buffer.slot["reuse_count"][live], stable=True).indices[:m]]
            score = mean = bonus = torch.zeros(live.numel())
        else:
            ctx = self.buffer.candidate_contexts(live).to(device)
            score, mean, bonus = (v.detach().cpu().float() for v in self.learner.score(ctx, backend=cfg.backend))
            pick, _ = global_topm(score.to(device), m, backend=cfg.backend)
            chosen = live[pick.cpu()]
            self.buffer.set_scores(live, score)
        reused = self.buffer.gather(chosen)
        # Scores of the gathered rows (gather reorders by group).
        order = torch.argsort(live)
        pos = order[torch.searchsorted(live[order], reused.slots)]
        self.buffer.mark_used(reused.slots)
        return reused, score[pos], mean[pos], bonus[pos]

    def _add_pending(self, arm_ids, contexts, mean, t: int) -> None:
        p = self.pending
        keep = (p["round"] > t - self.config.pending_rounds) & ~torch.isin(p["arm_ids"], arm_ids)
        self.pending = {
            "arm_ids": torch.cat([p["arm_ids"][keep], arm_ids]),
            "contexts": torch.cat([p["contexts"][keep], contexts]),
            "round": torch.cat([p["round"][keep], torch.full((arm_ids.numel(),), t, dtype=torch.int64)]),
            "mean": torch.cat([p["mean"][keep], mean]),
        }

    # ------------------------------------------------------------------ observe
    def observe(self, arm_ids, gains) -> None:
        """Feed observed gains of pulled arms to the learner (ValueError leaves all state as it was).

        Arm ids must be pulled within the last `pending_rounds` rounds and not yet observed."""
        if not isinstance(arm_ids, torch.Tensor):
            arm_ids = torch.as_tensor(arm_ids)
        if arm_ids.dim() != 1 or arm_ids.dtype.is_floating_point or arm_ids.dtype == torch.bool:
            fail("Scheduler.observe", "arm_ids", f"{shape_str(arm_ids)} {arm_ids.dtype}", "a 1-D integer tensor")
        ids = arm_ids.cpu().to(torch.int64)
        gains = check_gains("Scheduler.observe", gains, ids.numel()).detach().cpu().float()
        if torch.unique(ids).numel() != ids.numel():
            fail("Scheduler.observe", "arm_ids", "a repeated arm id", "each arm at most once per call")
        if ids.numel() == 0:
            return
        p = self.pending
        if self.learner is None:
            if self.buffer is not None:
                self.buffer.set_last_gain(ids, gains)
            self.counters["observed"] += ids.numel()
            return
        order = torch.argsort(p["arm_ids"])
        sorted_ids = p["arm_ids"][order]
        pos = torch.searchsorted(sorted_ids, ids).clamp_max(max(sorted_ids.numel() - 1, 0))
        found = (sorted_ids[pos] == ids) if sorted_ids.numel() else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = ids[~found][:5].tolist()
            fail("Scheduler.observe", "arm_ids", f"ids never selected, already observed or older than "
                 f"pending_rounds={self.config.pending_rounds} (e.g. {missing})", "arm ids of pulled arms")
        rows = order[pos]
        ctx = p["contexts"][rows]
        self.learner.observe(ctx, gains)
        err = (p["mean"][rows] - gains).pow(2).mean().item()
        c = self.counters
        c["sq_err_ema"] = err if math.isnan(c["sq_err_ema"]) else 0.9 * c["sq_err_ema"] + 0.1 * err
        c["observed"] += ids.numel()
        if self.buffer is not None:
            self.buffer.set_last_gain(ids, gains)
        keep = torch.ones(p["arm_ids"].numel(), dtype=torch.bool)
        keep[rows] = False
        self.pending = {k: v[keep] for k, v in p.items()}

    def gains(self, step: ScheduleStep, logp_after: torch.Tensor, *, logp_before: torch.Tensor | None = None,
              advantage: torch.Tensor | None = None, probe: ProbeInputs | None = None) -> ArmGains:
        """Per-arm gains of `step` by the configured signal.

        logp_after / logp_before: flat [T] log-probs of `step.gain_batch`'s tokens (every fresh
        rollout, then the reused ones) under the policy after / before the optimizer step;
        logp_before defaults to `step.default_logp_before()`. advantage [N + m] defaults to
        `step.gain_advantage`. probe: needed for gain="probe"."""
        cfg = self.config
        if cfg.gain == "batch":
            raise ValueError("Scheduler.gains: config.gain is 'batch', expected self | heldout | probe | auto "
                             "(the batch gain is computed inside select(); just call select next round)")
        gb = step.gain_batch
        before = step.default_logp_before() if logp_before is None else logp_before
        inputs = GainInputs(
            logp_before=before.detach().cpu().float(), logp_after=logp_after.detach().cpu().float(),
            offsets=gb.offsets.cpu().to(torch.int64), reward=gb.reward.detach().cpu().float(),
            group_offsets=gb.group_offsets.cpu(), selected=step.gain_selected, arm_ids=step.gain_arm_ids,
            advantage=step.gain_advantage if advantage is None else advantage.detach().cpu().float(),
            probe=probe,
        )
        return compute_gains(cfg.gain, inputs, log_ratio_clip=cfg.heldout_log_ratio_clip,
                             ratio_level=cfg.heldout_ratio_level)

    def observe_step(self, step: ScheduleStep, logp_after: torch.Tensor, **kw) -> ArmGains:
        """gains(...) then observe(...): the trainer's one call after its optimizer step."""
        arms = self.gains(step, logp_after, **kw)
        self.observe(arms.arm_ids, arms.gains)
        return arms

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        c = self.counters
        out = {
            "round": self.round,
            "policy": self.config.policy,
            "selection_rate": c["fresh_selected"] / max(c["fresh_seen"], 1),
            "last_selection_rate": c["last_selection_rate"],
            "mean_score": c["last_mean_score"],
            "mean_bonus": c["last_mean_bonus"],
            "reused_total": c["reused"],
            "last_num_reused": c["last_num_reused"],
            "observed_arms": c["observed"],
            "pending_arms": int(self.pending["arm_ids"].numel()),
            "regret_estimate": c["regret_estimate"],
            "regret_estimate_per_round": c["regret_estimate"] / max(self.round, 1),
            "prediction_rmse": math.sqrt(c["sq_err_ema"]) if not math.isnan(c["sq_err_ema"]) else float("nan"),
            "last_batch_gain": c["last_batch_gain"],
        }
        if self.buffer is not None:
            out.update(self.buffer.stats())
        else:
            out.update({"buffer_size": 0, "buffer_live_tokens": 0, "buffer_nbytes": 0,
                        "buffer_evicted_total": 0, "buffer_age_histogram": []})
        return out

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to decide exactly as an uninterrupted one (plain
        tensors, numbers and dicts: loads with torch.load(weights_only=True))."""
        return {
            "config": asdict(self.config),
            "round": self.round,
            "next_arm_id": self.next_arm_id,
            "next_group_uid": self.next_group_uid,
            "generator": self.generator.get_state(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "pending": {k: v.clone() for k, v in self.pending.items()},
            "batch_prev": None if self.batch_prev is None else dict(self.batch_prev),
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict) -> None:
        cfg = SchedulerConfig(**state["config"])
        if cfg != self.config:
            diff = [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(self.config, f.name)]
            fail("Scheduler", "state['config']", f"a different config (fields {diff})", "this scheduler's config")
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.round = int(state["round"])
        self.next_arm_id = int(state["next_arm_id"])
        self.next_group_uid = int(state["next_group_uid"])
        self.generator.set_state(state["generator"])
        self.pending = {k: v.clone() for k, v in state["pending"].items()}
        self.batch_prev = None if state["batch_prev"] is None else dict(state["batch_prev"])
        self.counters = dict(state["counters"])
