"""One scheduling decision on every rank of a `torch.distributed` job.

Each rank generates its own rollouts (a TRL or DDP rank holds a slice of the generation batch;
a prompt's G completions may span ranks). The token streams never move:

1. every rank computes the [n, D] contexts of its own rollouts (one pass over its tokens),
2. all-gathers the contexts and per-rollout scalars (reward, group id, advantage, length, mean
   log-prob and entropy, truncation, prompt id): O(N * D) numbers, never O(tokens),
3. rebuilds the columns that depend on whole groups (reward statistics, advantage, length
   fraction) from the gathered rewards, so a group spread over ranks is scored as one group,
4. calls `Scheduler.select` on a *summary batch* of the gathered rollouts whose token streams
   hold each rollout's mean log-prob and mean entropy repeated over its length. Every rank
   feeds the identical summary to an identical scheduler, so every rank makes the identical
   decision and the schedulers' states stay equal (bitwise: same inputs, same CPU ops).

The summary keeps what the scheduler reads from token streams exact: the batch gain's
token-weighted mean entropy, the buffer's byte budget (lengths are real) and the per-arm gains
(`self` and `heldout` read only each rollout's mean, or sum = length x mean, log ratio).

Reuse across ranks [ours]: arm ids are global (assigned by the replicated scheduler in summary
row order), and every rank knows every live arm's owner (a small replicated map, checkpointed
with the scheduler). The owner keeps the tokens of its rollouts (`payload`, anything the
trainer needs to train a row again: prompt and completion ids, behaviour log-probs) keyed by
arm id, for as long as the replicated buffer holds the arm. When the scheduler reuses an arm,
its owner trains it; `RankStep.rows_per_rank` says how many rows each rank trains, so a trainer
can pad every rank to the same count (zero-mask rows) and the ranks stay in step.

Per-rank values flow back the same way: a rank writes the values of the rows it owns into a
zero vector over all rows and one all-reduce(SUM) assembles it (x + 0 is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.bandit.gains import ArmGains
from rollout_bandits.bandit.scheduler import Scheduler, ScheduleStep
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.kernels.feature_spec import FEATURE_INDEX, NUM_FEATURES, group_reward_stats, max_len
from rollout_bandits.kernels.rollout_features import rollout_features
from rollout_bandits.validation import check_tensor, describe, fail

_O = "RankScheduler"
# Packed per-rollout scalars (float64: int64 ids below 2**53 and float32 values are exact).
_SCALARS = ("reward", "advantage", "group_id", "length", "truncated", "logp_mean", "entropy_mean", "prompt_id")
_COL = {name: i for i, name in enumerate(_SCALARS)}


# ------------------------------------------------------------------ collectives
def _dist():
    """torch.distributed if a process group is initialised, else None (one process)."""
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def _comm_device(group) -> torch.device:
    d = _dist()
    if d is not None and d.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_and_size(group=None) -> tuple[int, int]:
    d = _dist()
    return (0, 1) if d is None else (d.get_rank(group), d.get_world_size(group))


def all_gather_rows(x: torch.Tensor, group=None) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows of `x` ([n_r, ...], n_r may differ) concatenated in rank order, and n_r."""
    d = _dist()
    if d is None or d.get_world_size(group) == 1:
        return x, [x.shape[0]]
    dev, home = _comm_device(group), x.device
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(d.get_world_size(group))]
    d.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    pad = torch.zeros((max(sizes),) + tuple(x.shape[1:]), dtype=x.dtype, device=dev)
    pad[: x.shape[0]] = x.to(dev)
    parts = [torch.empty_like(pad) for _ in sizes]
    d.all_gather(parts, pad, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(home), sizes


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """The element-wise sum over ranks (a copy; `x` itself on one process)."""
    d = _dist()
    if d is None or d.get_world_size(group) == 1:
        return x
    y = x.to(_comm_device(group)).clone()
    d.all_reduce(y, group=group)
    return y.to(x.device)


# -------------------------------------------------------------- gathered batch
@dataclass
class GatheredRollouts:
    """Every rank's rollouts as one summary batch (identical on every rank).

    `owner[i]` / `local_index[i]`: the rank that holds summary row i and its row there."""

    batch: RolloutBatch
    contexts: torch.Tensor
    advantage: torch.Tensor | None
    prompt_ids: torch.Tensor
    owner: torch.Tensor
    local_index: torch.Tensor


def _segment_mean(stream: torch.Tensor | None, batch: RolloutBatch) -> torch.Tensor:
    """Per-rollout mean of a token stream over its finite tokens, float64 (0 without tokens)."""
    n = batch.num_rollouts
    if stream is None or n == 0:
        return torch.zeros(n, dtype=torch.float64, device=batch.device)
    s = stream.double()
    ok = torch.isfinite(s)
    lengths = batch.lengths
    total = torch.segment_reduce(torch.where(ok, s, 0.0), "sum", lengths=lengths, unsafe=True)
    count = torch.segment_reduce(ok.double(), "sum", lengths=lengths, unsafe=True)
    return total / count.clamp_min(1.0)


def gather_rollouts(batch: RolloutBatch, *, group_ids: torch.Tensor | None = None,
                    advantage: torch.Tensor | None = None, prompt_ids: torch.Tensor | None = None,
                    contexts: torch.Tensor | None = None, scheduler: Scheduler | None = None,
                    group=None) -> GatheredRollouts:
    """All ranks' rollouts as one summary batch plus their [N, D] contexts, identical everywhere.

    batch: this rank's rollouts (real token streams). group_ids: [n] global group ids (the
    same prompt group has the same id on every rank; default `batch.group_ids`). advantage /
    prompt_ids: [n] optional, gathered alongside. contexts: [n, D] custom contexts (else the
    feature kernel's, with the whole-group columns rebuilt from the gathered rewards).
    scheduler: gives the feature config and backend. A collective: every rank must call it."""
    o = "gather_rollouts"
    if not isinstance(batch, RolloutBatch):
        fail(o, "batch", describe(batch), "a RolloutBatch")
    batch.validate()
    n = batch.num_rollouts
    gids = batch.group_ids if group_ids is None else group_ids
    if gids is None:
        fail(o, "group_ids", "None (and batch.group_ids None)", f"[{n}] global group ids")
    check_tensor(o, "group_ids", gids, shape=(n,), kind="int", expected=f"[{n}] global group ids")
    check_tensor(o, "advantage", advantage, shape=(n,), kind="float", allow_none=True)
    check_tensor(o, "prompt_ids", prompt_ids, shape=(n,), kind="int", allow_none=True)
    dev = batch.device
    ours = contexts is None
    if ours:
        cfg = scheduler.config if scheduler is not None else None
        contexts = rollout_features(batch, None if scheduler is None else scheduler.feature_config,
                                    backend="auto" if cfg is None else cfg.backend)
    check_tensor(o, "contexts", contexts, dim=2, kind="float", expected=f"[{n}, D]")
    if contexts.shape[0] != n:
        fail(o, "contexts", f"{contexts.shape[0]} rows", f"{n} (one per rollout)")

    cols = torch.zeros(n, len(_SCALARS), dtype=torch.float64, device=dev)
    cols[:, _COL["reward"]] = batch.reward.double()
    cols[:, _COL["advantage"]] = float("nan") if advantage is None else advantage.double().to(dev)
    cols[:, _COL["group_id"]] = gids.double().to(dev)
    cols[:, _COL["length"]] = batch.lengths.double()
    cols[:, _COL["truncated"]] = batch.per_rollout("truncated", torch.float64)
    cols[:, _COL["logp_mean"]] = _segment_mean(batch.token_logprobs, batch)
    cols[:, _COL["entropy_mean"]] = _segment_mean(batch.token_entropy, batch)
    cols[:, _COL["prompt_id"]] = -1.0 if prompt_ids is None else prompt_ids.double().to(dev)
    meta = torch.tensor([[batch.max_response_len or 0, int(batch.token_entropy is not None),
                          int(advantage is not None)]], dtype=torch.int64, device=dev)
    all_cols, sizes = all_gather_rows(cols, group)
    all_ctx, _ = all_gather_rows(contexts.float(), group)
    all_meta, _ = all_gather_rows(meta, group)
    if len(set(all_meta[:, 1].tolist())) > 1 or len(set(all_meta[:, 2].tolist())) > 1:
        fail(o, "batch", "token entropies or advantages given on some ranks only", "the same inputs on every rank")
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    local_index = torch.cat([torch.arange(s) for s in sizes]) if sizes else torch.zeros(0, dtype=torch.int64)
    # Groups adjacent: a stable sort by global group id (TRL's rank order already is).
    order = torch.sort(all_cols[:, _COL["group_id"]].cpu(), stable=True).indices
    all_cols, all_ctx = all_cols[order.to(dev)], all_ctx[order.to(dev)]
    owner, local_index = owner[order], local_index[order]

    lengths = all_cols[:, _COL["length"]].round().to(torch.int64)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(lengths, 0)
    total = int(offsets[-1])
    has_entropy = bool(all_meta[0, 1]) if all_meta.numel() else False
    longest_allowed = int(all_meta[:, 0].max()) if all_meta.numel() else 0
    summary = RolloutBatch(
        token_logprobs=torch.repeat_interleave(all_cols[:, _COL["logp_mean"]].float(), lengths, output_size=total),
        offsets=offsets,
        reward=all_cols[:, _COL["reward"]].float(),
        group_ids=all_cols[:, _COL["group_id"]].round().to(torch.int64),
        token_entropy=torch.repeat_interleave(all_cols[:, _COL["entropy_mean"]].float(), lengths,
                                              output_size=total) if has_entropy else None,
        truncated=all_cols[:, _COL["truncated"]] > 0.5,
        max_response_len=longest_allowed or None,
        allow_empty_rollouts=True,
        nonfinite_reward=batch.nonfinite_reward,
    )
    if ours and all_ctx.shape[1] == NUM_FEATURES and summary.num_rollouts:
        _rebuild_group_columns(all_ctx, summary, scheduler)
    adv = all_cols[:, _COL["advantage"]].float() if bool(all_meta[0, 2]) else None
    return GatheredRollouts(summary, all_ctx, adv, all_cols[:, _COL["prompt_id"]].round().to(torch.int64).cpu(),
                            owner, local_index)


def _rebuild_group_columns(ctx: torch.Tensor, summary: RolloutBatch, scheduler: Scheduler | None) -> None:
    """The feature columns a rank could not compute alone, as `feature_spec.assemble` does."""
    eps = scheduler.feature_config.std_eps if scheduler is not None else 1e-6
    b = summary.with_finite_rewards()
    g_mean, g_std, adv = group_reward_stats(b, eps)
    _, denom = max_len(b)
    for name, v in (("reward", b.reward), ("group_reward_mean", g_mean), ("group_reward_std", g_std),
                    ("advantage", adv), ("length_frac", b.lengths.double() / denom)):
        ctx[:, FEATURE_INDEX[name]] = v.to(torch.float32)


# ------------------------------------------------------------------ scheduler
@dataclass
class RankStep:
    """One round's decision (identical on every rank) and this rank's share of it."""

    step: ScheduleStep  # over the gathered summary batch: train rows = selected fresh, then reused
    rank: int
    local_arm_ids: torch.Tensor  # [n] arm id of each of this rank's fresh rollouts
    fresh_local: torch.Tensor  # [f] this rank's selected fresh rollouts (local rows), in train order
    reused_arm_ids: torch.Tensor  # [r] reused arms this rank owns, in train order
    reused_payload: list  # [r] the payload `select` was given for them (None where none was)
    train_rows: torch.Tensor  # [f + r] rows of step.train_batch this rank trains
    train_owner: torch.Tensor  # [step.num_selected] the rank that trains each train row
    gain_owner: torch.Tensor  # [N + m] owner of each row of step.gain_batch
    gain_local: torch.Tensor  # [N + m] its local row: fresh rows' local index, reused rows' position
    world_size: int

    @property
    def rows_per_rank(self) -> list[int]:
        return torch.bincount(self.train_owner, minlength=self.world_size).tolist()

    @property
    def num_rows(self) -> int:
        """Train rows of this rank (fresh + reused it owns)."""
        return int(self.train_rows.numel())

    @property
    def train_advantage(self) -> torch.Tensor:
        """Advantages of this rank's train rows (the trainer's, or GRPO's against full groups)."""
        return self.step.train_advantage[self.train_rows]


class RankScheduler:
    """A `Scheduler` replicated on every rank, deciding over all ranks' rollouts.

    Every rank constructs it with an identical scheduler (same config and seed, or the same
    state loaded) and calls `select` (a collective) each round with its own rollouts. `group`
    is the torch.distributed process group (default: the world; one process without one)."""

    def __init__(self, scheduler: Scheduler, *, group=None):
        if not isinstance(scheduler, Scheduler):
            fail(_O, "scheduler", describe(scheduler), "a Scheduler")
        self.scheduler = scheduler
        self.group = group
        self.owner_arm_ids = torch.zeros(0, dtype=torch.int64)  # live buffer arms (replicated) ...
        self.owner_ranks = torch.zeros(0, dtype=torch.int64)  # ... and the rank that generated each
        self.payload: dict[int, object] = {}  # rank-local: arm id -> what the trainer needs to retrain it

    @property
    def rank(self) -> int:
        return rank_and_size(self.group)[0]

    @property
    def world_size(self) -> int:
        return rank_and_size(self.group)[1]

    def select(self, batch: RolloutBatch, *, group_ids: torch.Tensor | None = None,
               advantage: torch.Tensor | None = None, prompt_ids: torch.Tensor | None = None,
               contexts: torch.Tensor | None = None, payload: list | None = None) -> RankStep:
        """Gather every rank's rollouts, select once (the same on every rank), keep this rank's
        payload of the arms the buffer stored. Arguments as `gather_rollouts`; payload: [n]
        per-rollout objects handed back in `RankStep.reused_payload` when an arm is reused."""
        rank, world = rank_and_size(self.group)
        n = batch.num_rollouts if isinstance(batch, RolloutBatch) else -1
        if payload is not None and (not isinstance(payload, (list, tuple)) or len(payload) != n):
            fail(_O, "payload", describe(payload), f"a list of {n} per-rollout entries")
        g = gather_rollouts(batch, group_ids=group_ids, advantage=advantage, prompt_ids=prompt_ids,
                            contexts=contexts, scheduler=self.scheduler, group=self.group)
        if g.batch.num_rollouts == 0:
            fail(_O, "batch", "0 rollouts on every rank", "at least one rollout to choose from")
        step = self.scheduler.select(g.batch, contexts=g.contexts, advantage=g.advantage,
                                     prompt_ids=g.prompt_ids if bool((g.prompt_ids >= 0).any()) else None)
        fresh_ids = step.fresh_arm_ids
        mine = g.owner == rank
        local_arm_ids = torch.empty(int(mine.sum()), dtype=torch.int64)
        local_arm_ids[g.local_index[mine]] = fresh_ids[mine]

        reused_ids = step.reused.arm_ids if step.reused is not None else torch.zeros(0, dtype=torch.int64)
        reused_owner = self._owners(reused_ids)
        sel = step.fresh.indices.cpu()
        train_owner = torch.cat([g.owner[sel], reused_owner])
        fresh_local = g.local_index[sel][g.owner[sel] == rank]
        my_reused = reused_ids[reused_owner == rank]
        reused_payload = [self.payload.get(int(a)) for a in my_reused.tolist()]  # before the prune below
        # A reused row's local index is its position among its owner's reused rows (train order).
        pos_in_owner = torch.zeros(reused_ids.numel(), dtype=torch.int64)
        for r in range(world):
            m = reused_owner == r
            pos_in_owner[m] = torch.arange(int(m.sum()))

        # Ownership and payload of the arms the buffer now holds.
        self.owner_arm_ids = torch.cat([self.owner_arm_ids, fresh_ids])
        self.owner_ranks = torch.cat([self.owner_ranks, g.owner])
        if payload is not None:
            for i, a in enumerate(local_arm_ids.tolist()):
                self.payload[a] = payload[i]
        self._prune()
        return RankStep(step=step, rank=rank, local_arm_ids=local_arm_ids, fresh_local=fresh_local,
                        reused_arm_ids=my_reused, reused_payload=reused_payload,
                        train_rows=torch.nonzero(train_owner == rank).flatten(), train_owner=train_owner,
                        gain_owner=torch.cat([g.owner, reused_owner]),
                        gain_local=torch.cat([g.local_index, pos_in_owner]), world_size=world)

    def _owners(self, arm_ids: torch.Tensor) -> torch.Tensor:
        if arm_ids.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        order = torch.argsort(self.owner_arm_ids)
        pos = torch.searchsorted(self.owner_arm_ids[order], arm_ids).clamp_max(max(order.numel() - 1, 0))
        if order.numel() == 0 or not bool((self.owner_arm_ids[order][pos] == arm_ids).all()):
            fail(_O, "owner map", "a reused arm of unknown owner", "every stored arm's owner (load the "
                 "RankScheduler's state_dict, not only the Scheduler's)")
        return self.owner_ranks[order][pos]

    def _prune(self) -> None:
        """Forget owners and payloads of arms the buffer no longer holds."""
        buf = self.scheduler.buffer
        live = buf.slot["arm_id"][buf.live_slots()] if buf is not None else torch.zeros(0, dtype=torch.int64)
        keep = torch.isin(self.owner_arm_ids, live)
        self.owner_arm_ids, self.owner_ranks = self.owner_arm_ids[keep], self.owner_ranks[keep]
        live_set = set(live.tolist())
        self.payload = {a: p for a, p in self.payload.items() if a in live_set}

    # ------------------------------------------------------------ per-row values back
    def _scatter(self, mine: torch.Tensor, local_idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """All rows' values [len(mine)] from the rows each rank owns (`mine`), whose values are
        values[local_idx]: one all-reduce of a zero-filled vector."""
        out = torch.zeros(mine.numel(), dtype=torch.float64)
        out[mine] = values.detach().double().cpu()[local_idx[mine]]
        return all_reduce_sum(out, self.group)

    def observe_log_ratio(self, rstep: RankStep, fresh_log_ratio: torch.Tensor,
                          reused_log_ratio: torch.Tensor) -> ArmGains | None:
        """Per-arm gains (self | heldout | auto) from each row's mean token log ratio
        log pi_after - log pi_before: `fresh_log_ratio` [n] for every local fresh rollout
        (selected or not), `reused_log_ratio` [r] for the reused rows this rank owns (order of
        `rstep.reused_arm_ids`). A collective. Returns the gains fed to the learner."""
        step = rstep.step
        n_local = rstep.local_arm_ids.numel()
        n_fresh = step.fresh_arm_ids.numel()
        fr = check_tensor(_O, "fresh_log_ratio", fresh_log_ratio, shape=(n_local,), kind="float",
                          expected=f"[{n_local}] (every local fresh rollout)")
        rr = check_tensor(_O, "reused_log_ratio", reused_log_ratio, shape=(rstep.reused_arm_ids.numel(),),
                          kind="float", expected=f"[{rstep.reused_arm_ids.numel()}] (the reused arms this rank owns)")
        local = torch.cat([fr.detach().double().cpu(), rr.detach().double().cpu()])
        # A gain row's value index: fresh rows by local row, the reused ones after all of them.
        idx = rstep.gain_local.clone()
        idx[n_fresh:] += n_local
        ratio = self._scatter(rstep.gain_owner == rstep.rank, idx, local)
        gb = step.gain_batch
        lengths = gb.lengths.cpu()
        after = torch.repeat_interleave(ratio.float(), lengths)
        return self.scheduler.observe_step(step, logp_after=after, logp_before=torch.zeros_like(after))

    def record_clip_ratio(self, rstep: RankStep, clip_ratio: torch.Tensor) -> None:
        """The clipped-token fraction of this rank's train rows ([f + r], train order). A collective."""
        k = rstep.num_rows
        c = check_tensor(_O, "clip_ratio", clip_ratio, shape=(k,), kind="float",
                         expected=f"[{k}] (one per train row this rank owns)")
        mine = rstep.train_owner == rstep.rank
        idx = torch.zeros(mine.numel(), dtype=torch.int64)
        idx[mine] = torch.arange(k)
        self.scheduler.record_clip_ratio(rstep.step, self._scatter(mine, idx, c).float())

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The replicated state (identical on every rank): the scheduler and the owner map."""
        return {"scheduler": self.scheduler.state_dict(), "owner_arm_ids": self.owner_arm_ids.clone(),
                "owner_ranks": self.owner_ranks.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.owner_arm_ids = state["owner_arm_ids"].clone()
        self.owner_ranks = state["owner_ranks"].clone()

    def local_state_dict(self) -> dict:
        """This rank's own state: the payloads of its stored arms."""
        ids = sorted(self.payload)
        return {"rank": self.rank, "arm_ids": ids, "payload": [self.payload[a] for a in ids]}

    def load_local_state_dict(self, state: dict) -> None:
        if state["rank"] != self.rank:
            fail(_O, "local state['rank']", str(state["rank"]), f"this rank, {self.rank}")
        self.payload = dict(zip(state["arm_ids"], state["payload"]))
