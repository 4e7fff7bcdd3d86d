"""The lean RLVR loop, top to bottom in one file.

    draw candidate prompts -> choose the prompts to generate for (prompt scheduler)
             -> generate -> verify -> features + score + select (scheduler or baseline)
             -> policy update -> gain probe -> observe (rollout and prompt schedulers)
             -> (eval, checkpoint)

Every stage is timed; a step's time is the sum of its stages (evaluation and
checkpointing are reported apart). Cost is counted as it is spent: generated and trained
(response) tokens, cumulative, in every metrics record. Checkpoints (see rundir.py: one writer per
run directory, atomic writes) hold the model, optimizer, scheduler (learner +
buffer) and RNG state, so a resumed run makes the same decisions as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rollout_bandits.bandit.gains import ProbeInputs
from rollout_bandits.bandit.prompts import PromptChoice, PromptScheduler, prompt_key
from rollout_bandits.bandit.scheduler import Scheduler, ScheduleStep
from rollout_bandits.batch import RolloutBatch
from rollout_bandits.config import changed_fields
from rollout_bandits.trainer.generation import make_generator, sequence_logprobs
from rollout_bandits.trainer.losses import LOSSES, policy_loss
from rollout_bandits.trainer.policy import (
    build_policy,
    evaluate_pass_rate,
    sft_warmup,
)
from rollout_bandits.trainer.rundir import (
    CHECKPOINT,
    FORMAT,
    METRICS,
    RunLock,
    check_run_dir,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from rollout_bandits.trainer.terminal import StopFlag, progress_bar
from rollout_bandits.trainer.tokenizer import TOKENIZER_FILE, token_ids_api
from rollout_bandits.trainer.train_config import (  # noqa: F401 (re-exported)
    EVAL_SPLITS,
    MAX_SEED,
    SCHEDULING_STAGES,
    STAGES,
    TrainConfig,
    config_from_dict,
)
from rollout_bandits.validation import (
    fail,
)


# --------------------------------------------------------------------- loop
@dataclass
class TrainResult:
    out_dir: str
    pass_rate_before: dict[str, float]
    pass_rate_after: dict[str, float]  # the last evaluation (at step `after_step`)
    metrics: list[dict]
    stage_seconds: dict[str, float]
    interrupted: bool = False
    after_step: int = 0
    steps: int = 0  # the configured number of steps
    eval_set_sizes: dict[str, int] | None = None  # distinct evaluation problems per family (eval_distinct)

    @property
    def scheduling_share(self) -> float:
        total = sum(self.stage_seconds.values())
        return sum(self.stage_seconds[s] for s in SCHEDULING_STAGES) / total if total else 0.0


def _evaluate(model, tok, tasks, config: TrainConfig, eval_sets=None) -> dict[str, float]:
    """Greedy pass rate per family on `config.eval_split` (mean over families under "mean");
    `eval_sets`: fixed distinct problems per family (eval_distinct)."""
    rates = {t.name: evaluate_pass_rate(model, tok, t, n=config.eval_problems, greedy=True, seed=config.seed,
                                        split=config.eval_split,
                                        problems=None if eval_sets is None else eval_sets[t.name])
             for t in tasks}
    rates["mean"] = sum(rates.values()) / len(tasks)
    return rates


def _eval_sets(tasks, config: TrainConfig) -> dict | None:
    """Distinct evaluation problems per family (None: eval_problems i.i.d. draws per evaluation)."""
    if not config.eval_distinct:
        return None
    return {t.name: t.eval_set(config.eval_problems, seed=config.seed, split=config.eval_split, allow_fewer=True)
            for t in tasks}


def _sample_problems(tasks, config: TrainConfig, step: int, n: int | None = None):
    """The step's candidate prompts: a function of (seed, step) alone, so resume needs no sampler
    state. The first k of n draws are the k-draw sample: a larger pool only appends candidates."""
    rng = random.Random(f"prompts:{config.seed}:{step}")
    problems = []
    for _ in range(config.prompts_per_step if n is None else n):
        task = tasks[rng.randrange(len(tasks))]
        problems.append((task, task.sample(1, split="train", seed=rng.getrandbits(48))[0]))
    return problems


def _candidate_pool(tasks, config: TrainConfig, step: int):
    """The round's candidate prompts (the generation budget's worth without a prompt policy)."""
    budget = config.fresh_prompts
    cfg = config.prompts
    return _sample_problems(tasks, config, step, budget if cfg.policy == "none" else cfg.pool_size(budget))


def _choose_prompts(prompt_sched: PromptScheduler, tasks, config: TrainConfig, pool):
    """Let the prompt scheduler pick the prompts to generate for among the candidate pool."""
    budget = config.fresh_prompts
    index = {t.name: i for i, t in enumerate(tasks)}
    choice = prompt_sched.choose(
        torch.tensor([prompt_key(p.prompt) for _, p in pool], dtype=torch.int64), budget,
        families=torch.tensor([index[t.name] for t, _ in pool], dtype=torch.int64),
        lengths=torch.tensor([len(p.prompt) + 1.0 for _, p in pool]))  # char tokens + BOS
    return [pool[int(i)] for i in choice.chosen], choice


def _observe_prompts(prompt_sched: PromptScheduler, choice: PromptChoice, batch: RolloutBatch, plan: ScheduleStep,
                     arm_gains=None) -> None:
    """Report each generated group to the prompt scheduler: rewards, the rollout scheduler's mean
    score of the group (cbs), and for label="gain" the mean per-arm gain of its probed rollouts."""
    gid = batch.group_index().cpu()
    n_groups = batch.num_groups
    sizes = torch.bincount(gid, minlength=n_groups).double()
    scores = None
    if plan.fresh.mean.numel() and bool(plan.fresh.mean.abs().sum() > 0):
        m = plan.fresh.mean.detach().cpu().double()
        scores = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, m) / sizes
    labels = None
    if arm_gains is not None:
        ids, gains = arm_gains
        row = torch.searchsorted(plan.fresh_arm_ids.cpu(), ids.cpu())
        fresh = (row < plan.fresh_arm_ids.numel())
        fresh &= plan.fresh_arm_ids.cpu()[row.clamp_max(plan.fresh_arm_ids.numel() - 1)] == ids.cpu()
        g = gid[row[fresh]]
        tot = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, gains.cpu().double()[fresh])
        cnt = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, torch.ones(g.numel(), dtype=torch.float64))
        labels = torch.where(cnt > 0, tot / cnt.clamp_min(1), torch.full_like(tot, float("nan")))
    prompt_sched.observe(choice, batch.reward, batch.group_offsets.cpu(), labels=labels, rollout_scores=scores)


def _update(model, optimizer, generator, config: TrainConfig, train_set: RolloutBatch, train_prompts, adv,
            reused_mask, pad_id: int, step: int):
    """The round's optimizer steps: one on the whole training set, or one per shuffled mini-batch of
    `mini_batch_rollouts` rollouts (later mini-batches are off-policy by the earlier steps, which the
    clipped ratio against the behaviour log-probs accounts for). Returns (mean loss, the [T] log-probs
    of each row's forward, [N] clip ratios)."""
    rows = train_set.num_rollouts
    size = config.mini_batch_rollouts or rows
    g = torch.Generator().manual_seed(config.seed * 1_000_033 + step)
    chunks = [rows_idx.sort().values for rows_idx in torch.randperm(rows, generator=g).split(size)] \
        if size < rows else [torch.arange(rows)]
    logp_all = torch.empty(train_set.num_tokens)
    clip_ratio = torch.zeros(rows)
    token_rows = train_set.rollout_index().cpu()
    losses = []
    for chunk in chunks:
        part = train_set if chunk.numel() == rows else train_set.take(chunk)
        logp, _ = sequence_logprobs(model, [train_prompts[int(i)] for i in chunk], part.token_ids, part.offsets,
                                    pad_id, config.generation.temperature)
        out = policy_loss(config.loss, logp, part.token_logprobs.float(), adv[chunk], part.offsets,
                          reused=reused_mask[chunk], max_len=config.generation.max_new_tokens)
        if bool(adv[chunk].abs().sum() > 0):
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            generator.sync_weights(model)
        losses.append(float(out.loss.detach()))
        logp_all[torch.isin(token_rows, chunk)] = logp.detach().cpu()
        clip_ratio[chunk] = out.clip_ratio.detach().cpu()
    return sum(losses) / len(losses), logp_all, clip_ratio


def _probe_set(tasks, config: TrainConfig, generator, tok):
    """A fixed set of held-out prompts and their rollouts, for the `probe` gain signal."""
    rng = random.Random(f"probe:{config.seed}")
    problems = [(t, t.sample(1, split="eval", seed=rng.getrandbits(48))[0]) for t in tasks]
    gen = generator.generate([p.prompt for _, p in problems], config.group_size)
    reward = torch.tensor([problems[int(g)][0].is_correct(problems[int(g)][1], txt) * 1.0
                           for g, txt in zip(gen.prompt_index, gen.texts)])
    batch = gen.to_batch(reward)
    prompt_ids = [tok.encode(problems[int(g)][1].prompt, add_bos=True) for g in gen.prompt_index]
    return batch, prompt_ids


def _gain_probe(model, tok, config, plan, batch, logp_train, train_set, prompt_registry, step,
                probe_batch, probe_prompts, probe_logp):
    """Log-probs after the update on a `probe_fraction` of the fresh groups (and every reused
    rollout), for the per-arm gain signals. Rows left out keep their before-update log-probs and
    their arms are not observed this round."""
    temperature = config.generation.temperature
    n_fresh, n_reused = plan.num_fresh_selected, plan.num_reused
    gb = plan.gain_batch
    n = batch.num_rollouts
    # Before the step: fresh rollouts were sampled from it; reused ones were scored by the training
    # forward (after the fresh rows).
    before_lp = batch.token_logprobs.float()
    if n_reused:
        before_lp = torch.cat([before_lp, logp_train[int(train_set.offsets[n_fresh]):]])
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    n_groups = batch.num_groups
    n_probe = max(1, math.ceil(config.probe_fraction * n_groups - 1e-9))
    probed_groups = torch.randperm(n_groups, generator=g)[:n_probe]
    rows = torch.isin(batch.group_index().cpu(), probed_groups)
    rows = torch.cat([rows, torch.ones(gb.num_rollouts - n, dtype=torch.bool)])
    idx = torch.nonzero(rows).flatten()
    sub = gb.take(idx)
    prompt_uids = torch.cat([plan.fresh_prompt_ids] + ([plan.reused.prompt_ids] if n_reused else []))
    with torch.no_grad():
        sub_after, _ = sequence_logprobs(model, [prompt_registry[int(prompt_uids[i])] for i in idx],
                                         sub.token_ids, sub.offsets, tok.pad_id, temperature)
    token_rows = gb.rollout_index().cpu()
    logp_after = before_lp.clone()
    logp_after[rows[token_rows]] = sub_after
    gain_kw = {"logp_after": logp_after, "logp_before": before_lp}
    if config.scheduler.gain == "probe":
        with torch.no_grad():
            p_after, _ = sequence_logprobs(model, probe_prompts, probe_batch.token_ids, probe_batch.offsets,
                                           tok.pad_id, temperature)
        p_before = probe_batch.token_logprobs if probe_logp is None else probe_logp
        gain_kw["probe"] = ProbeInputs(p_before.float(), p_after, probe_batch.offsets, probe_batch.reward,
                                       probe_batch.group_offsets)
        probe_logp = p_after
    return gain_kw, plan.gain_arm_ids[idx], probe_logp


OnStep = Callable[[int, ScheduleStep, RolloutBatch], None]


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, stop_after: int | None = None,
          on_step: OnStep | None = None) -> TrainResult:
    """Run (or resume) training in `config.out_dir`, holding its lock.

    A new run refuses a directory that holds an earlier run's checkpoint or metrics unless
    `overwrite` (which removes them first). Resuming continues the checkpoint there; `config` must
    equal the stored one except `steps`, which may change to extend (or shorten) the run.
    `stop_after` stops (with a checkpoint) after that many steps of this call, as a Ctrl-C would.
    `on_step(step, plan, batch)` sees every round's selection (diagnostics) right after `select`."""
    _check_model_path(config)  # read-only checks before anything is written
    check_run_dir(config.out_dir, resume=resume, overwrite=overwrite)
    os.makedirs(config.out_dir, exist_ok=True)
    with RunLock(config.out_dir, log):
        old = check_run_dir(config.out_dir, resume=resume, overwrite=overwrite)  # again, now alone
        remove_stale_temp_files(config.out_dir, log)
        state = None
        if resume:
            state = load_checkpoint(os.path.join(config.out_dir, CHECKPOINT))
            config = _resume_config(config, state, log)
        for name in old:
            os.remove(os.path.join(config.out_dir, name))
        if old:
            log(f"--overwrite: removed {', '.join(old)} of the earlier run in {config.out_dir}")
        try:
            return _train(config, state, progress, log, stop_after, on_step)
        except KeyboardInterrupt:
            if state is None and not os.path.isfile(os.path.join(config.out_dir, CHECKPOINT)):
                log("interrupted before the first RL step (warm-up or first evaluation): nothing to save")
            raise


def _check_model_path(config: TrainConfig) -> None:
    path = config.policy.model_path
    if path is None:
        return
    if not os.path.isdir(path):
        fail("PolicyConfig", "model_path", f"{path!r}, which does not exist or is not a directory",
             "a local Hugging Face checkpoint folder (nothing is downloaded)")
    if config.warmup_steps and not os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
        fail("TrainConfig", "warmup_steps", f"{config.warmup_steps} for a model_path without the package's "
             "char tokenizer", "0 (the supervised warm-up is for the embedded char-level policy)")


def _resume_config(config: TrainConfig, state: dict, log: Callable[[str], None]) -> TrainConfig:
    """The stored config, with `steps` (the only field a resume may change) from `config`."""
    stored = config_from_dict(state["config"])
    changed = [(k, a, b) for k, a, b in changed_fields(dataclasses.asdict(stored), dataclasses.asdict(config))
               if k not in ("steps", "out_dir")]
    if changed:
        fail("resume", "config", "changed " + "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed),
             "the run's stored config (only steps may change when resuming)")
    if config.steps < state["step"]:
        fail("TrainConfig", "steps", str(config.steps), f"an int >= {state['step']}, the checkpoint's step")
    if config.steps != stored.steps:
        log(f"resume: steps {stored.steps} -> {config.steps}")
    return dataclasses.replace(stored, steps=config.steps, out_dir=config.out_dir)


def _train(config: TrainConfig, state: dict | None, progress: bool, log: Callable[[str], None],
           stop_after: int | None, on_step: OnStep | None) -> TrainResult:
    ckpt_path = os.path.join(config.out_dir, CHECKPOINT)
    metrics_path = os.path.join(config.out_dir, METRICS)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    tasks = config.make_tasks()
    eval_sets = _eval_sets(tasks, config)
    model, hf_or_char_tok = build_policy(config.policy)
    tok = token_ids_api(hf_or_char_tok)  # what generation and the loss forward call
    generator = make_generator(config.generation, model, tok, model_path=config.policy.model_path)
    sched_cfg = config.scheduler
    scheduler = Scheduler(sched_cfg, seed=config.seed)
    prompt_sched = PromptScheduler(config.prompts, seed=config.seed)
    recipe = LOSSES[config.loss.name]

    if state is None:
        if config.warmup_steps:
            log(f"supervised warm-up: {config.warmup_steps} steps on {len(tasks)} task families ...")
            warm = sft_warmup(model, hf_or_char_tok, tasks, steps=config.warmup_steps, lr=config.warmup_lr, seed=config.seed)
            log(f"warm-up done in {warm['seconds']:.0f} s (final loss {warm['losses'][-1]:.3f})")
        n_eval = config.eval_problems if eval_sets is None else \
            "/".join(str(len(eval_sets[t.name])) for t in tasks) + " distinct"
        split = "held-out" if config.eval_split == "eval" else "validation"
        log(f"evaluating the {split} pass rate before RL ({n_eval} problems per family) ...")
        before = _evaluate(model, hf_or_char_tok, tasks, config, eval_sets)
        log(f"{split} pass rate before RL: {before['mean']:.1%}; RL: {config.steps} steps of "
            f"{config.prompts_per_step} prompts x {config.group_size} rollouts, {config.loss.name} + "
            f"{sched_cfg.policy}")
        metrics: list[dict] = []
        start = 0
        prompt_registry: dict[int, list[int]] = {}
        next_prompt_uid = 0
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        probe_batch = probe_prompts = probe_logp = None
        if sched_cfg.gain == "probe":
            probe_batch, probe_prompts = _probe_set(tasks, config, generator, tok)
    else:
        model.load_state_dict(state["model"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("prompt_scheduler") is not None:
            prompt_sched.load_state_dict(state["prompt_scheduler"])
        torch.set_rng_state(state["torch_rng"])
        before, metrics, start = state["pass_rate_before"], state["metrics"], state["step"]
        prompt_registry, next_prompt_uid = state["prompt_registry"], state["next_prompt_uid"]
        probe_batch, probe_prompts = state["probe"] if state["probe"] is not None else (None, None)
        probe_logp = state["probe_logp"]
    # Rewrite the metrics file from what the checkpoint knows: steps after it are redone.
    with open(metrics_path, "w") as f:
        for m in [{"step": 0, "eval": before, "generated": 0, "generated_tokens": 0, "trained_tokens": 0}, *metrics]:
            f.write(json.dumps(m) + "\n")
    model.train()
    stage_seconds = {s: sum(m["seconds"].get(s, 0.0) for m in metrics) for s in STAGES}
    last = metrics[-1] if metrics else {}
    generated, generated_tokens, trained_tokens = (last.get(k, 0) for k in
                                                   ("generated", "generated_tokens", "trained_tokens"))
    after = next((dict(m["eval"]) for m in reversed(metrics) if "eval" in m), dict(before))

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "format": FORMAT, "step": step, "config": dataclasses.asdict(config),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "prompt_scheduler": prompt_sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "pass_rate_before": before, "metrics": metrics, "prompt_registry": prompt_registry,
            "next_prompt_uid": next_prompt_uid,
            "probe": None if probe_batch is None else (probe_batch, probe_prompts), "probe_logp": probe_logp,
        })

    bar = progress_bar(progress, config.steps, start)
    interrupted = False
    with StopFlag(log) as stop:
        try:
            for step in range(start + 1, config.steps + 1):
                sec = dict.fromkeys(STAGES, 0.0)
                clock = time.perf_counter

                t0 = clock()
                pool = _candidate_pool(tasks, config, step)  # drawing problems: part of generation's cost
                t_pool = clock() - t0

                t0 = clock()
                problems, choice = _choose_prompts(prompt_sched, tasks, config, pool)
                sec["prompts"] = clock() - t0

                t0 = clock()
                gen = generator.generate([p.prompt for _, p in problems], config.group_size)
                sec["generate"] = clock() - t0 + t_pool

                t0 = clock()
                noise_rng = random.Random(f"noise:{config.seed}:{step}")
                owner = [problems[int(g)] for g in gen.prompt_index]
                rewards = torch.tensor([t.verify(p, txt, rng=noise_rng) for (t, p), txt in zip(owner, gen.texts)])
                correct = torch.tensor([float(t.is_correct(p, txt)) for (t, p), txt in zip(owner, gen.texts)])
                batch = gen.to_batch(rewards)
                uids = list(range(next_prompt_uid, next_prompt_uid + len(problems)))
                next_prompt_uid += len(problems)
                for uid, (_, p) in zip(uids, problems):
                    prompt_registry[uid] = tok.encode(p.prompt, add_bos=True)
                sec["verify"] = clock() - t0

                t0 = clock()
                plan = scheduler.select(batch, prompt_ids=torch.tensor(uids))
                sec["schedule"] = clock() - t0
                if on_step is not None:
                    on_step(step, plan, batch)
                if plan.num_fresh_selected + plan.num_reused == 0:
                    log(f"step {step}: {sched_cfg.policy} selected no rollouts (of {batch.num_rollouts}); "
                        "update and gain probe skipped")

                t0 = clock()
                n_fresh, n_reused = plan.num_fresh_selected, plan.num_reused
                loss_value, logp_train, step_trained_tokens = 0.0, None, 0
                if n_fresh + n_reused > 0:
                    train_set = plan.train_batch
                    adv = plan.train_advantage_for(recipe.normalize_std).float()  # Dr.GRPO: no std
                    train_prompts = [prompt_registry[int(u)] for u in plan.train_prompt_ids]
                    reused_mask = torch.arange(n_fresh + n_reused) >= n_fresh
                    loss_value, logp_train, clip_ratio = _update(
                        model, optimizer, generator, config, train_set, train_prompts, adv, reused_mask,
                        tok.pad_id, step)
                    scheduler.record_clip_ratio(plan, clip_ratio)
                    step_trained_tokens = train_set.num_tokens
                sec["update"] = clock() - t0

                t0 = clock()
                gain_kw = probed_arms = None
                if sched_cfg.policy == "cbs" and sched_cfg.gain != "batch" and n_fresh + n_reused > 0:
                    gain_kw, probed_arms, probe_logp = _gain_probe(
                        model, tok, config, plan, batch, logp_train, train_set, prompt_registry, step,
                        probe_batch, probe_prompts, probe_logp)
                sec["probe"] = clock() - t0

                t0 = clock()
                arm_gains = None
                if gain_kw is not None:
                    arms = scheduler.gains(plan, **gain_kw)
                    keep = torch.isin(arms.arm_ids, probed_arms)
                    arm_gains = (arms.arm_ids[keep], arms.gains[keep])
                    scheduler.observe(*arm_gains)
                sec["observe"] = clock() - t0

                t0 = clock()
                _observe_prompts(prompt_sched, choice, batch, plan, arm_gains)
                sec["prompts"] += clock() - t0

                # Forget prompts no stored rollout refers to any more.
                live = scheduler.live_prompt_ids()
                oldest = int(live.min()) if live.numel() else next_prompt_uid
                for uid in [u for u in prompt_registry if u < oldest]:
                    del prompt_registry[uid]

                generated += batch.num_rollouts
                generated_tokens += batch.num_tokens
                trained_tokens += step_trained_tokens
                record = {
                    "step": step, "generated": generated, "generated_tokens": generated_tokens,
                    "trained_tokens": trained_tokens, "generated_prompts": len(problems),
                    "reward": float(rewards.mean()),
                    "pass_rate": float(correct.mean()), "loss": loss_value,
                    "trained_fresh": n_fresh, "trained_reused": n_reused,
                    "seconds": sec, "step_seconds": sum(sec.values()),
                    "entropy": float(batch.token_entropy.float().mean()),
                    "response_len": float(batch.lengths.float().mean()), "tokens": batch.num_tokens,
                    "selected_arms": plan.arm_ids.tolist(), "chosen_prompts": choice.chosen.tolist(),
                }
                for s in STAGES:
                    stage_seconds[s] += sec[s]
                if step % config.eval_every == 0 or step == config.steps:
                    t0 = clock()
                    after = _evaluate(model, hf_or_char_tok, tasks, config, eval_sets)
                    record["eval"] = after
                    record["eval_seconds"] = clock() - t0
                record["scheduler"] = _jsonable(scheduler.stats())
                record["prompts"] = _jsonable(prompt_sched.stats())
                metrics.append(record)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                last = step == config.steps
                stopping = stop.requested or (stop_after is not None and step >= start + stop_after)
                if step % config.checkpoint_every == 0 or last or stopping:
                    checkpoint(step)
                bar(step, record, after)
                if stopping and not last:
                    interrupted = True
                    log(f"stopped after step {step}: checkpoint written to {ckpt_path}")
                    break
        except KeyboardInterrupt:
            interrupted = True
            log(f"interrupted mid-step: the checkpoint in {ckpt_path} is intact" if os.path.isfile(ckpt_path)
                else "interrupted mid-step before the first checkpoint: nothing to resume")
        finally:
            bar(None, None, None)
    after_step = next((m["step"] for m in reversed(metrics) if "eval" in m), 0)
    sizes = None if eval_sets is None else {k: len(v) for k, v in eval_sets.items()}
    return TrainResult(config.out_dir, before, after, metrics, stage_seconds, interrupted, after_step, config.steps,
                       sizes)


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, torch.Tensor):
        return d.tolist()
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d
