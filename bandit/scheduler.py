"""Scheduler: the one object a trainer talks to.

Per RLVR step (round t):
    step = scheduler.select(batch, prompt_ids=...)      # fresh top-p% per group + global top-K reuse
    train on step.train_batch (advantages: step.train_advantage_for(normalize_std), prompts:
      step.train_prompt_ids / step.train_prompt_tokens), then
    scheduler.record_clip_ratio(step, clip_ratio)       # per train row: a feature of reused rows
    # gain="batch" (the paper's signal): nothing else; round t is labelled inside select(t+1).
    # gain="self" | "heldout" | "probe" | "auto": after the optimizer step,
    scheduler.observe_step(step, logp_after=..., logp_before=..., probe=...)
    #   = arms = scheduler.gains(step, ...); scheduler.observe(arms.arm_ids, arms.gains)

Every rollout the scheduler sees gets a stable integer arm id (fresh rollouts at select time;
reused ones keep theirs), so gains computed anywhere can be matched to the contexts that were
scored. All randomness lives in generators that `state_dict()` saves, so a resumed run makes the
same decisions as an uninterrupted one. `select` and `observe` check everything that can fail
before they change anything: a ValueError leaves the scheduler as it was.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from rollout_bandits.bandit import baselines
from rollout_bandits.bandit._online import check_contexts, check_gains
from rollout_bandits.bandit.buffer import AdvancePlan, RolloutBuffer
from rollout_bandits.bandit.gains import (
    ArmGains,
    GainInputs,
    ProbeInputs,
    batch_gain,
    batch_value_entropy,
    compute_gains,
)
from rollout_bandits.bandit.scheduler_config import (  # noqa: F401 (re-exported)
    EXPLORERS,
    INTRA_RULES,
    POLICIES,
    SchedulerConfig,
)
from rollout_bandits.bandit.select_inputs import advantages, prompt_ids_per_rollout, prompt_tokens_per_rollout
from rollout_bandits.bandit.step import ScheduleStep
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.group_topk import global_topm, group_topk
from rollout_bandits.kernels.rollout_features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    FeatureConfig,
    rollout_features,
)
from rollout_bandits.kernels.schedule import Selection
from rollout_bandits.validation import (
    all_finite,
    check_int,
    check_tensor,
    describe,
    fail,
    shape_str,
)

_SEL = "Scheduler.select"


@dataclass
class _SelectInputs:
    """Everything `select` checked or computed before it changes any state."""

    batch: RolloutBatch
    contexts: torch.Tensor
    prompt_ids: torch.Tensor
    advantage: torch.Tensor
    advantage_centered: torch.Tensor
    prompt_tokens: list | None
    value: float
    entropy: float
    batch_gain: float | None  # the paper's label of the previous round's pulled arms
    observe_ids: torch.Tensor | None  # those arms, still pending
    observe_rows: torch.Tensor | None  # their rows of `pending`


@dataclass
class _ReusePlan:
    advance: AdvancePlan
    live: torch.Tensor  # candidate slots after the advance
    chosen: torch.Tensor | None  # slots to reuse (None: no reuse this round)
    score: torch.Tensor  # [live] scores (set on the buffer when learned)
    mean: torch.Tensor
    bonus: torch.Tensor
    scored: bool


class Scheduler:
    """Fresh intra-group top-p% + global top-K reuse, one learner scoring both.

    `seed` seeds the scheduler's own randomness (random_k); it is given here once and saved by
    `state_dict` (the learners have their own `seed` fields)."""

    def __init__(self, config: SchedulerConfig | None = None, *, seed: int = 0):
        self.config = cfg = SchedulerConfig() if config is None else config
        if not isinstance(cfg, SchedulerConfig):
            fail("Scheduler", "config", describe(cfg), "a SchedulerConfig")
        self.seed = check_int("Scheduler", "seed", seed, 0)
        self.learner = None
        if cfg.policy == "cbs":
            self.learner = EXPLORERS[cfg.explorer][1](cfg.explorer_config)
        self.buffer = RolloutBuffer(cfg.effective_buffer()) if cfg.reuses else None
        self.feature_config = FeatureConfig(low_quantile=cfg.feature_low_quantile)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.round = 0
        self.next_arm_id = 0
        self.next_group_uid = 0
        d = cfg.feature_dim
        self.pending = {"arm_ids": torch.zeros(0, dtype=torch.int64), "contexts": torch.zeros(0, d),
                        "round": torch.zeros(0, dtype=torch.int64), "mean": torch.zeros(0)}
        self.batch_prev: dict | None = None  # the `batch` signal's V_t, E_t and round t's pulled arms
        self.counters = {"fresh_seen": 0, "fresh_selected": 0, "reused": 0, "observed": 0,
                         "empty_selections": 0,
                         "regret_estimate": 0.0, "sq_err_ema": float("nan"), "last_selection_rate": float("nan"),
                         "last_mean_score": float("nan"), "last_mean_bonus": float("nan"),
                         "last_num_reused": 0, "last_batch_gain": float("nan")}

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    # ------------------------------------------------------------- validation
    def _contexts(self, contexts, batch: RolloutBatch) -> torch.Tensor:
        n, d = batch.num_rollouts, self.feature_dim
        if contexts is not None:
            check_contexts(_SEL, contexts, d)
            if contexts.shape[0] != n:
                fail(_SEL, "contexts", f"shape {shape_str(contexts)}", f"[{n}, {d}]")
            return contexts
        if d != NUM_FEATURES:
            fail(_SEL, "contexts", "None", f"contexts [N, {d}]: the learner's feature width {d} differs "
                 f"from rollout_features' {NUM_FEATURES}")
        ctx = rollout_features(batch, self.feature_config, backend=self.config.backend, validate=False)  # validated
        bad = ~torch.isfinite(ctx)
        if bool(bad.any()):
            i, j = (int(v) for v in torch.nonzero(bad)[0])
            fail(_SEL, "batch", f"values whose feature {FEATURE_NAMES[j]} is {ctx[i, j].item()} (rollout {i})",
                 "rewards and log-probs whose features float32 can hold")
        return ctx

    def _check_select(self, batch, prompt_ids, contexts, advantage, prompt_tokens) -> _SelectInputs:
        """Every check of `select`, and what can be computed, before any state changes."""
        cfg = self.config
        if not isinstance(batch, RolloutBatch):
            fail(_SEL, "batch", describe(batch), "a RolloutBatch")
        batch.validate()
        if batch.num_rollouts == 0:
            fail(_SEL, "batch", "0 rollouts", "at least one rollout to choose from")
        batch = batch.with_finite_rewards()
        prompts = prompt_ids_per_rollout(prompt_ids, batch)
        adv, centered = advantages(advantage, batch)
        tokens = prompt_tokens_per_rollout(prompt_tokens, batch)
        if self.buffer is not None:
            self.buffer.check_insertable(batch)
        ctx = self._contexts(contexts, batch)
        value, entropy = batch_value_entropy(batch)
        r = ids = rows = None
        if cfg.gain == "batch" and self.batch_prev is not None:
            # The paper's batch gain labels round t-1's pulled arms once this round's batch is seen.
            prev = self.batch_prev
            r = batch_gain(prev["value"], value, prev["entropy"], entropy,
                           entropy_weight=cfg.entropy_weight, entropy_min=cfg.entropy_min)
            ids = prev["arm_ids"][torch.isin(prev["arm_ids"], self.pending["arm_ids"])]
            if self.learner is not None:
                rows = self._pending_rows(ids)
        return _SelectInputs(batch, ctx, prompts, adv, centered, tokens, value, entropy, r, ids, rows)

    # ------------------------------------------------------------------ select
    def select(self, batch: RolloutBatch, *, prompt_ids=None, contexts: torch.Tensor | None = None,
               advantage: torch.Tensor | None = None, prompt_tokens=None) -> ScheduleStep:
        """Choose this round's training rollouts (`step.train_batch`; possibly none).

        prompt_ids: [G] or [N] integer ids, stored so reused rollouts keep their prompt.
        contexts: [N, D] instead of the feature kernel's (custom features).
        advantage: [N] the trainer's own advantages: used for the fresh rows and stored for
          their reuse (otherwise GRPO's group-normalized reward).
        prompt_tokens: [G] or [N] prompt token id sequences, kept in the buffer so reused rows
          come back with their prompt (`step.train_prompt_tokens`).
        A ValueError (bad input, or values the features or the learner cannot hold) leaves the
        scheduler exactly as it was."""
        inp = self._check_select(batch, prompt_ids, contexts, advantage, prompt_tokens)
        batch = inp.batch
        t = self.round
        # The learner may train (batch gain) and takes this batch's context scale before it
        # scores (no score reads unstandardized contexts): undo both if scoring fails.
        trains = inp.observe_rows is not None and inp.observe_rows.numel() > 0
        learner_state = self.learner.state_dict() if trains else None
        stats_state = self.learner.feature_stats.state_dict() if self.learner is not None else None
        generator_state = self.generator.get_state()
        try:
            if trains:
                self.learner.observe(self.pending["contexts"][inp.observe_rows],
                                     torch.full((inp.observe_rows.numel(),), inp.batch_gain))
            if self.learner is not None:
                self.learner.update_feature_stats(inp.contexts)
            fresh = self._select_fresh(batch, inp.contexts)
            reuse = self._plan_reuse(t, batch.device, fresh.indices.numel())
        except Exception:
            if learner_state is not None:
                self.learner.load_state_dict(learner_state)
            elif stats_state is not None:
                self.learner.feature_stats.load_state_dict(stats_state)
            self.generator.set_state(generator_state)
            raise

        # Nothing below can fail: commit.
        if inp.batch_gain is not None:
            self.counters["last_batch_gain"] = inp.batch_gain
            self._record_observation(inp.observe_ids, torch.full((inp.observe_ids.numel(),), inp.batch_gain),
                                     inp.observe_rows)
        reused, r_score, r_mean, r_bonus = self._commit_reuse(reuse)
        n = batch.num_rollouts
        fresh_ids = self.next_arm_id + torch.arange(n)
        self.next_arm_id += n
        group_uids = self.next_group_uid + batch.group_index().cpu()
        self.next_group_uid += batch.num_groups
        if self.buffer is not None:
            self.buffer.insert(batch, contexts=fresh.contexts, arm_ids=fresh_ids, group_uids=group_uids,
                               prompt_ids=inp.prompt_ids, advantage=inp.advantage, scores=fresh.scores,
                               used=fresh.mask, round_index=t, advantage_centered=inp.advantage_centered,
                               prompt_tokens=inp.prompt_tokens)
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
        if self.config.gain == "batch":
            self.batch_prev = {"value": inp.value, "entropy": inp.entropy, "arm_ids": pulled.clone()}

        c = self.counters
        num_reused = 0 if reused is None else int(reused.arm_ids.numel())
        c["fresh_seen"] += n
        c["fresh_selected"] += int(idx.numel())
        c["reused"] += num_reused
        c["last_num_reused"] = num_reused
        c["last_selection_rate"] = idx.numel() / n
        c["empty_selections"] += int(pulled.numel() == 0)
        if p_score.numel():
            c["last_mean_score"] = float(p_score.mean())
            c["last_mean_bonus"] = float(p_bonus.mean())
            if self.learner is not None:
                # UCB regret bound: each pull's regret is at most twice its confidence width.
                c["regret_estimate"] += 2.0 * float(p_bonus.abs().mean())
        self.round += 1
        return ScheduleStep(
            round=t, batch=batch, fresh=fresh, fresh_arm_ids=fresh_ids, fresh_group_uids=group_uids,
            fresh_prompt_ids=inp.prompt_ids, fresh_advantage=inp.advantage,
            fresh_advantage_centered=inp.advantage_centered, fresh_prompt_tokens=inp.prompt_tokens,
            reused=reused, reused_scores=r_score, reused_mean=r_mean, reused_bonus=r_bonus,
        )

    def _k_ratio(self) -> tuple[int | None, float | None]:
        cfg = self.config
        return (cfg.intra_k, None) if cfg.intra_k is not None else (None, cfg.intra_ratio)

    def _score(self, contexts: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learner's (score, mean, bonus); a ValueError if any is not finite."""
        out = self.learner.score(contexts, backend=self.config.backend)
        for v in out:
            bad = ~torch.isfinite(v)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                z = self.learner.standardize(contexts[i:i + 1].float())[0].double().abs()
                j = int(torch.argmax(torch.nan_to_num(z, nan=math.inf)))
                name = FEATURE_NAMES[j] if self.feature_dim == NUM_FEATURES else f"column {j}"
                fail(_SEL, "batch" if what == "fresh" else "buffer",
                     f"{what} rollout {i} scored {v[i].item()} by the learner (its {name} is {z[j].item():.3g} "
                     "running standard deviations from the mean)",
                     "contexts the learner can score (within the range it has seen by a factor float32 holds)")
        return out

    def _select_fresh(self, batch: RolloutBatch, ctx: torch.Tensor) -> Selection:
        """Pure but for random_k's generator and the learner's export cache."""
        cfg = self.config
        k, ratio = self._k_ratio()
        go = batch.group_offsets
        if cfg.policy == "cbs":
            score, mean, bonus = self._score(ctx, "fresh")
            if cfg.intra_rule == "max_variance":
                idx, mask = baselines.max_variance_by_score(batch.reward, go, score, k=k, ratio=ratio)
            else:
                idx, mask = group_topk(score, go, k=k, ratio=ratio, rewards=batch.reward,
                                       keep_contrast=cfg.keep_contrast, backend=cfg.backend)
            return Selection(idx, mask, score, mean, bonus, ctx)
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

    def _plan_reuse(self, t: int, device, n_fresh_kept: int) -> _ReusePlan | None:
        """Which buffer rollouts to reuse this round, decided without changing the buffer."""
        if self.buffer is None:
            return None
        plan = self.buffer.plan_advance(t)
        cfg = self.config
        m = cfg.reuse_m if cfg.reuse_m is not None else math.ceil(cfg.reuse_ratio * n_fresh_kept - 1e-9)
        live = plan.live(self.buffer)
        empty = torch.zeros(0)
        if m <= 0 or live.numel() == 0:
            return _ReusePlan(plan, live, None, empty, empty, empty, False)
        if cfg.policy == "reuse_fifo":
            # A replay queue: least-used first, oldest first among equals.
            chosen = live[torch.sort(self.buffer.slot["reuse_count"][live], stable=True).indices[:m]]
            z = torch.zeros(live.numel())
            return _ReusePlan(plan, live, chosen, z, z, z, False)
        ctx = self.buffer.candidate_contexts(live, age=plan.age).to(device)
        score, mean, bonus = (v.detach().cpu().float() for v in self._score(ctx, "stored"))
        pick, _ = global_topm(score.to(device), m, backend=cfg.backend)
        return _ReusePlan(plan, live, live[pick.cpu()], score, mean, bonus, True)

    def _commit_reuse(self, plan: _ReusePlan | None):
        empty = torch.zeros(0)
        if plan is None:
            return None, empty, empty, empty
        self.buffer.advance(plan.advance.round_index, plan.advance)
        if plan.chosen is None:
            return None, empty, empty, empty
        if plan.scored:
            self.buffer.set_scores(plan.live, plan.score)
        reused = self.buffer.gather(plan.chosen)
        # Scores of the gathered rows (gather reorders by group).
        live = plan.live
        order = torch.argsort(live)
        pos = order[torch.searchsorted(live[order], reused.slots)]
        self.buffer.mark_used(reused.slots)
        return reused, plan.score[pos], plan.mean[pos], plan.bonus[pos]

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
    def _pending_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of `pending` holding these arm ids (a ValueError if one is not pending)."""
        p = self.pending
        order = torch.argsort(p["arm_ids"])
        sorted_ids = p["arm_ids"][order]
        pos = torch.searchsorted(sorted_ids, ids).clamp_max(max(sorted_ids.numel() - 1, 0))
        found = (sorted_ids[pos] == ids) if sorted_ids.numel() else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = ids[~found][:5].tolist()
            fail("Scheduler.observe", "arm_ids", f"ids never selected, already observed or older than "
                 f"pending_rounds={self.config.pending_rounds} (e.g. {missing})", "arm ids of pulled arms")
        return order[pos]

    def _record_observation(self, ids: torch.Tensor, gains: torch.Tensor, rows: torch.Tensor | None) -> None:
        """The scheduler's bookkeeping of observed gains (the learner has learned from them)."""
        c = self.counters
        c["observed"] += ids.numel()
        if self.buffer is not None:
            self.buffer.set_last_gain(ids, gains)
        if rows is None or ids.numel() == 0:
            return
        p = self.pending
        err = (p["mean"][rows] - gains).pow(2).mean().item()
        c["sq_err_ema"] = err if math.isnan(c["sq_err_ema"]) else 0.9 * c["sq_err_ema"] + 0.1 * err
        keep = torch.ones(p["arm_ids"].numel(), dtype=torch.bool)
        keep[rows] = False
        self.pending = {k: v[keep] for k, v in p.items()}

    def observe(self, arm_ids, gains) -> None:
        """Feed observed gains of pulled arms to the learner (ValueError leaves all state as it was).

        Arm ids must be pulled within the last `pending_rounds` rounds and not yet observed."""
        o = "Scheduler.observe"
        if not isinstance(arm_ids, torch.Tensor):
            try:
                arm_ids = torch.as_tensor(arm_ids)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                fail(o, "arm_ids", describe(arm_ids), "a 1-D integer tensor")
        if arm_ids.dim() != 1 or arm_ids.dtype.is_floating_point or arm_ids.dtype.is_complex or \
                arm_ids.dtype == torch.bool:
            fail(o, "arm_ids", f"{shape_str(arm_ids)} {arm_ids.dtype}", "a 1-D integer tensor")
        ids = arm_ids.cpu().to(torch.int64)
        gains = check_gains(o, gains, ids.numel()).detach().cpu().float()
        if torch.unique(ids).numel() != ids.numel():
            fail(o, "arm_ids", "a repeated arm id", "each arm at most once per call")
        if ids.numel() == 0:
            return
        if self.learner is None:
            self._record_observation(ids, gains, None)
            return
        rows = self._pending_rows(ids)
        self.learner.observe(self.pending["contexts"][rows], gains)
        self._record_observation(ids, gains, rows)

    def gains(self, step: ScheduleStep, logp_after: torch.Tensor, *, logp_before: torch.Tensor | None = None,
              advantage: torch.Tensor | None = None, probe: ProbeInputs | None = None) -> ArmGains:
        """Per-arm gains of `step` by the configured signal.

        logp_after / logp_before: flat [T] log-probs of `step.gain_batch`'s tokens (every fresh
        rollout, then the reused ones) under the policy after / before the optimizer step;
        logp_before defaults to `step.default_logp_before()`. advantage [N + m] defaults to
        `step.gain_advantage`. probe: needed for gain="probe"."""
        cfg = self.config
        o = "Scheduler.gains"
        if cfg.gain == "batch":
            fail(o, "config.gain", "'batch'", "self | heldout | probe | auto (the batch gain is computed "
                 "inside select(); just call select next round)")
        if not isinstance(step, ScheduleStep):
            fail(o, "step", describe(step), "the ScheduleStep select returned")
        gb = step.gain_batch
        before = step.default_logp_before() if logp_before is None else logp_before
        check_tensor(o, "logp_after", logp_after, dim=1, kind="float", expected=f"[{gb.num_tokens}]")
        check_tensor(o, "logp_before", before, dim=1, kind="float", expected=f"[{gb.num_tokens}]")
        check_tensor(o, "advantage", advantage, dim=1, kind="float", allow_none=True)
        inputs = GainInputs(
            logp_before=before.detach().cpu().float(), logp_after=logp_after.detach().cpu().float(),
            offsets=gb.offsets.cpu().to(torch.int64), reward=gb.reward.detach().cpu().float(),
            group_offsets=gb.group_offsets.cpu(), selected=step.gain_selected, arm_ids=step.gain_arm_ids,
            advantage=step.gain_advantage if advantage is None else advantage.detach().cpu().float(),
            probe=probe, mask_nonfinite=gb.mask_nonfinite,
        )
        return compute_gains(cfg.gain, inputs, log_ratio_clip=cfg.heldout_log_ratio_clip,
                             ratio_level=cfg.heldout_ratio_level)

    def observe_step(self, step: ScheduleStep, logp_after: torch.Tensor, **kw) -> ArmGains:
        """gains(...) then observe(...): the trainer's one call after its optimizer step."""
        arms = self.gains(step, logp_after, **kw)
        self.observe(arms.arm_ids, arms.gains)
        return arms

    # ------------------------------------------------------- what trainers read
    def record_clip_ratio(self, step: ScheduleStep, clip_ratio: torch.Tensor) -> None:
        """The fraction of each train_batch row's tokens clipped in the update just made: a
        feature of the stored rollouts, so reused rows are scored with their latest value."""
        o = "Scheduler.record_clip_ratio"
        if not isinstance(step, ScheduleStep):
            fail(o, "step", describe(step), "the ScheduleStep select returned")
        n = step.num_selected
        c = check_tensor(o, "clip_ratio", clip_ratio, shape=(n,), kind="float",
                         expected=f"[{n}] (one per train_batch row)")
        c = c.detach().cpu().float()
        if n and (not all_finite(c) or bool((c < 0).any()) or bool((c > 1).any())):
            fail(o, "clip_ratio", "a value outside [0, 1] or not finite", "fractions in [0, 1]")
        if self.buffer is not None and n:
            self.buffer.set_clip_ratio(step.arm_ids, c)

    def live_prompt_ids(self) -> torch.Tensor:
        """The distinct prompt ids (sorted int64) that stored rollouts refer to: a trainer may
        forget every other prompt (-1 stands for rollouts stored without a prompt id)."""
        if self.buffer is None:
            return torch.zeros(0, dtype=torch.int64)
        return self.buffer.live_prompt_ids()

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
            "empty_selections": c["empty_selections"],
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
            "seed": self.seed,
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
        if state["seed"] != self.seed:
            fail("Scheduler", "state['seed']", repr(state["seed"]), f"this scheduler's seed {self.seed}")
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
