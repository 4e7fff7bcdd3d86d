"""The scheduler in verl's driver, on the gathered `DataProto` (`pip install 'rollout-bandits[verl]'`).

Where it sits: verl's `RayPPOTrainer.fit` (and the DAPO recipe's `RayDAPOTrainer.fit`, after its
`filter_groups` step) computes advantages on the driver with the module-level
`compute_advantage(batch, ...)`, once old log-probs, reference log-probs, values and rewards are
in the batch. That call is the hook: verl's own estimator runs on the full groups (GRPO's group
statistics are those of all n rollouts), then `schedule_dataproto` keeps the selected rows and
appends the reused ones. `CBSTrainerMixin` puts it there without copying `fit`.

Groups come from `non_tensor_batch["uid"]`; rows are sorted by uid first (`_balance_batch`
reorders them), and the result holds each uid's rows together. A reused rollout's rows are
rebuilt from what the scheduler stored (verl 0.9.1's field names):

  prompts / responses / input_ids     its prompt and response token ids, left / right padded
  attention_mask / response_mask      from the lengths; position_ids = cumsum(mask) - 1, as verl
  old_log_probs, rollout_log_probs    the behaviour log-probs stored when it was generated
  rm_scores, token_level_scores/_rewards   its reward on its last response token
  advantages / returns                its advantage against its own full group, on every token
  non-tensor fields (uid, data_source, reward extras, ...) and row-level tensors (dummy_tensor,
  reward_baselines: fields not aligned with the prompt or response width)   kept per row, restored

Any other tensor field (`ref_log_prob`, `values`, ...) comes from `fill(reused_rows)`, which may
also replace rebuilt ones (e.g. `old_log_probs` recomputed by the current actor: no off-policy
correction, the paper's choice); a field neither rebuilt nor filled is a ValueError naming it.
Single-turn, right-padded responses and 2-D position ids only (multi-turn masks with holes and
mRoPE position ids are refused with a clear error).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from rollout_bandits.bandit.scheduler import Scheduler, SchedulerConfig, ScheduleStep
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.validation import check_int, describe, fail

ENTROPY_KEY = "rb_entropys"  # the copy of verl's per-token entropies that survives fit's pop("entropys")
_O = "schedule_dataproto"
_REQUIRED = ("prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask",
             "old_log_probs")
_SEQUENCE = ("input_ids", "attention_mask", "position_ids")  # [B, P + R]: prompt then response
_SCORES = ("rm_scores", "token_level_scores", "token_level_rewards")  # reward on the last response token
_LOGPROBS = ("old_log_probs", "rollout_log_probs")
_ENTROPIES = (ENTROPY_KEY, "entropys")
_REBUILT = (*_REQUIRED, *_SCORES, *_LOGPROBS, *_ENTROPIES, "advantages", "returns")

Fill = Callable[["object"], "object | None"]


def _dataproto_class():
    try:
        from verl import DataProto
    except ImportError as err:
        raise ImportError("rollout_bandits.integrations.verl needs verl: pip install 'rollout-bandits[verl]'") from err
    return DataProto


@dataclass
class _RowStore:
    """The non-tensor fields and row-level tensors of every row the scheduler may reuse, by the row
    key given to `select` as its prompt id (one key per row; `live_prompt_ids()` says which rows are
    still stored)."""

    rows: dict[int, tuple[dict, dict]] = field(default_factory=dict)
    next_key: int = 0


class DataProtoScheduler:
    """A `Scheduler` plus what verl rows need beyond the token streams (their non-tensor fields).

    Checkpoint it with `state_dict()` (holds numpy objects: `torch.load(..., weights_only=False)`).
    `last_step` is the latest `ScheduleStep`, for per-arm gain signals (`observe_step`)."""

    def __init__(self, scheduler: Scheduler | None = None, *, seed: int = 0):
        if scheduler is None:
            scheduler = Scheduler(SchedulerConfig(gain="batch"), seed=seed)
        if not isinstance(scheduler, Scheduler):
            fail("DataProtoScheduler", "scheduler", describe(scheduler), "a rollout_bandits Scheduler")
        self.scheduler = scheduler
        self.store = _RowStore()
        self.last_step: ScheduleStep | None = None

    def schedule(self, data, *, normalize_std: bool = True, fill: Fill | None = None, multiple_of: int = 1):
        """`schedule_dataproto(self, data, ...)`."""
        return schedule_dataproto(self, data, normalize_std=normalize_std, fill=fill, multiple_of=multiple_of)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "rows": dict(self.store.rows),
                "next_key": self.store.next_key}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.store = _RowStore(dict(state["rows"]), int(state["next_key"]))


# A bare Scheduler's row store (the store holds no reference back, so the scheduler can be collected).
_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def schedule_dataproto(scheduler, data, *, normalize_std: bool = True, fill: Fill | None = None,
                       multiple_of: int = 1):
    """The rows of verl's batch `data` to train on this step: the selected fresh rows (grouped by
    uid) then the reused ones, every tensor field at one width (re-padded when a stored rollout is
    longer than this batch's prompt or response width).

    scheduler: a `DataProtoScheduler`, or a `Scheduler` (its row store then lives beside it).
    Advantages: where `data` has `advantages` (verl's `compute_advantage` ran on the full groups)
      each row's value is given to the scheduler and stored for reuse; otherwise `advantages` and
      `returns` are written from the scheduler's GRPO advantage (`normalize_std=False`: Dr.GRPO's
      r - mean), and verl's `compute_advantage` must not run on the result (it would see partial
      groups).
    fill: called with the rebuilt reused rows (a DataProto) for the fields this adapter cannot
      rebuild; returns a DataProto (or None) whose batch fields are added or replace rebuilt ones.
    multiple_of: verl splits the batch into equal DP chunks and mini-batches (`ppo_mini_batch_size
      * rollout.n` rows): the lowest-scored rows are left out so the count is a multiple (0 rows
      when nothing was selected; a ValueError, after the selection was made, when fewer than
      `multiple_of` were).
    A ValueError about the batch or a field no fill provides leaves the scheduler as it was.
    """
    DataProto = _dataproto_class()
    if isinstance(scheduler, DataProtoScheduler):
        sched, store, owner = scheduler.scheduler, scheduler.store, scheduler
    elif isinstance(scheduler, Scheduler):
        sched, store, owner = scheduler, _STORES.setdefault(scheduler, _RowStore()), None
    else:
        fail(_O, "scheduler", describe(scheduler), "a DataProtoScheduler or a rollout_bandits Scheduler")
    check_int(_O, "multiple_of", multiple_of, 1)
    if not isinstance(data, DataProto) or data.batch is None:
        fail(_O, "data", describe(data), "a verl DataProto with a tensor batch")
    view = _RowsView.of(data)
    if fill is None and sched.buffer is not None and view.unrebuilt:
        fail(_O, "data.batch", f"fields {view.unrebuilt} the reused rows cannot be rebuilt with",
             "fields a fill(reused_rows) callback computes (e.g. ref_log_prob via the reference policy)")
    batch, group_prompts, adv = view.rollout_batch()
    keys = torch.arange(store.next_key, store.next_key + view.n, dtype=torch.int64)
    step = sched.select(batch, prompt_ids=keys, advantage=adv, prompt_tokens=group_prompts)
    store.next_key += view.n
    if sched.buffer is not None:
        nt, td = data.non_tensor_batch, data.batch
        for i, row in enumerate(view.order.tolist()):
            store.rows[int(keys[i])] = ({k: v[row] for k, v in nt.items()},
                                        {k: td[k][row].clone() for k in view.row_level_keys})
    if owner is not None:
        owner.last_step = step

    fresh_rows = view.order[step.fresh.indices.cpu().numpy()]
    fresh = data.select_idxs(torch.from_numpy(fresh_rows).long())
    fresh.meta_info = dict(data.meta_info)
    parts = [fresh]
    width = view.width_for(step)
    if step.num_reused:
        parts.append(view.reused_rows(step, store, width, fill))
    live = set(sched.live_prompt_ids().tolist())
    store.rows = {k: v for k, v in store.rows.items() if k in live}
    for p in parts:
        if ENTROPY_KEY in p.batch.keys():
            p.batch.pop(ENTROPY_KEY)
    parts[0] = view.repad(parts[0], width)
    out = DataProto.concat(parts) if len(parts) > 1 else parts[0]
    if "advantages" not in view.keys:
        adv_rows = step.train_advantage_for(normalize_std).float().unsqueeze(1)
        for name in ("advantages", "returns"):
            out.batch[name] = adv_rows * out.batch["response_mask"].float()
    out = _trim(out, step, multiple_of)
    if "global_token_num" in out.meta_info:
        out.meta_info["global_token_num"] = out.batch["attention_mask"].sum(-1).tolist()
    return out


def _trim(out, step: ScheduleStep, multiple_of: int):
    """Leave out the lowest-scored rows so the row count is a multiple of `multiple_of`."""
    n = len(out)
    keep_n = n - n % multiple_of
    if keep_n == n:
        return out
    if keep_n == 0:
        fail(_O, "multiple_of", f"{multiple_of} with only {n} rows selected",
             "a multiple verl can split the selected rows into (ppo_mini_batch_size * rollout.n divides "
             "the rows kept: lower it, or keep more rows per group)")
    scores = torch.cat([step.fresh.scores.detach().cpu().float()[step.fresh.indices.cpu()],
                        step.reused_scores.detach().cpu().float()])
    keep = torch.sort(torch.sort(scores, descending=True, stable=True).indices[:keep_n]).values
    trimmed = out.select_idxs(keep)
    trimmed.meta_info = dict(out.meta_info)
    return trimmed


@dataclass
class _Width:
    prompt: int
    response: int


class _RowsView:
    """One verl batch read as the scheduler's RolloutBatch: rows sorted by uid (first appearance)."""

    def __init__(self, data, order: np.ndarray, group: np.ndarray):
        self.data, self.order, self.group = data, order, group
        td = data.batch
        self.keys = set(td.keys())
        self.n = len(data)
        self.P = td["prompts"].shape[1]
        self.R = td["responses"].shape[1]
        self.mask = td["response_mask"].bool()
        self.lengths = self.mask.sum(1)
        self.score_key = next(k for k in ("token_level_scores", "rm_scores") if k in self.keys)
        aligned = (self.P, self.R, self.P + self.R)
        self.row_level_keys = [k for k in self.keys if td[k].dim() == 1 or td[k].shape[1] not in aligned]
        self.unrebuilt = sorted(self.keys - set(_REBUILT) - set(self.row_level_keys))

    @classmethod
    def of(cls, data) -> _RowsView:
        td, nt = data.batch, data.non_tensor_batch
        missing = [k for k in _REQUIRED if k not in td.keys()]
        if missing:
            fail(_O, "data.batch", f"no {', '.join(missing)}", "verl's rollout fields " + ", ".join(_REQUIRED))
        if not any(k in td.keys() for k in ("token_level_scores", "rm_scores")):
            fail(_O, "data.batch", "no token_level_scores or rm_scores", "the rewards (verl puts them on the last "
                 "response token)")
        if "uid" not in nt:
            fail(_O, "data.non_tensor_batch", "no 'uid'", "the prompt uid fit sets (it defines the groups)")
        n = len(data)
        if n == 0:
            fail(_O, "data", "0 rows", "at least one rollout")
        b, p = td["prompts"].shape
        r = td["responses"].shape[1]
        want = {"input_ids": (b, p + r), "attention_mask": (b, p + r), "position_ids": (b, p + r),
                "response_mask": (b, r), "old_log_probs": (b, r)}
        for k, shape in want.items():
            if tuple(td[k].shape) != shape:
                fail(_O, f"data.batch[{k!r}]", f"shape {list(td[k].shape)}",
                     f"{list(shape)} (prompts [{b}, {p}], responses [{b}, {r}]; 2-D position ids)")
        mask = td["response_mask"].bool()
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(r) < lengths[:, None]):
            fail(_O, "data.batch['response_mask']", "a response mask with holes (multi-turn tool tokens?)",
                 "right-padded single-turn responses (1s then 0s)")
        if not torch.equal(td["attention_mask"][:, p:].bool(), mask):
            fail(_O, "data.batch['attention_mask']", "a response part that differs from response_mask",
                 "single-turn rows (response attention = response_mask)")
        uids = np.asarray(nt["uid"])
        try:
            _, first, inverse = np.unique(uids, return_index=True, return_inverse=True)
        except TypeError:
            fail(_O, "data.non_tensor_batch['uid']", "uids that cannot be compared", "strings (or ints)")
        rank = np.empty_like(first)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        group = rank[inverse.reshape(-1)]
        order = np.argsort(group, kind="stable")
        return cls(data, order, group[order])

    def rollout_batch(self) -> tuple[RolloutBatch, list, torch.Tensor | None]:
        td = self.data.batch
        o = torch.from_numpy(self.order).long()
        m = self.mask[o]
        lens = self.lengths[o]
        offsets = torch.zeros(self.n + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lens, 0)
        ent = next((k for k in _ENTROPIES if k in self.keys), None)
        batch = RolloutBatch(
            token_logprobs=td["old_log_probs"][o][m].float(), offsets=offsets,
            reward=td[self.score_key][o].float().sum(-1), group_ids=torch.from_numpy(self.group).long(),
            token_entropy=None if ent is None else td[ent][o][m].float(),
            token_ids=td["responses"][o][m].long(), truncated=lens == self.R, max_response_len=self.R,
            allow_empty_rollouts=True,
        )
        starts = batch.group_offsets[:-1].tolist()
        prompt_mask = td["attention_mask"][:, :self.P].bool()
        group_prompts = [td["prompts"][int(o[s])][prompt_mask[int(o[s])]].long() for s in starts]
        return batch, group_prompts, self._row_advantages(o, m, lens)

    def _row_advantages(self, o, m, lens) -> torch.Tensor | None:
        if "advantages" not in self.keys:
            return None
        a = self.data.batch["advantages"][o].float()
        hi = torch.where(m, a, -torch.inf).amax(1)
        lo = torch.where(m, a, torch.inf).amin(1)
        has = lens > 0
        if bool((has & ((hi - lo) > 1e-4 * (1 + hi.abs()))).any()):
            fail(_O, "data.batch['advantages']", "advantages that vary along a response (a token-level "
                 "estimator such as GAE)", "one advantage per rollout (GRPO, RLOO, REINFORCE++, ...)")
        return torch.where(has, hi, torch.zeros_like(hi))

    # ------------------------------------------------------------ reused rows
    def width_for(self, step: ScheduleStep) -> _Width:
        if not step.num_reused:
            return _Width(self.P, self.R)
        prompts = step.reused.prompt_tokens
        longest = max((len(t) for t in prompts if t is not None), default=0)
        return _Width(max(self.P, longest), max(self.R, int(step.reused.batch.lengths.max())))

    def _pad_id(self) -> int:
        td = self.data.batch
        pads = td["responses"][~self.mask]
        if pads.numel() == 0:
            pads = td["prompts"][~td["attention_mask"][:, :self.P].bool()]
        return int(pads[0]) if pads.numel() else 0

    def reused_rows(self, step: ScheduleStep, store: _RowStore, w: _Width, fill: Fill | None):
        """The reused rollouts as verl rows, at width `w`, with every field `data` has."""
        DataProto = _dataproto_class()
        td = self.data.batch
        rb = step.reused.batch
        m = rb.num_rollouts
        lens = rb.lengths.cpu()
        if any(t is None for t in step.reused.prompt_tokens):
            fail(_O, "scheduler", "reused rollouts stored without prompt tokens",
                 "a scheduler whose rollouts were all selected through schedule_dataproto")
        pad = self._pad_id()
        row = torch.repeat_interleave(torch.arange(m), lens)
        col = torch.arange(int(lens.sum())) - torch.repeat_interleave(rb.offsets[:-1].cpu(), lens)
        resp_mask = torch.arange(w.response) < lens[:, None]

        def response_stream(stream: torch.Tensor, fill_value, dtype) -> torch.Tensor:
            out = torch.full((m, w.response), fill_value, dtype=dtype)
            out[row, col] = stream.cpu().to(dtype)
            return out

        prompts = torch.full((m, w.prompt), pad, dtype=td["prompts"].dtype)
        prompt_mask = torch.zeros(m, w.prompt, dtype=torch.bool)
        for i, t in enumerate(step.reused.prompt_tokens):
            if len(t):
                prompts[i, w.prompt - len(t):] = t.to(prompts.dtype)
                prompt_mask[i, w.prompt - len(t):] = True
        responses = response_stream(rb.token_ids, pad, td["responses"].dtype)
        attention = torch.cat([prompt_mask, resp_mask], 1)
        last = torch.zeros(m, w.response)
        last[torch.arange(m), (lens - 1).clamp_min(0)] = rb.reward.cpu().float()
        adv = step.train_advantage_for(True)[step.num_fresh_selected:].float().unsqueeze(1) * resp_mask
        built = {
            "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": attention.to(td["attention_mask"].dtype),
            "position_ids": (torch.cumsum(attention.long(), 1) - 1).clamp_min(0).to(td["position_ids"].dtype),
            "response_mask": resp_mask.to(td["response_mask"].dtype),
            **{k: last for k in _SCORES},
            **{k: response_stream(rb.token_logprobs, 0.0, torch.float32) for k in _LOGPROBS},
            "advantages": adv, "returns": adv,
        }
        if rb.token_entropy is not None:
            built.update({k: response_stream(rb.token_entropy, 0.0, torch.float32) for k in _ENTROPIES})
        tensors = {k: built[k].to(td[k].dtype) for k in self.keys if k in built}
        stored = [store.rows.get(int(k), ({}, {})) for k in step.reused.prompt_ids.tolist()]
        for k in self.row_level_keys:
            if all(k in s[1] for s in stored):
                tensors[k] = torch.stack([s[1][k] for s in stored])
        reused = DataProto.from_dict(tensors=tensors, non_tensors=self._reused_non_tensors(stored))
        if fill is not None:
            extra = fill(reused)
            if extra is not None:
                for k in extra.batch.keys():
                    reused.batch[k] = extra.batch[k]
        missing = sorted(self.keys - set(reused.batch.keys()))
        if missing:
            fail(_O, "data.batch", f"fields {missing} the reused rows cannot be rebuilt with",
                 "fields a fill(reused_rows) callback computes (e.g. ref_log_prob via the reference policy)")
        for k in set(reused.batch.keys()) - self.keys:
            reused.batch.pop(k)
        return reused

    def _reused_non_tensors(self, stored: list[tuple[dict, dict]]) -> dict:
        out = {}
        for key, col in self.data.non_tensor_batch.items():
            values = [s[0].get(key) for s in stored]
            complete = all(key in s[0] for s in stored)
            arr = np.empty(len(values), dtype=col.dtype if complete else object)
            for i, v in enumerate(values):
                arr[i] = v
            out[key] = arr
        return out

    def repad(self, part, w: _Width):
        """`part` (rows of this batch) at width `w`: prompts padded on the left, responses on the right."""
        dp, dr = w.prompt - self.P, w.response - self.R
        if dp == 0 and dr == 0:
            return part
        pad = self._pad_id()
        td = part.batch
        for k in list(td.keys()):
            t = td[k]
            if k == "prompts":
                td[k] = torch.nn.functional.pad(t, (dp, 0), value=pad)
            elif k in _SEQUENCE:
                left = torch.full((t.shape[0], dp), pad if k == "input_ids" else 0, dtype=t.dtype)
                right = t[:, -1:].expand(-1, dr) if k == "position_ids" else \
                    torch.full((t.shape[0], dr), pad if k == "input_ids" else 0, dtype=t.dtype)
                td[k] = torch.cat([left, t, right], 1)
            elif k in self.row_level_keys:
                continue
            elif t.shape[1] == self.R:
                shape = (t.shape[0], dr, *t.shape[2:])
                td[k] = torch.cat([t, torch.zeros(shape, dtype=t.dtype)], 1)
            else:
                fail(_O, f"data.batch[{k!r}]", f"shape {list(t.shape)}", f"[*, {self.R}, ...] (response-aligned), "
                     "to be re-padded for a longer reused rollout")
        return part


# ------------------------------------------------------------------ the recipe
def keep_entropys(old_log_prob):
    """verl's `fit` pops `entropys` from `_compute_old_log_prob`'s output: keep a copy under
    ENTROPY_KEY for the scheduler's features (schedule_dataproto removes it again)."""
    if "entropys" in old_log_prob.batch.keys():
        old_log_prob.batch[ENTROPY_KEY] = old_log_prob.batch["entropys"]
    return old_log_prob


@contextlib.contextmanager
def hook_compute_advantage(module, scheduler, **schedule_kw) -> Iterator[None]:
    """Within: `module.compute_advantage` (the one a trainer's `fit` calls) runs verl's estimator on
    the full groups, then `schedule_dataproto(scheduler, ..., **schedule_kw)`."""
    original = getattr(module, "compute_advantage", None)
    if original is None:
        fail("hook_compute_advantage", "module", getattr(module, "__name__", describe(module)),
             "the module whose fit calls compute_advantage (verl.trainer.ppo.ray_trainer or the DAPO recipe's)")

    def compute_advantage_then_schedule(data, *args, **kwargs):
        return schedule_dataproto(scheduler, original(data, *args, **kwargs), **schedule_kw)

    module.compute_advantage = compute_advantage_then_schedule
    try:
        yield
    finally:
        module.compute_advantage = original


class CBSTrainerMixin:
    """In front of verl's `RayPPOTrainer` (or the DAPO recipe's `RayDAPOTrainer`): the scheduler
    picks the rows each update trains on and reuses stored ones.

        class CBSRayPPOTrainer(CBSTrainerMixin, RayPPOTrainer): ...

    `scheduler_config` must use gain="batch" (the paper's signal, labelled inside the next
    `select`; per-arm gains need log-probs after the update: use `schedule_dataproto` and
    `observe_step` in your own fit). Reused rows get `ref_log_prob` from the reference policy when
    the trainer has one. Save `self.rollout_scheduler.state_dict()` with your checkpoints.
    """

    scheduler_config: SchedulerConfig | None = None  # None: SchedulerConfig(gain="batch")
    scheduler_seed: int = 0

    @property
    def rollout_scheduler(self) -> DataProtoScheduler:
        if "_rollout_scheduler" not in self.__dict__:
            cfg = self.scheduler_config or SchedulerConfig(gain="batch")
            if not isinstance(cfg, SchedulerConfig) or cfg.gain != "batch":
                fail(type(self).__name__, "scheduler_config", describe(cfg) if not isinstance(cfg, SchedulerConfig)
                     else f"gain={cfg.gain!r}", "a SchedulerConfig with gain='batch'")
            self.__dict__["_rollout_scheduler"] = DataProtoScheduler(Scheduler(cfg, seed=self.scheduler_seed))
        return self.__dict__["_rollout_scheduler"]

    def _compute_old_log_prob(self, batch):
        old_log_prob, mfu = super()._compute_old_log_prob(batch)
        return keep_entropys(old_log_prob), mfu

    def _fill_reused(self, reused):
        return self._compute_ref_log_prob(reused) if getattr(self, "use_reference_policy", False) else None

    def _rows_multiple(self) -> int:
        """verl's update splits the batch into mini-batches of ppo_mini_batch_size * rollout.n rows."""
        cfg = self.config.actor_rollout_ref
        return int(cfg.actor.ppo_mini_batch_size) * int(cfg.rollout.n)

    def fit(self):
        with hook_compute_advantage(fit_module(type(self)), self.rollout_scheduler, fill=self._fill_reused,
                                    multiple_of=self._rows_multiple()):
            return super().fit()


def fit_module(cls: type):
    """The module of the first class after the mixin in `cls`'s MRO that defines `fit`: the
    namespace whose `compute_advantage` that fit calls."""
    for c in cls.__mro__:
        if "fit" in c.__dict__ and not issubclass(c, CBSTrainerMixin):
            return sys.modules[c.__module__]
    fail("fit_module", "cls", cls.__name__, "a trainer class with a fit method (RayPPOTrainer, RayDAPOTrainer)")


__all__ = [
    "ENTROPY_KEY",
    "CBSTrainerMixin",
    "DataProtoScheduler",
    "fit_module",
    "hook_compute_advantage",
    "keep_entropys",
    "schedule_dataproto",
]
