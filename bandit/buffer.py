"""RolloutBuffer: the bounded store of past rollouts that global reuse draws from.

Layout, and why:
- Per-entry scalars live in preallocated slot arrays of `capacity` rows, so
  ageing, eviction and candidate scoring are a few vectorized ops per step.
- Token streams (behaviour log-probs, entropies, token ids) live in one flat
  arena per stream, never larger than `max_bytes`; an entry is (start, length)
  into it. When an insert does not fit, the arena is compacted (one gather),
  then grown by doubling up to `max_bytes`, then entries are evicted. Memory is
  therefore flat however long a run lasts.
- Every ordering decision (candidates, eviction, gathering) is by insertion
  sequence number, never by slot or arena position, so a buffer rebuilt from
  `state_dict` (which stores live entries compactly) decides exactly as the
  original would.

Eviction: max age (rounds since generation), max use count, the round window
(`window_rounds`: keep exactly the last L rounds, the paper's FIFO candidate
set), a score floor, and, when slots or bytes run out, the lowest last score
(`evict_order="score"`) or the oldest (`"fifo"`) first.

Prompt token ids (optional) are kept per slot as references to the caller's per-prompt
tensors, so a prompt shared by a group is held once; evicted slots drop their reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from rollout_bandits.bandit.gains import group_centered_reward
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.rollout_features import FEATURE_INDEX, NUM_FEATURES
from rollout_bandits.validation import (
    all_finite,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    fail,
)

_AGE_COL = FEATURE_INDEX["age"]
_REUSE_COL = FEATURE_INDEX["reuse_count"]
_CLIP_COL = FEATURE_INDEX["clip_ratio"]
_STREAMS = ("token_logprobs", "token_entropy", "token_ids")


@dataclass
class BufferConfig:
    capacity: int = 65536  # entries
    max_bytes: int = 256 * 2**20  # token streams
    max_age: int | None = 8  # rounds since generation
    max_reuse: int | None = 4  # times selected for training (fresh selection included)
    window_rounds: int | None = None  # L: keep only rollouts of the last L rounds
    evict_order: str = "score"  # score | fifo, when slots or bytes run out
    score_floor: float | None = None  # evict entries whose last score fell below it
    feature_dim: int = NUM_FEATURES

    def __post_init__(self) -> None:
        check_field_types(self)
        o = "BufferConfig"
        check_int(o, "capacity", self.capacity, 1)
        check_int(o, "max_bytes", self.max_bytes, 64)
        check_int(o, "max_age", self.max_age, 1, allow_none=True)
        check_int(o, "max_reuse", self.max_reuse, 1, allow_none=True)
        check_int(o, "window_rounds", self.window_rounds, 1, allow_none=True)
        check_choice(o, "evict_order", self.evict_order, ("score", "fifo"))
        check_float(o, "score_floor", self.score_floor, -float("inf"), allow_none=True)
        check_int(o, "feature_dim", self.feature_dim, 1)


@dataclass
class BufferedRollouts:
    """Rollouts taken from the buffer, ordered by (group uid, insertion order)."""

    batch: RolloutBatch  # group_ids = the buffer's global group uids
    slots: torch.Tensor
    arm_ids: torch.Tensor
    prompt_ids: torch.Tensor
    advantage: torch.Tensor  # computed against the rollout's full original group (or the trainer's)
    advantage_centered: torch.Tensor  # r - the original group's mean (or the trainer's advantage)
    contexts: torch.Tensor  # last contexts, age and use count refreshed
    prompt_tokens: list  # per row: the prompt's token ids [P] int64, or None when not given


@dataclass
class AdvancePlan:
    """What `advance(round_index)` will do, computed without changing anything."""

    round_index: int
    age: torch.Tensor  # [capacity] every slot's age after the advance
    drop: torch.Tensor  # [capacity] bool, the slots it evicts

    def live(self, buffer: RolloutBuffer) -> torch.Tensor:
        """The slots still live after the advance, in insertion order."""
        s = buffer.live_slots()
        return s[~self.drop[s]]


_SLOT_FIELDS = {
    # name: (dtype, fill)
    "arm_id": (torch.int64, -1),
    "seq": (torch.int64, -1),
    "round": (torch.int64, -1),
    "group_uid": (torch.int64, -1),
    "prompt_id": (torch.int64, -1),
    "age": (torch.int64, 0),
    "reuse_count": (torch.int64, 0),
    "reward": (torch.float32, 0.0),
    "advantage": (torch.float32, 0.0),
    "advantage_centered": (torch.float32, 0.0),
    "clip_ratio": (torch.float32, 0.0),
    "truncated": (torch.bool, False),
    "last_gain": (torch.float32, float("nan")),
    "last_score": (torch.float32, -float("inf")),
    "tok_start": (torch.int64, 0),
    "tok_len": (torch.int64, 0),
}


class RolloutBuffer:
    def __init__(self, config: BufferConfig | None = None):
        self.config = cfg = config or BufferConfig()
        c = cfg.capacity
        self.valid = torch.zeros(c, dtype=torch.bool)
        self.slot = {k: torch.full((c,), fill, dtype=dt) for k, (dt, fill) in _SLOT_FIELDS.items()}
        self.context = torch.zeros(c, cfg.feature_dim)
        self.prompt_tokens: list[torch.Tensor | None] = [None] * c
        self._prompts_kept = False  # whether any prompt tokens were ever stored (skips the list work)
        self.arena: dict[str, torch.Tensor] = {}  # stream -> flat storage, created on first insert
        self.arena_used = 0  # arena[:arena_used] is packed or holds holes left by evictions
        self.next_seq = 0
        self.current_round = -1
        self.max_response_len = 1
        self.evicted_total = 0

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def bytes_per_token(self) -> int:
        return sum(a.element_size() for a in self.arena.values())

    @property
    def max_tokens(self) -> int:
        return self.config.max_bytes // max(self.bytes_per_token, 1)

    @property
    def live_tokens(self) -> int:
        return int(self.slot["tok_len"][self.valid].sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the token arena (allocated, which bounds the live bytes)."""
        return sum(a.numel() * a.element_size() for a in self.arena.values())

    def live_slots(self) -> torch.Tensor:
        """Valid slots in insertion order: every decision reads them in this order."""
        s = torch.nonzero(self.valid).flatten()
        return s[torch.argsort(self.slot["seq"][s])]

    def live_prompt_ids(self) -> torch.Tensor:
        """The distinct prompt ids of the stored rollouts (sorted int64; -1 = not given)."""
        return torch.unique(self.slot["prompt_id"][self.valid])

    # -------------------------------------------------------------- eviction
    def _evict(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.valid[slots] = False
            self.slot["last_gain"][slots] = float("nan")
            self.slot["last_score"][slots] = -float("inf")
            self.evicted_total += int(slots.numel())
            if self._prompts_kept:
                for i in slots.tolist():
                    self.prompt_tokens[i] = None

    def _eviction_order(self, slots: torch.Tensor) -> torch.Tensor:
        """`slots` (in insertion order) sorted first-to-evict first."""
        if self.config.evict_order == "fifo":
            return slots
        return slots[torch.sort(self.slot["last_score"][slots], stable=True).indices]

    def plan_advance(self, round_index: int) -> AdvancePlan:
        """What starting round `round_index` does (ages, and who is dropped for age, use count,
        window or score floor), without doing it: a caller can score the candidates first."""
        cfg = self.config
        v = self.valid
        age = self.slot["age"]
        if self.current_round >= 0:
            age = torch.where(v, age + (round_index - self.current_round), age)
        drop = torch.zeros_like(v)
        if cfg.max_age is not None:
            drop |= age > cfg.max_age
        if cfg.max_reuse is not None:
            drop |= self.slot["reuse_count"] >= cfg.max_reuse
        if cfg.window_rounds is not None:
            drop |= self.slot["round"] < round_index - cfg.window_rounds
        if cfg.score_floor is not None:
            drop |= self.slot["last_score"] < cfg.score_floor
        return AdvancePlan(round_index, age, drop & v)

    def advance(self, round_index: int, plan: AdvancePlan | None = None) -> int:
        """Start a round: age every entry, drop those past age, use count, window or score floor.
        `plan` = plan_advance(round_index) made since the last change, if the caller has it."""
        if plan is None or plan.round_index != round_index:
            plan = self.plan_advance(round_index)
        self.slot["age"] = plan.age
        self.current_round = round_index
        slots = torch.nonzero(plan.drop).flatten()
        self._evict(slots)
        return int(slots.numel())

    # -------------------------------------------------------------- the arena
    def _init_streams(self, batch: RolloutBatch) -> None:
        self.arena = {"token_logprobs": torch.empty(0, dtype=torch.float32)}
        if batch.token_entropy is not None:
            self.arena["token_entropy"] = torch.empty(0, dtype=torch.float32)
        if batch.token_ids is not None:
            self.arena["token_ids"] = torch.empty(0, dtype=batch.token_ids.dtype)

    def check_insertable(self, batch: RolloutBatch) -> None:
        """The batch has the streams (and token id dtype) of the batches already stored."""
        if not self.arena:
            return
        for name in ("token_entropy", "token_ids"):
            has = getattr(batch, name) is not None
            if has != (name in self.arena):
                fail("RolloutBuffer", f"batch.{name}", "present" if has else "None",
                     f"{'present' if name in self.arena else 'None'} as in the batches already stored")
        if batch.token_ids is not None and batch.token_ids.dtype != self.arena["token_ids"].dtype:
            fail("RolloutBuffer", "batch.token_ids", f"dtype {batch.token_ids.dtype}",
                 f"{self.arena['token_ids'].dtype} as in the batches already stored")

    def compact(self) -> None:
        """Pack live entries to the front of the arena, in insertion order (one gather per stream)."""
        live = self.live_slots()
        lens = self.slot["tok_len"][live]
        new_start = torch.cumsum(lens, 0) - lens
        total = int(lens.sum())
        src = torch.repeat_interleave(self.slot["tok_start"][live] - new_start, lens) + torch.arange(total)
        for a in self.arena.values():
            a[:total] = a[src]
        self.slot["tok_start"][live] = new_start
        self.arena_used = total

    def _reserve(self, need: int) -> None:
        """Make room for `need` more tokens at arena[arena_used:], evicting if the byte budget requires."""
        size = next(iter(self.arena.values())).numel()
        if self.arena_used + need <= size:
            return
        self.compact()
        if self.arena_used + need > size:
            new_size = min(self.max_tokens, max(2 * size, self.arena_used + need, 1024))
            if new_size > size:
                for k, a in self.arena.items():
                    grown = torch.empty(new_size, dtype=a.dtype)
                    grown[: self.arena_used] = a[: self.arena_used]
                    self.arena[k] = grown
                size = new_size
        if self.arena_used + need > size:
            order = self._eviction_order(self.live_slots())
            freed = torch.cumsum(self.slot["tok_len"][order], 0)
            n_drop = int(torch.searchsorted(freed, self.arena_used + need - size))
            self._evict(order[: n_drop + 1])
            self.compact()

    # ----------------------------------------------------------------- insert
    def insert(self, batch: RolloutBatch, *, contexts: torch.Tensor, arm_ids: torch.Tensor,
               group_uids: torch.Tensor, prompt_ids: torch.Tensor, advantage: torch.Tensor,
               scores: torch.Tensor, used: torch.Tensor, round_index: int,
               advantage_centered: torch.Tensor | None = None,
               prompt_tokens: list | None = None) -> torch.Tensor:
        """Store a round's rollouts; returns the arm ids actually stored.

        `used` marks rollouts selected for training this round (they enter with use count + 1).
        `advantage_centered` defaults to r - group mean; `prompt_tokens` (one entry per rollout,
        a tensor or None) are kept by reference. When the batch alone exceeds the slot or byte
        budget, its lowest-priority rollouts are dropped (the newest are kept under FIFO, the
        best-scored under score eviction).
        """
        cfg = self.config
        n = batch.num_rollouts
        if contexts.shape != (n, cfg.feature_dim):
            fail("RolloutBuffer", "contexts", f"shape {list(contexts.shape)}", f"[{n}, {cfg.feature_dim}]")
        if prompt_tokens is not None and len(prompt_tokens) != n:
            fail("RolloutBuffer", "prompt_tokens", f"{len(prompt_tokens)} entries", f"{n} (one per rollout)")
        self.check_insertable(batch)
        if advantage_centered is None:
            advantage_centered = group_centered_reward(batch)
        if not self.arena:
            self._init_streams(batch)
        lengths = batch.lengths.cpu()
        keep = torch.arange(n)
        if n > cfg.capacity or int(lengths.sum()) > self.max_tokens:
            if cfg.evict_order == "score":
                keep = keep[torch.sort(scores.detach().cpu().float(), descending=True, stable=True).indices]
            else:
                keep = keep.flip(0)
            keep = keep[: cfg.capacity]
            fits = torch.cumsum(lengths[keep], 0) <= self.max_tokens
            keep = torch.sort(keep[fits]).values
        m = keep.numel()
        if m == 0:
            return torch.zeros(0, dtype=torch.int64)
        # Slots: evict old entries if needed.
        short = m - int((~self.valid).sum())
        if short > 0:
            self._evict(self._eviction_order(self.live_slots())[:short])
        slots = torch.nonzero(~self.valid).flatten()[:m]
        # Tokens.
        lens = lengths[keep]
        need = int(lens.sum())
        self._reserve(need)
        src_off = batch.offsets.cpu().to(torch.int64)[keep]
        src = torch.repeat_interleave(src_off, lens) + torch.arange(need) - torch.repeat_interleave(
            torch.cumsum(lens, 0) - lens, lens)
        base = self.arena_used
        for name, a in self.arena.items():
            a[base: base + need] = getattr(batch, name).detach().cpu()[src].to(a.dtype)
        self.arena_used = base + need

        s = self.slot
        s["tok_start"][slots] = base + torch.cumsum(lens, 0) - lens
        s["tok_len"][slots] = lens
        s["arm_id"][slots] = arm_ids.cpu()[keep]
        s["seq"][slots] = self.next_seq + torch.arange(m)
        self.next_seq += m
        s["round"][slots] = round_index
        s["group_uid"][slots] = group_uids.cpu()[keep]
        s["prompt_id"][slots] = prompt_ids.cpu()[keep]
        s["age"][slots] = batch.per_rollout("age").cpu()[keep].round().to(torch.int64)
        s["reuse_count"][slots] = batch.per_rollout("reuse_count").cpu()[keep].round().to(torch.int64) \
            + used.cpu()[keep].to(torch.int64)
        s["reward"][slots] = batch.reward.detach().cpu().float()[keep]
        s["advantage"][slots] = advantage.detach().cpu().float()[keep]
        s["advantage_centered"][slots] = advantage_centered.detach().cpu().float()[keep]
        s["clip_ratio"][slots] = batch.per_rollout("clip_ratio").cpu()[keep]
        s["truncated"][slots] = batch.per_rollout("truncated", torch.bool).cpu()[keep]
        s["last_gain"][slots] = float("nan")
        s["last_score"][slots] = scores.detach().cpu().float()[keep]
        self.context[slots] = contexts.detach().cpu().float()[keep]
        if prompt_tokens is not None or self._prompts_kept:
            self._prompts_kept = True
            for i, j in zip(slots.tolist(), keep.tolist(), strict=True):
                self.prompt_tokens[i] = None if prompt_tokens is None else prompt_tokens[j]
        self.valid[slots] = True
        if batch.max_response_len is not None:
            self.max_response_len = max(self.max_response_len, int(batch.max_response_len))
        self.max_response_len = max(self.max_response_len, int(lens.max()))
        return s["arm_id"][slots]

    # ------------------------------------------------------------- candidates
    def candidate_contexts(self, slots: torch.Tensor, age: torch.Tensor | None = None) -> torch.Tensor:
        """Stored contexts with the staleness columns (age, use count) brought up to date
        (`age`: every slot's age, e.g. an AdvancePlan's, instead of the current one)."""
        ctx = self.context[slots].clone()
        if self.config.feature_dim == NUM_FEATURES:
            ctx[:, _AGE_COL] = (self.slot["age"] if age is None else age)[slots].float()
            ctx[:, _REUSE_COL] = self.slot["reuse_count"][slots].float()
            ctx[:, _CLIP_COL] = self.slot["clip_ratio"][slots].float()
        return ctx

    def set_scores(self, slots: torch.Tensor, scores: torch.Tensor) -> None:
        self.slot["last_score"][slots] = scores.detach().cpu().float()

    def mark_used(self, slots: torch.Tensor) -> None:
        self.slot["reuse_count"][slots] += 1

    def slots_of(self, arm_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots of the arm ids still stored, found mask over `arm_ids`)."""
        q = arm_ids.cpu().to(torch.int64)
        live = torch.nonzero(self.valid).flatten()
        if live.numel() == 0:
            return live, torch.zeros(q.numel(), dtype=torch.bool)
        ids = self.slot["arm_id"][live]
        order = torch.argsort(ids)
        ids_sorted = ids[order]
        pos = torch.searchsorted(ids_sorted, q).clamp_max(ids_sorted.numel() - 1)
        found = ids_sorted[pos] == q
        return live[order[pos[found]]], found

    def set_last_gain(self, arm_ids: torch.Tensor, gains: torch.Tensor) -> None:
        slots, found = self.slots_of(arm_ids)
        self.slot["last_gain"][slots] = gains.detach().cpu().float()[found]

    def set_clip_ratio(self, arm_ids: torch.Tensor, clip_ratio: torch.Tensor) -> None:
        """The fraction of each stored rollout's tokens clipped in its latest update (a feature)."""
        slots, found = self.slots_of(arm_ids)
        self.slot["clip_ratio"][slots] = clip_ratio.detach().cpu().float()[found]

    def gather(self, slots: torch.Tensor) -> BufferedRollouts:
        """The stored rollouts as a RolloutBatch, groups adjacent (by group uid, then insertion)."""
        s = self.slot
        slots = slots[torch.argsort(s["seq"][slots])]
        slots = slots[torch.sort(s["group_uid"][slots], stable=True).indices]
        lens = s["tok_len"][slots]
        offsets = torch.zeros(slots.numel() + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lens, 0)
        total = int(offsets[-1])
        src = torch.repeat_interleave(s["tok_start"][slots] - offsets[:-1], lens) + torch.arange(total)
        streams = {name: a[src] for name, a in self.arena.items()}
        floats = [v for k, v in streams.items() if k != "token_ids"]
        batch = RolloutBatch(
            token_logprobs=streams["token_logprobs"],
            offsets=offsets,
            reward=s["reward"][slots].clone(),
            group_ids=s["group_uid"][slots].clone(),
            token_entropy=streams.get("token_entropy"),
            token_ids=streams.get("token_ids"),
            age=s["age"][slots].float(),
            reuse_count=s["reuse_count"][slots].float(),
            truncated=s["truncated"][slots].clone(),
            clip_ratio=s["clip_ratio"][slots].clone(),
            max_response_len=self.max_response_len,
            mask_nonfinite=not all(all_finite(v) for v in floats),
            allow_empty_rollouts=bool((lens == 0).any()),
        )
        return BufferedRollouts(batch=batch, slots=slots, arm_ids=s["arm_id"][slots].clone(),
                                prompt_ids=s["prompt_id"][slots].clone(),
                                advantage=s["advantage"][slots].clone(),
                                advantage_centered=s["advantage_centered"][slots].clone(),
                                contexts=self.candidate_contexts(slots),
                                prompt_tokens=self._prompts_of(slots))

    def _prompts_of(self, slots: torch.Tensor) -> list:
        if not self._prompts_kept:
            return [None] * slots.numel()
        return [self.prompt_tokens[i] for i in slots.tolist()]

    # ------------------------------------------------------------------ stats
    def age_histogram(self, bins: int | None = None) -> list[int]:
        ages = self.slot["age"][self.valid]
        n_bins = bins or ((self.config.max_age or 16) + 1)
        return torch.bincount(ages.clamp(0, n_bins - 1), minlength=n_bins).tolist()

    def stats(self) -> dict:
        return {
            "buffer_size": len(self),
            "buffer_live_tokens": self.live_tokens,
            "buffer_nbytes": self.nbytes,
            "buffer_evicted_total": self.evicted_total,
            "buffer_age_histogram": self.age_histogram(),
        }

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        live = self.live_slots()
        out = self.gather_raw(live)
        return {
            "config": asdict(self.config),
            "slot": out["slot"],
            "context": self.context[live].clone(),
            "prompt_tokens": self._prompts_of(live),
            "streams": out["streams"],
            "stream_dtypes": {k: str(a.dtype) for k, a in self.arena.items()},
            "next_seq": self.next_seq,
            "current_round": self.current_round,
            "max_response_len": self.max_response_len,
            "evicted_total": self.evicted_total,
        }

    def gather_raw(self, live: torch.Tensor) -> dict:
        lens = self.slot["tok_len"][live]
        starts = torch.cumsum(lens, 0) - lens
        src = torch.repeat_interleave(self.slot["tok_start"][live] - starts, lens) + torch.arange(int(lens.sum()))
        slot = {k: v[live].clone() for k, v in self.slot.items()}
        slot["tok_start"] = starts
        return {"slot": slot, "streams": {k: a[src].clone() for k, a in self.arena.items()}}

    def load_state_dict(self, state: dict) -> None:
        if BufferConfig(**state["config"]) != self.config:
            fail("RolloutBuffer", "state['config']", repr(state["config"]), f"{asdict(self.config)}")
        n = int(state["context"].shape[0])
        self.__init__(self.config)
        self.valid[:n] = True
        for k, v in state["slot"].items():
            self.slot[k][:n] = v
        self.context[:n] = state["context"]
        self.prompt_tokens[:n] = list(state["prompt_tokens"])
        self._prompts_kept = any(p is not None for p in state["prompt_tokens"])
        self.arena = {k: v.clone() for k, v in state["streams"].items()}
        if not self.arena and state["stream_dtypes"]:
            self.arena = {k: torch.empty(0, dtype=getattr(torch, d.split(".")[-1]))
                          for k, d in state["stream_dtypes"].items()}
        self.arena_used = int(next(iter(self.arena.values())).numel()) if self.arena else 0
        self.next_seq = int(state["next_seq"])
        self.current_round = int(state["current_round"])
        self.max_response_len = int(state["max_response_len"])
        self.evicted_total = int(state["evicted_total"])
