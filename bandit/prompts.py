"""Prompt scheduling before generation [ours]: spend generation on prompts whose groups teach.

Choosing among rollouts that were already generated can at best match keep-all's gradient with
fewer trained rows; generation is the dominant cost of RLVR, and a group whose G rewards are all
equal (zero variance) has zero advantage: it costs a full group of generation and teaches
nothing. So the trainer draws a candidate pool larger than its generation budget, and this
scheduler picks the prompts to generate for, before any generation:

    choice = prompts.choose(keys, budget, families=..., lengths=...)   # indices into the pool
    ... generate and verify groups for the chosen candidates (in `choice.chosen` order) ...
    prompts.observe(choice, rewards, group_offsets, labels=..., rollout_scores=...)

Policies (`PromptSchedulerConfig.policy`):
- "none": the first `budget` candidates (the trainer's own order: plain uniform sampling).
- "learned": a NeuralUCB learner of the same family as the rollout scheduler's, over prompt
  features built from a bounded per-prompt history (below), trained online on whether each
  generated group was informative (`label`); the top candidates by predicted value plus
  exploration bonus, and `explore_share` of the budget drawn uniformly from the candidates left
  (so that no prompt or family is abandoned for good: GRESO keeps a 1% floor for the same
  reason). Until it has observed a label it takes the first `budget` candidates.
- "greso": GRESO's rule (Zheng et al. 2025, "Act Only When It Pays", their reference code): a
  prompt whose most recent groups were all-correct `c` times in a row is skipped with probability
  1 - max(p_easy^c, 0.01) (all-wrong: p_hard), and p_easy / p_hard move by `greso_step` each round
  toward target shares of easy / hard groups among everything generated so far (1/3 and 2/3 of
  `greso_target_zero`), within [greso_p_min, greso_p_max]. GRESO keeps sampling until its batch
  is full; here the first `budget` unskipped candidates of the pool are generated and, should
  fewer survive, skipped ones fill the budget in pool order (every policy generates the same
  number of groups per round).

History (bounded): per prompt key, times generated, last group pass rate (mean reward) and
reward std, the round it was last generated, the current run of all-correct / all-wrong
groups, and the mean score the rollout scheduler gave its past rollouts. At most
`history_capacity` prompts are kept; a new prompt evicts the least recently generated one
(ties: the lowest slot). Per family (an optional small integer per prompt, e.g. the task
family or a dataset's source column) an exponential moving average of the same group
statistics stands in for a prompt's own history when it has none.

Prompt features (PROMPT_FEATURE_NAMES): the history enters through a weight
w = 0.5 ** (rounds since last generated / history_half_life) (0 for a prompt never generated):
a prompt's own statistics are blended toward its family's as w decays, so a prompt skipped for
long looks more and more like an unseen prompt of its family and comes back when unseen
prompts do; the learner's exploration bonus (gamma) adds the usual optimism on contexts it
has seen little of, and the uniform share retries prompts whatever their history. All
randomness (GRESO's draws, the uniform share) comes from a generator that `state_dict` saves,
so a resumed run makes identical prompt choices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from rollout_bandits.bandit.neural_ucb import NeuralUCB, NeuralUCBConfig
from rollout_bandits.validation import (
    BACKENDS,
    all_finite,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    check_tensor,
    describe,
    fail,
)

PROMPT_POLICIES = ("none", "learned", "greso")
PROMPT_LABELS = ("variance", "std", "gain")
PROMPT_FEATURE_NAMES = (
    "history_weight",  # w: 1 just generated, -> 0 as it goes stale; 0 never generated
    "times_generated",  # w * log1p(times generated)
    "pass_rate",  # w * last group mean reward + (1 - w) * family's
    "reward_std",  # w * last group reward std + (1 - w) * family's
    "zero_streak",  # w * current run of zero-variance groups (all-correct or all-wrong)
    "rollout_score",  # w * mean rollout-scheduler score of its past rollouts + (1 - w) * family's
    "family_pass_rate",  # EMAs over the family's generated groups
    "family_reward_std",
    "family_zero_share",
    "prompt_length",  # log1p(prompt tokens), 0 when not given
)
NUM_PROMPT_FEATURES = len(PROMPT_FEATURE_NAMES)
_O = "PromptScheduler"


@dataclass
class PromptLearnerConfig(NeuralUCBConfig):
    """NeuralUCB over the prompt features: NeuralUCBConfig with their width and a smaller MLP (a
    partial override such as `--prompts.learner.gamma 2` keeps these defaults)."""

    feature_dim: int = NUM_PROMPT_FEATURES
    hidden: int = 32
    gamma: float = 1.0


@dataclass
class PromptSchedulerConfig:
    """Which prompts get generated (see the module docstring).

    policy: none | learned | greso.
    candidate_pool: the trainer draws ceil(candidate_pool * budget) candidates per round (1: no
      choice; "none" then equals plain sampling whatever the pool).
    explore_share: the learned policy's share of the budget drawn uniformly at random from the
      candidates its scores did not pick.
    label: what the learned policy regresses for each generated group: "variance" (1 if its
      rewards differ, else 0: informative or not), "std" (its reward std), "gain" (the gain signal
      the trainer reports for the group, e.g. the mean per-arm gain of its rollouts).
    history_capacity: prompts remembered (least recently generated evicted first).
    history_half_life: rounds after which a prompt's own history counts half (None: never fades).
    num_families: family ids must lie in [0, num_families).
    family_ema: the weight of a new group in its family's moving averages.
    learner: the NeuralUCB learner of the learned policy (feature_dim = NUM_PROMPT_FEATURES;
      gamma is its exploration weight).
    greso_*: GRESO's rule: initial keep probabilities (`greso_p_init`), their step, bounds, and the
      target zero-variance share (split 1/3 easy, 2/3 hard as in GRESO's code); `easy_reward`: a
      zero-variance group whose reward is >= it counts as all-correct, else all-wrong.
    backend: the scoring kernel's backend.
    """

    policy: str = "none"
    candidate_pool: float = 2.0
    explore_share: float = 0.1
    label: str = "variance"
    history_capacity: int = 65536
    history_half_life: float | None = 32.0
    num_families: int = 64
    family_ema: float = 0.1
    easy_reward: float = 0.5
    greso_p_init: float = 0.5
    greso_step: float = 0.01
    greso_p_min: float = 0.05
    greso_p_max: float = 0.95
    greso_target_zero: float = 0.25
    backend: str = "auto"
    learner: PromptLearnerConfig = field(default_factory=PromptLearnerConfig)

    def __post_init__(self) -> None:
        o = "PromptSchedulerConfig"
        check_field_types(self)
        check_choice(o, "policy", self.policy, PROMPT_POLICIES)
        check_float(o, "candidate_pool", self.candidate_pool, 1.0, 64.0)
        check_float(o, "explore_share", self.explore_share, 0.0, 1.0)
        check_choice(o, "label", self.label, PROMPT_LABELS)
        check_int(o, "history_capacity", self.history_capacity, 1)
        check_float(o, "history_half_life", self.history_half_life, 0.0, lo_open=True, allow_none=True)
        check_int(o, "num_families", self.num_families, 1, 1 << 20)
        check_float(o, "family_ema", self.family_ema, 0.0, 1.0, lo_open=True)
        check_float(o, "easy_reward", self.easy_reward, -math.inf)
        check_float(o, "greso_p_min", self.greso_p_min, 0.0, 1.0)
        check_float(o, "greso_p_max", self.greso_p_max, self.greso_p_min, 1.0)
        check_float(o, "greso_p_init", self.greso_p_init, self.greso_p_min, self.greso_p_max)
        check_float(o, "greso_step", self.greso_step, 0.0, 1.0)
        check_float(o, "greso_target_zero", self.greso_target_zero, 0.0, 1.0)
        check_choice(o, "backend", self.backend, BACKENDS)
        if self.learner.feature_dim != NUM_PROMPT_FEATURES:
            fail(o, "learner.feature_dim", str(self.learner.feature_dim),
                 f"{NUM_PROMPT_FEATURES} (the prompt features, PROMPT_FEATURE_NAMES)")

    def pool_size(self, budget: int) -> int:
        """Candidates to draw for a generation budget of `budget` prompts."""
        return max(budget, math.ceil(self.candidate_pool * budget - 1e-9))


@dataclass
class PromptChoice:
    """One round's choice: `chosen` indexes the candidate pool (ascending: pool order kept)."""

    round: int
    keys: torch.Tensor  # [M] int64 candidate keys
    families: torch.Tensor  # [M] int64
    chosen: torch.Tensor  # [B] int64 indices into the pool
    contexts: torch.Tensor  # [M, NUM_PROMPT_FEATURES]
    score: torch.Tensor  # [M] learned: mean + bonus; greso: keep probability; none: 0
    mean: torch.Tensor  # [M]
    bonus: torch.Tensor  # [M]
    skipped: torch.Tensor  # [M] bool: greso's skip draws (False elsewhere)

    @property
    def budget(self) -> int:
        return int(self.chosen.numel())


_SLOTS = {  # name: (dtype, fill)
    "key": (torch.int64, 0),
    "family": (torch.int64, 0),
    "last_round": (torch.int64, -1),
    "times": (torch.int64, 0),
    "pass_rate": (torch.float64, 0.0),
    "reward_std": (torch.float64, 0.0),
    "easy_streak": (torch.int64, 0),
    "hard_streak": (torch.int64, 0),
    "score_sum": (torch.float64, 0.0),
    "score_count": (torch.int64, 0),
}
_FAMILY = ("count", "pass_rate", "reward_std", "zero_share", "score")


class PromptHistory:
    """A bounded table of per-prompt statistics (slot arrays + a key -> slot dict)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slot = {k: torch.full((capacity,), fill, dtype=dt) for k, (dt, fill) in _SLOTS.items()}
        self.index: dict[int, int] = {}
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """[M] slot of each key, -1 where it has no history."""
        return torch.tensor([self.index.get(int(k), -1) for k in keys.tolist()], dtype=torch.int64)

    def slot_for(self, key: int) -> int:
        """The key's slot, taking a free one or evicting the least recently generated prompt."""
        s = self.index.get(key)
        if s is not None:
            return s
        if len(self.index) < self.capacity:
            s = len(self.index)  # slots fill in order and are only ever reused after that
        else:
            s = int(torch.argmin(self.slot["last_round"]))  # first minimum: the lowest slot on ties
            del self.index[int(self.slot["key"][s])]
            self.evicted_total += 1
        for k, (_, fill) in _SLOTS.items():
            self.slot[k][s] = fill
        self.slot["key"][s] = key
        self.index[key] = s
        return s

    def state_dict(self) -> dict:
        n = len(self.index)
        return {"slots": {k: v[:n].clone() for k, v in self.slot.items()}, "evicted_total": self.evicted_total}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["slots"]["key"].numel())
        if n > self.capacity:
            fail(_O, "state['history']", f"{n} prompts", f"at most history_capacity={self.capacity}")
        for k, (dt, fill) in _SLOTS.items():
            self.slot[k].fill_(fill)
            self.slot[k][:n] = state["slots"][k].to(dt)
        self.index = {int(k): i for i, k in enumerate(self.slot["key"][:n].tolist())}
        self.evicted_total = int(state["evicted_total"])


class PromptScheduler:
    """Chooses which candidate prompts to generate for; learns from the groups it sees.

    `seed` seeds GRESO's draws (the learner has its own `learner.seed`); saved by `state_dict`."""

    def __init__(self, config: PromptSchedulerConfig | None = None, *, seed: int = 0):
        self.config = cfg = PromptSchedulerConfig() if config is None else config
        if not isinstance(cfg, PromptSchedulerConfig):
            fail(_O, "config", describe(cfg), "a PromptSchedulerConfig")
        self.seed = check_int(_O, "seed", seed, 0)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.learner = NeuralUCB(cfg.learner) if cfg.policy == "learned" else None
        self.history = PromptHistory(cfg.history_capacity)
        self.family = {k: torch.zeros(cfg.num_families, dtype=torch.float64) for k in _FAMILY}
        self.round = 0
        self.pending: dict | None = None  # the last choice, until observed
        self.greso_p = {"easy": cfg.greso_p_init, "hard": cfg.greso_p_init}
        self.counters = {"groups": 0, "zero_variance": 0, "easy": 0, "hard": 0, "skipped": 0,
                         "candidates": 0, "last_zero_share": float("nan"), "last_mean_label": float("nan")}

    # -------------------------------------------------------------- features
    def _check_keys(self, keys, families, lengths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = check_tensor(f"{_O}.choose", "keys", keys, dim=1, kind="int")
        m = keys.numel()
        if m == 0:
            fail(f"{_O}.choose", "keys", "0 candidates", "at least one candidate prompt")
        keys = keys.detach().cpu().to(torch.int64)
        if families is None:
            families = torch.zeros(m, dtype=torch.int64)
        else:
            families = check_tensor(f"{_O}.choose", "families", families, shape=(m,), kind="int",
                                    expected=f"[{m}] ints (one per candidate)").detach().cpu().to(torch.int64)
            if bool(((families < 0) | (families >= self.config.num_families)).any()):
                fail(f"{_O}.choose", "families", f"ids outside [0, {self.config.num_families})",
                     "family ids below config.num_families")
        if lengths is None:
            lengths = torch.zeros(m)
        else:
            lengths = check_tensor(f"{_O}.choose", "lengths", lengths, shape=(m,),
                                   expected=f"[{m}] prompt lengths").detach().cpu().to(torch.float64)
            if not all_finite(lengths) or bool((lengths < 0).any()):
                fail(f"{_O}.choose", "lengths", "a negative or non-finite length", "lengths >= 0")
        return keys, families, lengths.to(torch.float64)

    def features(self, keys: torch.Tensor, families: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[M, NUM_PROMPT_FEATURES] contexts of candidate prompts at the current round."""
        slots = self.history.lookup(keys)
        seen = slots >= 0
        s = slots.clamp_min(0)
        h = self.history.slot
        fam = {k: v[families] for k, v in self.family.items()}
        since = (self.round - h["last_round"][s]).to(torch.float64)
        half = self.config.history_half_life
        w = torch.ones_like(since) if half is None else torch.pow(0.5, since / half)
        w = torch.where(seen, w, torch.zeros_like(w))
        score = h["score_sum"][s] / h["score_count"][s].clamp_min(1)
        own_score = torch.where(h["score_count"][s] > 0, score, fam["score"])
        cols = [
            w,
            w * torch.log1p(h["times"][s].to(torch.float64)),
            w * h["pass_rate"][s] + (1 - w) * fam["pass_rate"],
            w * h["reward_std"][s] + (1 - w) * fam["reward_std"],
            w * (h["easy_streak"][s] + h["hard_streak"][s]).to(torch.float64),
            w * own_score + (1 - w) * fam["score"],
            fam["pass_rate"], fam["reward_std"], fam["zero_share"],
            torch.log1p(lengths),
        ]
        return torch.stack(cols, 1).to(torch.float32)

    # ---------------------------------------------------------------- choose
    def choose(self, keys, budget: int, *, families=None, lengths=None) -> PromptChoice:
        """Pick `budget` of the candidate prompts (keys: [M] int64 stable ids, e.g. `prompt_key`;
        families: [M] small ints or None; lengths: [M] prompt token counts or None). Candidates
        may repeat. A ValueError leaves the scheduler as it was."""
        cfg = self.config
        keys, families, lengths = self._check_keys(keys, families, lengths)
        m = keys.numel()
        check_int(f"{_O}.choose", "budget", budget, 1, m)
        ctx = self.features(keys, families, lengths)
        zeros = torch.zeros(m)
        score = mean = bonus = zeros
        skipped = torch.zeros(m, dtype=torch.bool)
        chosen = torch.arange(budget)
        if cfg.policy == "learned" and self.learner.num_observed > 0:
            self.learner.update_feature_stats(ctx)
            score, mean, bonus = (v.detach().cpu().float() for v in self.learner.score(ctx, backend=cfg.backend))
            n_uniform = min(round(cfg.explore_share * budget), m - budget) if m > budget else 0
            ranked = torch.sort(-score, stable=True).indices  # stable: ties keep pool order
            top, rest = ranked[:budget - n_uniform], ranked[budget - n_uniform:]
            pick = torch.randperm(rest.numel(), generator=self.generator)[:n_uniform]
            chosen = torch.sort(torch.cat([top, rest[pick]])).values
        elif cfg.policy == "learned":
            self.learner.update_feature_stats(ctx)
        elif cfg.policy == "greso":
            score, skipped = self._greso_skips(keys)
            order = torch.cat([torch.nonzero(~skipped).flatten(), torch.nonzero(skipped).flatten()])
            chosen = torch.sort(order[:budget]).values
        choice = PromptChoice(self.round, keys, families, chosen, ctx, score, mean, bonus, skipped)
        self.pending = {"round": self.round, "keys": keys[chosen].clone(), "families": families[chosen].clone(),
                        "contexts": ctx[chosen].clone()}
        self.counters["candidates"] += m
        self.counters["skipped"] += int(skipped.sum())
        self.round += 1
        return choice

    def _greso_skips(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRESO's draws: (keep probability, skipped) per candidate. One uniform draw per candidate,
        always, so the generator advances the same way whatever the history holds."""
        slots = self.history.lookup(keys)
        s = slots.clamp_min(0)
        seen = slots >= 0
        easy = torch.where(seen, self.history.slot["easy_streak"][s], 0).to(torch.float64)
        hard = torch.where(seen, self.history.slot["hard_streak"][s], 0).to(torch.float64)
        keep = torch.ones(keys.numel(), dtype=torch.float64)
        keep = torch.where(easy > 0, torch.pow(self.greso_p["easy"], easy).clamp_min(0.01), keep)
        keep = torch.where(hard > 0, torch.pow(self.greso_p["hard"], hard).clamp_min(0.01), keep)
        u = torch.rand(keys.numel(), generator=self.generator, dtype=torch.float64)
        return keep.float(), u >= keep

    # --------------------------------------------------------------- observe
    def observe(self, choice: PromptChoice, rewards, group_offsets, *, labels=None, rollout_scores=None) -> None:
        """Report the generated groups of `choice` (the last one), in `choice.chosen` order.

        rewards: flat [N] rewards; group_offsets: [B+1] offsets of each chosen prompt's group in it
        (or an int, the group size); labels: [B] per-group gains (label="gain"; NaN: a group without
        one, not learned from); rollout_scores:
        [B] mean rollout-scheduler score of each group (None: not known). Everything is checked
        before any state changes."""
        o = f"{_O}.observe"
        cfg = self.config
        p = self.pending
        if not isinstance(choice, PromptChoice):
            fail(o, "choice", describe(choice), "the PromptChoice choose returned")
        if p is None or choice.round != p["round"]:
            fail(o, "choice", f"the choice of round {choice.round}",
                 f"the last choice, not yet observed ({'none pending' if p is None else 'round ' + str(p['round'])})")
        b = choice.budget
        r = check_tensor(o, "rewards", rewards, dim=1, kind="float").detach().cpu().to(torch.float64)
        if isinstance(group_offsets, int) and not isinstance(group_offsets, bool):
            check_int(o, "group_offsets", group_offsets, 1)
            go = torch.arange(b + 1, dtype=torch.int64) * group_offsets
        else:
            go = check_tensor(o, "group_offsets", group_offsets, shape=(b + 1,), kind="int",
                              expected=f"[{b + 1}] offsets (one group per chosen prompt)").cpu().to(torch.int64)
        sizes = go[1:] - go[:-1]
        if int(go[0]) != 0 or int(go[-1]) != r.numel() or bool((sizes < 1).any()):
            fail(o, "group_offsets", str(go.tolist()[:8]), f"increasing offsets from 0 to {r.numel()}, groups of >= 1")
        if not all_finite(r):
            fail(o, "rewards", "NaN or inf", "finite rewards")
        lab = None
        if cfg.label == "gain" and self.learner is not None:
            if labels is None:
                fail(o, "labels", "None", f"[{b}] per-group gains (config.label='gain')")
        if labels is not None:
            lab = check_tensor(o, "labels", labels, shape=(b,), kind="float").detach().cpu().to(torch.float64)
            if bool(torch.isinf(lab).any()):
                fail(o, "labels", "inf", "finite gains (NaN: a group without a gain, not learned from)")
        sc = None
        if rollout_scores is not None:
            sc = check_tensor(o, "rollout_scores", rollout_scores, shape=(b,), kind="float").detach().cpu()
            sc = sc.to(torch.float64)
            if not all_finite(sc):
                fail(o, "rollout_scores", "NaN or inf", "finite scores")
        gid = torch.repeat_interleave(torch.arange(b), sizes)
        mean = torch.zeros(b, dtype=torch.float64).index_add_(0, gid, r) / sizes
        std = (torch.zeros(b, dtype=torch.float64).index_add_(0, gid, (r - mean[gid]) ** 2) / sizes).sqrt()
        rmax = torch.zeros(b, dtype=torch.float64).scatter_reduce(0, gid, r, "amax", include_self=False)
        rmin = torch.zeros(b, dtype=torch.float64).scatter_reduce(0, gid, r, "amin", include_self=False)
        zero = rmax == rmin
        target = {"variance": (~zero).to(torch.float64), "std": std}.get(cfg.label, lab)
        if self.learner is not None:
            known = ~torch.isnan(target)
            self.learner.observe(p["contexts"][known], target[known].float())
        self._update_history(p["keys"], p["families"], p["round"], mean, std, zero, sc)
        if cfg.policy == "greso":
            self._greso_adapt()
        c = self.counters
        c["last_zero_share"] = float(zero.double().mean())
        c["last_mean_label"] = float(target.nanmean()) if target is not None else float("nan")
        self.pending = None

    def _update_history(self, keys, families, t, mean, std, zero, scores) -> None:
        cfg, h, f, c = self.config, self.history, self.family, self.counters
        easy = zero & (mean >= cfg.easy_reward)
        hard = zero & ~easy
        for i, key in enumerate(keys.tolist()):  # in order: a prompt drawn twice is updated twice
            s = h.slot_for(key)
            h.slot["family"][s] = families[i]
            h.slot["last_round"][s] = t
            h.slot["times"][s] += 1
            h.slot["pass_rate"][s] = mean[i]
            h.slot["reward_std"][s] = std[i]
            h.slot["easy_streak"][s] = h.slot["easy_streak"][s] + 1 if easy[i] else 0
            h.slot["hard_streak"][s] = h.slot["hard_streak"][s] + 1 if hard[i] else 0
            if scores is not None:
                h.slot["score_sum"][s] += scores[i]
                h.slot["score_count"][s] += 1
            fam = int(families[i])
            a = 1.0 if f["count"][fam] == 0 else cfg.family_ema
            f["pass_rate"][fam] += a * (mean[i] - f["pass_rate"][fam])
            f["reward_std"][fam] += a * (std[i] - f["reward_std"][fam])
            f["zero_share"][fam] += a * (float(zero[i]) - f["zero_share"][fam])
            if scores is not None:
                f["score"][fam] += a * (scores[i] - f["score"][fam])
            f["count"][fam] += 1
        c["groups"] += keys.numel()
        c["zero_variance"] += int(zero.sum())
        c["easy"] += int(easy.sum())
        c["hard"] += int(hard.sum())

    def _greso_adapt(self) -> None:
        """GRESO's controller: fewer easy (hard) groups than targeted -> keep more of them."""
        cfg, c = self.config, self.counters
        n = max(c["groups"], 1)
        for kind, share in (("easy", cfg.greso_target_zero / 3), ("hard", cfg.greso_target_zero * 2 / 3)):
            step = -cfg.greso_step if c[kind] / n >= share else cfg.greso_step
            self.greso_p[kind] = min(max(self.greso_p[kind] + step, cfg.greso_p_min), cfg.greso_p_max)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        c = self.counters
        out = {"prompt_policy": self.config.policy, "prompt_round": self.round,
               "prompt_history_size": len(self.history), "prompt_history_evicted": self.history.evicted_total,
               "generated_groups": c["groups"], "zero_variance_share": c["zero_variance"] / max(c["groups"], 1),
               "last_zero_variance_share": c["last_zero_share"], "last_mean_label": c["last_mean_label"],
               "skip_share": c["skipped"] / max(c["candidates"], 1)}
        if self.config.policy == "greso":
            out.update(greso_p_easy=self.greso_p["easy"], greso_p_hard=self.greso_p["hard"])
        if self.learner is not None:
            out["prompt_observed"] = self.learner.num_observed
        return out

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Plain tensors, numbers and dicts (loads with torch.load(weights_only=True)), all copies."""
        return {
            "config": asdict(self.config), "seed": self.seed, "round": self.round,
            "generator": self.generator.get_state(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "history": self.history.state_dict(),
            "family": {k: v.clone() for k, v in self.family.items()},
            "pending": None if self.pending is None else {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                     for k, v in self.pending.items()},
            "greso_p": dict(self.greso_p), "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict) -> None:
        cfg = PromptSchedulerConfig(**state["config"])
        if cfg != self.config:
            diff = [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(self.config, f.name)]
            fail(_O, "state['config']", f"a different config (fields {diff})", "this scheduler's config")
        if state["seed"] != self.seed:
            fail(_O, "state['seed']", repr(state["seed"]), f"this scheduler's seed {self.seed}")
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        self.history.load_state_dict(state["history"])
        self.family = {k: v.to(torch.float64).clone() for k, v in state["family"].items()}
        self.round = int(state["round"])
        self.generator.set_state(state["generator"])
        self.pending = None if state["pending"] is None else \
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state["pending"].items()}
        self.greso_p = dict(state["greso_p"])
        self.counters = dict(state["counters"])


def prompt_key(prompt) -> int:
    """A stable int64 key of a prompt (text, or a sequence of token ids): the first 8 bytes of its
    blake2b hash, the same in every process and run."""
    import hashlib

    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
    else:
        try:
            data = b"ids:" + ",".join(str(int(t)) for t in prompt).encode()
        except (TypeError, ValueError):
            fail("prompt_key", "prompt", describe(prompt), "a str or a sequence of token ids")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


__all__ = ["NUM_PROMPT_FEATURES", "PROMPT_FEATURE_NAMES", "PROMPT_LABELS", "PROMPT_POLICIES", "PromptChoice",
           "PromptHistory", "PromptLearnerConfig", "PromptScheduler", "PromptSchedulerConfig", "prompt_key"]
