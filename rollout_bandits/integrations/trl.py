"""CBSGRPOTrainer: TRL's GRPOTrainer with the contextual-bandit rollout scheduler in the loop.

Where it hooks in (TRL >= 1.16): `_generate_and_score_completions` is the one place where a
generation batch's completions, masks and advantages exist together (callbacks never see the
batch), and `_calculate_rewards` the one place with the raw rewards (TRL returns advantages).
After TRL has scored a generation batch, the adapter
1. (per-arm gains) scores last round's rows under the updated policy, one no-grad forward, and
   feeds their gains to the scheduler (the `batch` gain needs nothing: select labels it);
2. computes the new rows' behaviour log-probs and token entropies, one no-grad forward (TRL's
   `old_per_token_logps` are the behaviour log-probs when TRL has them);
3. selects through a `RankScheduler`: one decision on every rank (rollout_bandits/distributed.py);
4. emits this rank's kept fresh rows and the reused rows it owns, re-padded: prompts from the
   stored prompt tokens, TRL's advantages as stored at generation, stored behaviour log-probs
   where TRL uses old log-probs (else none: reused rows carry no importance weight, like the
   paper), reference log-probs computed for reused rows when beta > 0, `num_items_in_batch`
   recomputed over the emitted rows of every rank; then zero-mask rows pad every rank to the
   same count, a multiple of `steps_per_generation` (TRL's split drops a remainder).
Row-mean losses (grpo, dr_grpo, sapo, luspo) average over a micro-batch's rows: the padding rows
would dilute them, so those losses are scaled by rows / real rows (an entropy bonus or MoE aux
loss in such a micro-batch is scaled with them). The scheduler's state is saved with every TRL
checkpoint and restored by `train(resume_from_checkpoint=...)`; its stats are logged as `cbs/*`.

Prompt scheduling before generation (`prompt_config`, bandit/prompts.py): TRL's sampler hands each
round P prompts (x num_generations); the adapter adds pool_size(P) - P more rows of the training
dataset, drawn with a generator seeded by (seed, prompt round) so that a resumed run draws the
same, lets the prompt scheduler pick P of these candidates *before* `generate`, and generates for
those only (every round costs what plain TRL costs). The sampled prompts are gathered over ranks
and the choice made identically on every rank; each rank generates its own slice. After scoring,
each group's rewards label the choice (unscorable completions count as in `nonfinite_reward`).
Its state is saved with the checkpoint; stats are logged as `cbs_prompts/*`.
"""

from __future__ import annotations

import json
import math
import os

import torch
from transformers import ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from rollout_bandits.bandit.prompts import PromptScheduler, PromptSchedulerConfig, prompt_key
from rollout_bandits.bandit.scheduler import Scheduler, SchedulerConfig
from rollout_bandits.batch import NONFINITE_REWARD, RolloutBatch
from rollout_bandits.distributed import RankScheduler, all_reduce_sum
from rollout_bandits.validation import check_choice, check_int, describe, fail

__all__ = ["CBSGRPOTrainer", "PROMPTS_FILE", "SCHEDULER_FILE", "char_tokenizer_fast"]

_O = "CBSGRPOTrainer"
SCHEDULER_FILE = "rollout_bandits_scheduler.pt"  # replicated state (written by the main process)
_RANK_FILE = "rollout_bandits_rank{}.pt"  # this rank's stored rollouts and counters
_PENDING_FILE = "rollout_bandits_pending_rank{}.pt"  # last round's step, awaiting its per-arm gains
PROMPTS_FILE = "rollout_bandits_prompts.pt"  # the prompt scheduler's state (replicated)
_ROW_MEAN_LOSSES = ("grpo", "sapo", "dr_grpo", "luspo")
_CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # TRL's two-sided clipped surrogate
_TOKEN_KEYS = ("old_per_token_logps", "sampling_per_token_logps", "ref_per_token_logps")
_KNOWN_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
               "num_items_in_batch", *_TOKEN_KEYS}
_LOGGED_STATS = ("selection_rate", "last_selection_rate", "mean_score", "mean_bonus", "reused_total",
                 "last_num_reused", "empty_selections", "observed_arms", "regret_estimate", "prediction_rmse",
                 "last_batch_gain", "buffer_size")


def char_tokenizer_fast(char_tokenizer=None):
    """The embedded char tokenizer (`trainer.tokenizer.CharTokenizer`, same ids) as a
    `PreTrainedTokenizerFast`, which TRL accepts: a `tokenizers` BPE model with no merges is one
    token per character, built offline."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from rollout_bandits.trainer.tokenizer import SPECIAL_TOKENS, CharTokenizer

    tok = CharTokenizer() if char_tokenizer is None else char_tokenizer
    if not isinstance(tok, CharTokenizer):
        fail("char_tokenizer_fast", "char_tokenizer", describe(tok), "a CharTokenizer or None")
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + list(tok.chars))}
    model = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    model.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CBSGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that trains on the rollouts the scheduler selects (and reuses).

    scheduler_config: the `SchedulerConfig` (every policy; the gains batch | self | heldout |
    auto). scheduler_seed: the scheduler's seed (default `args.seed`: the same on every rank).
    nonfinite_reward: what an unscorable completion's reward (every reward function returned
    None) counts as for the scheduler, "group_min" | "zero" | "error" (TRL gives it advantage 0).
    Everything else as GRPOTrainer. Not supported (a ValueError here): vLLM importance-sampling
    correction, tools / environments (tool masks), multimodal processors, a PEFT reference
    (no ref_model) with beta != 0.

    prompt_config: a `PromptSchedulerConfig` to choose the prompts generated each round from a larger
    candidate pool (module docstring; label "variance" | "std"; needs a map-style train_dataset),
    or None (TRL's prompts as sampled).
    prompt_family_column: a dataset column of small non-negative ints (e.g. the source of each
    prompt) that the prompt scheduler uses as the prompt's family, or None.
    """

    def __init__(self, model, reward_funcs=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, scheduler_config: SchedulerConfig | None = None,
                 scheduler_seed: int | None = None, nonfinite_reward: str = "group_min",
                 prompt_config: PromptSchedulerConfig | None = None, prompt_family_column: str | None = None,
                 **kwargs):
        cfg = SchedulerConfig() if scheduler_config is None else scheduler_config
        if not isinstance(cfg, SchedulerConfig):
            fail(_O, "scheduler_config", describe(cfg), "a SchedulerConfig")
        if cfg.gain == "probe":
            fail(_O, "scheduler_config.gain", "'probe'", "batch | self | heldout | auto (the probe gain needs "
                 "rollouts on a fixed probe set, which GRPOTrainer does not generate)")
        check_choice(_O, "nonfinite_reward", nonfinite_reward, NONFINITE_REWARD)
        if prompt_config is not None and not isinstance(prompt_config, PromptSchedulerConfig):
            fail(_O, "prompt_config", describe(prompt_config), "a PromptSchedulerConfig or None")
        if prompt_config is not None and prompt_config.label == "gain":
            fail(_O, "prompt_config.label", "'gain'", "variance | std (groups are labelled by their rewards)")
        if prompt_family_column is not None and not isinstance(prompt_family_column, str):
            fail(_O, "prompt_family_column", describe(prompt_family_column), "a column name or None")
        check_int(_O, "scheduler_seed", scheduler_seed, 0, allow_none=True)
        if args is not None and getattr(args, "use_vllm", False) and args.vllm_importance_sampling_correction:
            fail(_O, "args.vllm_importance_sampling_correction", "True with use_vllm=True",
                 "False (its per-token ratios are not kept for reused rollouts)")
        for name in ("tools", "environment_factory", "rollout_func"):
            if kwargs.get(name) is not None:
                fail(_O, name, describe(kwargs[name]), "None (tool masks and custom rollouts are not supported)")
        if isinstance(processing_class, ProcessorMixin):
            fail(_O, "processing_class", describe(processing_class),
                 "a text tokenizer (multimodal inputs are not supported)")
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if self.beta != 0.0 and self.ref_model is None:
            fail(_O, "args.beta", f"{self.beta} with a PEFT model (no separate reference model)",
                 "beta = 0, or a model with a reference copy")
        seed = self.args.seed if scheduler_seed is None else scheduler_seed
        self.cbs = RankScheduler(Scheduler(cfg, seed=seed))
        self.cbs_nonfinite_reward = nonfinite_reward
        self.cbs_prompts = None if prompt_config is None else PromptScheduler(prompt_config, seed=seed)
        self.cbs_prompt_family_column = prompt_family_column
        self._cbs_prompt_choice = None  # this round's PromptChoice, until its groups are scored
        self._cbs_prompt_seed = seed
        if self.cbs_prompts is not None and not (hasattr(self.train_dataset, "__getitem__")
                                                 and hasattr(self.train_dataset, "__len__")):
            fail(_O, "train_dataset", describe(self.train_dataset),
                 "a map-style dataset with prompt_config (candidates are drawn from it by index)")
        # rows_chosen: train rows the scheduler gave this rank; rows_trained: real rows that went
        # through the loss (x num_iterations); padding_rows: zero-mask rows added to keep ranks in step.
        self.cbs_counters = {"rounds": 0, "rows_chosen": 0, "rows_trained": 0, "rows_reused": 0, "padding_rows": 0}
        self.cbs_last_step = None  # the last RankStep (for inspection)
        self._cbs_rewards = None  # (rewards_per_func, completion_ids_list) of the batch being scored
        # Last round, awaiting what the next generation reports: {"step": RankStep, "clip": [rows]
        # clipped-token fractions, "rows": (fresh rows, reused rows) for the per-arm gains or None}.
        self._cbs_pending = None
        self._cbs_capture = None

    @property
    def scheduler(self) -> Scheduler:
        return self.cbs.scheduler

    # ---------------------------------------------------------------- hooks into TRL
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._cbs_rewards = (rewards_per_func, completion_ids_list)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if self.cbs_prompts is not None and self.model.training:
            inputs = self._cbs_choose_prompts(inputs)
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out  # evaluation: every completion counts
        return self._cbs_schedule(out)

    def _compute_loss(self, model, inputs):
        rows = inputs.get("cbs_row")
        clip = rows is not None and self.model.training and "old_per_token_logps" in inputs and \
            self.loss_type in _CLIPPED_LOSSES
        self._cbs_capture = [] if clip else None
        try:
            loss = super()._compute_loss(model, inputs)
            captured = self._cbs_capture
        finally:
            self._cbs_capture = None
        if rows is None or not self.model.training:
            return loss
        if captured:
            self._cbs_clip_fraction(inputs, captured[0])
        n, k = rows.numel(), int((rows >= 0).sum())
        self.cbs_counters["rows_trained"] += k
        if self.loss_type in _ROW_MEAN_LOSSES and 0 < k < n:
            loss = loss * (n / k)
        return loss

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._cbs_capture is not None:  # inside _compute_loss: the loss's own log-probs
            self._cbs_capture.append(out[0].detach())
        return out

    def _cbs_clip_fraction(self, inputs: dict, logps: torch.Tensor) -> None:
        """Each row's fraction of clipped tokens in this update, as TRL's clip_ratio metrics count
        them: a feature of the stored rollout, recorded at the next generation."""
        mask = inputs["completion_mask"].float()
        adv = inputs["advantages"].reshape(-1, 1)
        log_ratio = logps.float() - inputs["old_per_token_logps"].float()
        if self.importance_sampling_level == "sequence":
            log_ratio = ((log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0))
        coef = torch.exp(log_ratio)
        clipped = ((coef < 1 - self.epsilon_low) & (adv < 0)) | ((coef > 1 + self.epsilon_high) & (adv > 0))
        frac = (clipped.float().expand_as(mask) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        rows = inputs["cbs_row"]
        keep = rows >= 0
        self._cbs_pending["clip"][rows[keep].cpu()] = frac[keep].detach().cpu()

    # ---------------------------------------------------------------- prompt choice
    def _cbs_candidates(self, budget: int) -> list[dict]:
        """The round's extra candidates: dataset rows drawn by (seed, prompt round) alone."""
        extra = self.cbs_prompts.config.pool_size(budget) - budget
        g = torch.Generator().manual_seed(self._cbs_prompt_seed * 1_000_003 + self.cbs_prompts.round)
        return [self.train_dataset[int(i)] for i in torch.randint(len(self.train_dataset), (extra,), generator=g)]

    def _cbs_choose_prompts(self, inputs: list[dict]) -> list[dict]:
        """This rank's slice of the rows to generate for: the prompt scheduler's pick of P prompts
        among the round's P sampled ones and the extra candidates (the same pick on every rank)."""
        from accelerate.utils import gather_object

        g, n = self.num_generations, len(inputs)
        rows = gather_object(list(inputs)) if self.accelerator.num_processes > 1 else list(inputs)
        if len(rows) % g:
            fail(_O, "generation batch", f"{len(rows)} rows", f"a multiple of num_generations={g}")
        incoming = rows[::g]  # TRL's sampler: each prompt's rows are consecutive
        budget = len(incoming)
        cand = incoming + self._cbs_candidates(budget)
        keys = torch.tensor([prompt_key(p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str))
                             for p in (r["prompt"] for r in cand)], dtype=torch.int64)
        col = self.cbs_prompt_family_column
        families = None
        if col is not None:
            if any(col not in r for r in cand):
                fail(_O, "prompt_family_column", repr(col), "a column of the training dataset")
            families = torch.tensor([r[col] for r in cand], dtype=torch.int64)
        choice = self.cbs_prompts.choose(keys, budget, families=families)
        self._cbs_prompt_choice = choice
        chosen = [cand[i] for i in choice.chosen.tolist() for _ in range(g)]
        rank = self.accelerator.process_index
        return chosen[rank * n:(rank + 1) * n]

    def _cbs_observe_prompts(self, reward: torch.Tensor) -> None:
        """Label this round's prompt choice with its groups' rewards (all ranks, [P * G])."""
        choice, self._cbs_prompt_choice = self._cbs_prompt_choice, None
        r = reward.detach().double().cpu().reshape(-1, self.num_generations)
        bad = ~torch.isfinite(r)
        fill = torch.zeros_like(r)
        if self.cbs_nonfinite_reward == "group_min":
            low = torch.where(bad, torch.inf, r).amin(1, keepdim=True)
            fill = torch.where(torch.isfinite(low), low, 0.0).expand_as(r)
        r = torch.where(bad, fill, r)
        self.cbs_prompts.observe(choice, r.flatten(), self.num_generations)
        metrics = self._metrics["train"]
        for k, v in self.cbs_prompts.stats().items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                metrics[f"cbs_prompts/{k}"].append(float(v))

    # ---------------------------------------------------------------- one round
    def _cbs_schedule(self, out: dict) -> dict:
        unknown = sorted(k for k, v in out.items() if v is not None and k not in _KNOWN_KEYS)
        if unknown:
            fail(_O, "generation batch", f"fields {unknown}",
                 "text completions without tool masks or multimodal inputs (not supported)")
        if self._cbs_rewards is None:
            fail(_O, "generation batch", "no rewards captured from _calculate_rewards", "TRL's scoring path")
        rewards_per_func, ids_list = self._cbs_rewards
        self._cbs_rewards = None
        if self._cbs_pending is not None:
            self._cbs_report_pending()

        device = self.accelerator.device
        n = out["completion_ids"].shape[0]
        rank = self.accelerator.process_index
        with torch.no_grad():
            logps, entropy = self._cbs_logps(self.model, out["prompt_ids"], out["prompt_mask"],
                                             out["completion_ids"], out["completion_mask"], entropy=True)
        behaviour = out.get("old_per_token_logps", logps).float()
        # TRL's reward: weighted sum over reward functions, NaN where none scored the completion.
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        reward = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        reward[unscorable] = float("nan")
        reward_all = reward
        reward = reward[rank * n:(rank + 1) * n].float().to(device)
        # TRL's sampler: each prompt's G completions are consecutive in the generation batch, and each
        # process holds a contiguous slice of it (a group may straddle two processes).
        group_ids = (rank * n + torch.arange(n, device=device)) // self.num_generations
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        truncated = torch.tensor([len(ids) == 0 or ids[-1] not in eos_and_pad for ids in ids_list], device=device)
        batch = RolloutBatch.from_padded(
            behaviour, out["completion_mask"], reward, group_ids=group_ids, entropy=entropy.float(),
            truncated=truncated, max_response_len=self.max_completion_length, allow_empty_rollouts=True,
            mask_nonfinite=True, nonfinite_reward=self.cbs_nonfinite_reward)
        if self._cbs_prompt_choice is not None:
            self._cbs_observe_prompts(reward_all)
        rows = self._cbs_rows(out, behaviour, [len(ids) for ids in ids_list])
        rstep = self.cbs.select(batch, group_ids=group_ids, advantage=out["advantages"].float(), payload=rows)
        self._cbs_pending = {"step": rstep, "clip": torch.zeros(rstep.num_rows),
                             "rows": None if self.scheduler.config.gain == "batch" else
                             (rows, list(rstep.reused_payload))}
        self.cbs_last_step = rstep
        emitted = self._cbs_emit(out, rstep, rows)
        self._cbs_log(rstep, emitted)
        return emitted

    def _cbs_rows(self, out: dict, behaviour: torch.Tensor, lengths: list[int]) -> list[dict]:
        """Each local rollout as the unpadded tensors that retrain it (kept on the CPU)."""
        keys = ["sampling_per_token_logps"] if "sampling_per_token_logps" in out else []
        rows = []
        for i, L in enumerate(lengths):
            r = {"prompt": out["prompt_ids"][i][out["prompt_mask"][i].bool()].cpu(),
                 "completion": out["completion_ids"][i, :L].cpu(), "mask": out["completion_mask"][i, :L].cpu(),
                 "logps": behaviour[i, :L].cpu()}
            for k in keys:
                r[k] = out[k][i, :L].float().cpu()
            rows.append(r)
        return rows

    def _cbs_pad_row(self, like: dict) -> dict:
        """A zero-mask row (one prompt token attended, so no attention row is fully masked)."""
        p = self._tokenizer.pad_token_id
        row = {"prompt": torch.tensor([p]), "completion": torch.tensor([p]), "mask": torch.tensor([0]),
               "logps": torch.zeros(1)}
        for k in like:
            row.setdefault(k, torch.zeros(1))
        return row

    def _cbs_padded(self, rows: list[dict]) -> dict:
        """Prompts left-padded, completions and their per-token values right-padded, on the device."""
        p, m, dev = self._tokenizer.pad_token_id, self.pad_to_multiple_of, self.accelerator.device
        right = lambda key, value: pad([r[key] for r in rows], padding_value=value, padding_side="right",
                                       pad_to_multiple_of=m).to(dev)
        out = {"prompt_ids": pad([r["prompt"] for r in rows], padding_value=p, padding_side="left",
                                 pad_to_multiple_of=m).to(dev),
               "prompt_mask": pad([torch.ones_like(r["prompt"]) for r in rows], padding_value=0,
                                  padding_side="left", pad_to_multiple_of=m).to(dev),
               "completion_ids": right("completion", p), "completion_mask": right("mask", 0)}
        for key in rows[0]:
            if key not in ("prompt", "completion", "mask"):
                out[key] = right(key, 0.0)
        return out

    def _cbs_emit(self, out: dict, rstep, rows: list[dict]) -> dict:
        """This rank's train rows: kept fresh ones, then the reused ones it owns, then padding."""
        fresh = rstep.fresh_local.tolist()
        train = [rows[i] for i in fresh] + list(rstep.reused_payload)
        spg = self.args.steps_per_generation
        target = max(spg, math.ceil(max(rstep.rows_per_rank) / spg) * spg)
        n_real = len(train)
        train += [self._cbs_pad_row(rows[0])] * (target - n_real)
        t = self._cbs_padded(train)
        dev = self.accelerator.device
        emitted = {k: t[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
        emitted["advantages"] = torch.cat([rstep.train_advantage.float(), torch.zeros(target - n_real)]).to(dev)
        if "old_per_token_logps" in out:
            emitted["old_per_token_logps"] = t["logps"]
        if "sampling_per_token_logps" in out:
            emitted["sampling_per_token_logps"] = t["sampling_per_token_logps"]
        if "ref_per_token_logps" in out:
            emitted["ref_per_token_logps"] = self._cbs_ref_logps(out, fresh, t, n_real)
        # The dapo/cispo/vespo normaliser: loss tokens of the emitted rows, over all processes.
        emitted["num_items_in_batch"] = all_reduce_sum(emitted["completion_mask"].sum().to(torch.int64))
        # Each row's position among this rank's train rows (-1: padding).
        emitted["cbs_row"] = torch.where(torch.arange(target) < n_real, torch.arange(target), -1).to(dev)
        self.cbs_counters["padding_rows"] += target - n_real
        return emitted

    def _cbs_ref_logps(self, out: dict, fresh: list[int], t: dict, n_real: int) -> torch.Tensor:
        """Reference log-probs: TRL's for the fresh rows, one no-grad forward for the reused ones."""
        ref = torch.zeros_like(t["logps"])
        width = min(ref.shape[1], out["ref_per_token_logps"].shape[1])
        if fresh:
            ref[: len(fresh), :width] = out["ref_per_token_logps"][fresh, :width].float()
        reused = slice(len(fresh), n_real)
        if n_real > len(fresh):
            with torch.no_grad():
                r, _ = self._cbs_logps(self.ref_model, t["prompt_ids"][reused], t["prompt_mask"][reused],
                                       t["completion_ids"][reused], t["completion_mask"][reused])
            ref[reused] = r.float()
        return ref * t["completion_mask"]

    def _cbs_logps(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, entropy: bool = False):
        """Per-token log-probs (and entropies) of the completions, as TRL's loss computes them."""
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, ent, _ = self._get_per_token_logps_and_entropies(
                model, torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1), completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size, compute_entropy=entropy)
        return logps, ent

    def _cbs_report_pending(self) -> None:
        """Last round's clip ratios, and its per-arm gains: each row's mean token log ratio under
        the updated policy (one no-grad forward). Collectives: every rank calls this."""
        pending, self._cbs_pending = self._cbs_pending, None
        rstep = pending["step"]
        self.cbs.record_clip_ratio(rstep, pending["clip"])
        if pending["rows"] is None:
            return
        fresh_rows, reused_rows = pending["rows"]
        rows = fresh_rows + reused_rows
        ratio = torch.zeros(len(rows), dtype=torch.float64)
        if rows:
            t = self._cbs_padded(rows)
            with torch.no_grad():
                after, _ = self._cbs_logps(self.model, t["prompt_ids"], t["prompt_mask"], t["completion_ids"],
                                           t["completion_mask"])
            mask = t["completion_mask"].double()
            diff = torch.nan_to_num((after.double() - t["logps"].double()) * mask, nan=0.0, posinf=0.0, neginf=0.0)
            ratio = (diff.sum(1) / mask.sum(1).clamp_min(1.0)).cpu()
        self.cbs.observe_log_ratio(rstep, ratio[: len(fresh_rows)], ratio[len(fresh_rows):])

    def _cbs_log(self, rstep, emitted: dict) -> None:
        c = self.cbs_counters
        c["rounds"] += 1
        c["rows_chosen"] += rstep.num_rows
        c["rows_reused"] += int(rstep.reused_arm_ids.numel())
        metrics = self._metrics["train"]
        stats = self.scheduler.stats()
        for k in _LOGGED_STATS:
            if isinstance(stats[k], (int, float)) and math.isfinite(stats[k]):
                metrics[f"cbs/{k}"].append(float(stats[k]))
        metrics["cbs/rows_trained_per_generation"].append(float(sum(rstep.rows_per_rank)))
        metrics["cbs/rows_generated_per_generation"].append(float(rstep.step.batch.num_rollouts))
        if "cbs_row" in emitted:
            metrics["cbs/padding_rows"].append(float(int((emitted["cbs_row"] < 0).sum())))

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        out_dir = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(out_dir, exist_ok=True)
        rank = self.accelerator.process_index
        if self.accelerator.is_main_process:
            _atomic_save(self.cbs.state_dict(), os.path.join(out_dir, SCHEDULER_FILE))
            if self.cbs_prompts is not None:
                _atomic_save(self.cbs_prompts.state_dict(), os.path.join(out_dir, PROMPTS_FILE))
        _atomic_save({"local": self.cbs.local_state_dict(), "counters": dict(self.cbs_counters)},
                     os.path.join(out_dir, _RANK_FILE.format(rank)))
        # A pickled ScheduleStep (our own classes): loaded with weights_only=False below.
        _atomic_save({"pending": self._cbs_pending}, os.path.join(out_dir, _PENDING_FILE.format(rank)))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        rank = self.accelerator.process_index
        paths = [os.path.join(checkpoint, f) for f in (SCHEDULER_FILE, _RANK_FILE.format(rank),
                                                         _PENDING_FILE.format(rank))]
        missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if missing:
            fail(_O, "resume_from_checkpoint", f"{checkpoint} without {missing}",
                 "a checkpoint written by CBSGRPOTrainer with as many processes")
        self.cbs.load_state_dict(torch.load(paths[0], weights_only=True))
        local = torch.load(paths[1], weights_only=True)
        self.cbs.load_local_state_dict(local["local"])
        self.cbs_counters = dict(local["counters"])
        self._cbs_pending = torch.load(paths[2], weights_only=False)["pending"]
        if self.cbs_prompts is not None:
            path = os.path.join(checkpoint, PROMPTS_FILE)
            if not os.path.isfile(path):
                fail(_O, "resume_from_checkpoint", f"{checkpoint} without {PROMPTS_FILE}",
                     "a checkpoint written with a prompt_config")
            self.cbs_prompts.load_state_dict(torch.load(path, weights_only=True))
