"""End-to-end RLVR step time on a real local causal LM, stage by stage (`rollout-bandits profile`).

A few steps of the same RLVR round as the training loop (generate -> verify -> features ->
score -> select -> policy update -> gain probe -> learner update) on any local causal LM (a
Hugging Face folder, or a GGUF file in it), with the task families asked as natural-language
questions through the model's chat template (trainer/chat_tasks.py). The scheduling share of a
step is what the scheduler adds to an RLVR step; the toy policy of `make run` cannot show it
honestly, a real model can.

Stage timing without touching the scheduler's hot path: the features are computed here with the
same `rollout_features` call `select` makes and passed in as `contexts`; the learner's `score`
and `observe` are wrapped on this run's learner instance only. "select" is the rest of
`Scheduler.select` (input checks, group top-k, reuse planning, buffer insert) plus
`record_clip_ratio`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from rollout_bandits.bandit.scheduler import Scheduler, SchedulerConfig
from rollout_bandits.config import opt
from rollout_bandits.kernels.rollout_features import rollout_features
from rollout_bandits.trainer.chat_tasks import chat_prompt, end_of_turn_id, is_correct, question
from rollout_bandits.trainer.generation import GenerationConfig, HFGenerator, sequence_logprobs
from rollout_bandits.trainer.losses import LOSSES, LossConfig, policy_loss
from rollout_bandits.trainer.policy import PolicyConfig, build_policy, num_params
from rollout_bandits.trainer.tasks import FAMILIES, MAX_DIFFICULTY, make_task
from rollout_bandits.trainer.tokenizer import CharTokenizer, HFTokenizerIds
from rollout_bandits.validation import (
    check_bool,
    check_choice,
    check_field_types,
    check_float,
    check_int,
    check_str,
    fail,
)

STAGES = ("generation", "reward", "features", "score", "select", "learner_update", "gain_probe",
          "policy_loss", "optimizer_step")
SCHEDULING = ("features", "score", "select", "learner_update", "gain_probe")
SCHEDULER_CORE = ("features", "score", "select", "learner_update")  # without the per-arm gain's forward pass
PROFILE_JSON = "profile.json"
PROFILE_PNG = "profile.png"


@dataclass
class ProfileConfig:
    """`rollout-bandits profile`: a few RLVR steps on a local model, timed stage by stage."""

    model_path: str | None = opt(None, "a local causal LM folder (Hugging Face files, or a GGUF file in it)")
    gguf_file: str | None = opt(None, "a GGUF file inside --model-path (de-quantized by transformers)")
    steps: int = opt(3, "RLVR steps")
    warmup_steps: int = opt(1, "first steps left out of the table (first-call costs); the JSON has all")
    prompts_per_step: int = opt(4, "prompts per step")
    group_size: int = opt(8, "rollouts per prompt")
    max_new_tokens: int = opt(48, "longest reply, in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    lr: float = opt(1e-6, "policy learning rate")
    tasks: tuple[str, ...] = opt((), "task families asked (default: all)")
    difficulty: int = opt(1, "task difficulty")
    dtype: str = opt("float32", "float32 | bfloat16 | float16")
    device: str | None = opt(None, "cpu | cuda (default: cuda when available)")
    threads: int = opt(0, "torch CPU threads (0: torch's choice)")
    seed: int = opt(0, "seed of prompts, sampling and the scheduler")
    out_dir: str = opt("profile", "where profile.json and profile.png go")
    progress: bool = opt(True, "progress bar")
    loss: LossConfig = field(default_factory=LossConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        o = "ProfileConfig"
        check_field_types(self)
        if self.model_path is None:
            fail(o, "model_path", "None", "--model-path DIR, a local model folder (nothing is downloaded)")
        check_str(o, "model_path", self.model_path)
        if not os.path.isdir(self.model_path):
            fail(o, "model_path", f"{self.model_path!r}, which is not a directory", "a local model folder")
        check_str(o, "gguf_file", self.gguf_file, allow_none=True)
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "difficulty"):
            check_int(o, name, getattr(self, name), 1)
        check_int(o, "difficulty", self.difficulty, 1, MAX_DIFFICULTY)
        check_int(o, "warmup_steps", self.warmup_steps, 0, self.steps - 1)
        check_float(o, "temperature", self.temperature, 0.0, lo_open=True)
        check_float(o, "lr", self.lr, 0.0, lo_open=True)
        for t in self.tasks:
            check_choice(o, "tasks", t, tuple(FAMILIES))
        if self.device is not None:
            check_choice(o, "device", self.device, ("cpu", "cuda"))
            if self.device == "cuda" and not torch.cuda.is_available():
                fail(o, "device", "'cuda'", "cpu (no CUDA device is available here)")
        check_int(o, "threads", self.threads, 0, 1024)
        check_int(o, "seed", self.seed, 0, 2**31 - 1)
        check_str(o, "out_dir", self.out_dir)
        check_bool(o, "progress", self.progress)
        PolicyConfig(model_path=self.model_path, gguf_file=self.gguf_file, dtype=self.dtype)  # checks those


@dataclass
class ProfileResult:
    config: dict
    device: str
    model: str
    parameters: int
    load_seconds: float
    step_seconds: list[dict[str, float]]  # per step, every stage
    rollouts_per_step: int
    tokens: list[int]  # response tokens per step
    pass_rate: list[float]  # per step, noiseless verdicts on the replies
    warmup_steps: int

    @property
    def measured(self) -> list[dict[str, float]]:
        return self.step_seconds[self.warmup_steps:]

    def mean_seconds(self) -> dict[str, float]:
        steps = self.measured
        return {s: sum(m[s] for m in steps) / len(steps) for s in STAGES}

    def share(self, stages: tuple[str, ...]) -> float:
        mean = self.mean_seconds()
        total = sum(mean.values())
        return sum(mean[s] for s in stages) / total if total else 0.0

    @property
    def scheduling_share(self) -> float:
        return self.share(SCHEDULING)

    def to_json(self) -> dict:
        mean = self.mean_seconds()
        return {**asdict(self), "stages": list(STAGES), "scheduling_stages": list(SCHEDULING),
                "mean_step_seconds": mean, "mean_step_total": sum(mean.values()),
                "scheduling_share": self.scheduling_share, "scheduler_core_share": self.share(SCHEDULER_CORE)}


class _Clock:
    """Seconds per stage; synchronizes CUDA so a stage's kernels are charged to it. A stage timed
    inside itself counts once."""

    def __init__(self, device: torch.device):
        self.sec = dict.fromkeys(STAGES, 0.0)  # the current step's; replaced at each step
        self.cuda = device.type == "cuda"
        self.active: set[str] = set()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if stage in self.active:
            yield
            return
        self.active.add(stage)
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.sec[stage] += time.perf_counter() - t0
            self.active.discard(stage)


def _time_learner(scheduler: Scheduler, clock: _Clock) -> None:
    """Charge this scheduler's learner calls to "score" and "learner_update" (instance attributes:
    only this run's learner is wrapped)."""
    learner = scheduler.learner
    if learner is None:
        return
    for name, stage in (("score", "score"), ("observe", "learner_update")):
        method = getattr(learner, name)

        def timed(*args, _method=method, _stage=stage, **kwargs):
            with clock(_stage):
                return _method(*args, **kwargs)

        setattr(learner, name, timed)


def chat_token_ids(hf_tokenizer) -> HFTokenizerIds:
    """The loop's token-id API over a chat model's tokenizer: prompts are rendered chat templates
    (they carry their own start tokens, so no BOS is added) and a reply ends at the template's
    end-of-turn token."""
    tok = HFTokenizerIds(hf_tokenizer)
    tok.bos_id = None
    eot = end_of_turn_id(hf_tokenizer)
    if eot is not None:
        tok.eos_id = eot
    return tok


def profile(config: ProfileConfig, log: Callable[[str], None] = print) -> ProfileResult:
    """Run `config.steps` RLVR steps and time every stage of each."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    model, hf_tok = build_policy(PolicyConfig(model_path=config.model_path, gguf_file=config.gguf_file,
                                              dtype=config.dtype))
    if isinstance(hf_tok, CharTokenizer):
        fail("ProfileConfig", "model_path", f"{config.model_path!r} (the embedded char-level policy)",
             "a pretrained model with a Hugging Face tokenizer")
    model.to(device).train()
    load_seconds = time.perf_counter() - t0
    log(f"loaded {config.gguf_file or config.model_path} ({num_params(model) / 1e6:.1f}M parameters) on {device} "
        f"in {load_seconds:.1f} s")
    tok = chat_token_ids(hf_tok)
    generator = HFGenerator(model, tok, GenerationConfig(max_new_tokens=config.max_new_tokens,
                                                         temperature=config.temperature))
    tasks = [make_task(name, difficulty=config.difficulty, seed=config.seed)
             for name in (config.tasks or tuple(FAMILIES))]
    scheduler = Scheduler(config.scheduler, seed=config.seed)
    recipe = LOSSES[config.loss.name]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    steps, tokens, pass_rate = [], [], []
    clock = _Clock(device)
    _time_learner(scheduler, clock)
    bar = _progress(config.progress, config.steps)
    try:
        for step in range(1, config.steps + 1):
            clock.sec = dict.fromkeys(STAGES, 0.0)
            n_tokens, rate = _step(config, step, model, tok, hf_tok, generator, tasks, scheduler, recipe, optimizer,
                                   clock)
            steps.append(clock.sec)
            tokens.append(n_tokens)
            pass_rate.append(rate)
            bar(step, sum(clock.sec.values()), rate)
    finally:
        bar(None, 0.0, 0.0)
    return ProfileResult(
        config=asdict(config), device=_device_name(device), model=config.gguf_file or config.model_path,
        parameters=num_params(model), load_seconds=load_seconds, step_seconds=steps,
        rollouts_per_step=config.prompts_per_step * config.group_size, tokens=tokens, pass_rate=pass_rate,
        warmup_steps=config.warmup_steps,
    )


def _step(config, step, model, tok, hf_tok, generator, tasks, scheduler, recipe, optimizer, clock):
    rng = random.Random(f"profile:{config.seed}:{step}")
    problems = []
    for _ in range(config.prompts_per_step):
        task = tasks[rng.randrange(len(tasks))]
        problems.append((task, task.sample(1, split="train", seed=rng.getrandbits(48))[0]))
    prompts = [chat_prompt(hf_tok, question(p)) for _, p in problems]
    with clock("generation"):
        gen = generator.generate(prompts, config.group_size)
    with clock("reward"):
        owner = [problems[int(g)] for g in gen.prompt_index]
        correct = [is_correct(t, p, text) for (t, p), text in zip(owner, gen.texts)]
        batch = gen.to_batch(torch.tensor(correct, dtype=torch.float32, device=gen.logprobs.device))
        prompt_tokens = [torch.tensor(tok.encode(text), dtype=torch.int64) for text in prompts]
    with clock("features"):
        contexts = rollout_features(batch, scheduler.feature_config, backend=scheduler.config.backend,
                                    validate=False)
    before = dict(clock.sec)
    t0 = time.perf_counter()
    plan = scheduler.select(batch, contexts=contexts, prompt_tokens=prompt_tokens)
    inner = sum(clock.sec[s] - before[s] for s in ("score", "learner_update"))
    clock.sec["select"] += time.perf_counter() - t0 - inner
    if plan.num_selected:
        _update(config, model, tok, plan, recipe, optimizer, scheduler, clock)
    if scheduler.learner is not None and config.scheduler.gain != "batch" and plan.num_selected:
        with clock("gain_probe"):
            gb = plan.gain_batch
            rows = [plan.fresh_prompt_tokens[i] for i in range(gb.num_rollouts - plan.num_reused)]
            rows += list(plan.reused.prompt_tokens) if plan.num_reused else []
            with torch.no_grad():
                logp_after, _ = sequence_logprobs(model, [r.tolist() for r in rows], gb.token_ids, gb.offsets,
                                                  tok.pad_id, config.temperature)
        with clock("learner_update"):
            scheduler.observe_step(plan, logp_after)
    return batch.num_tokens, sum(correct) / len(correct)


def _update(config, model, tok, plan, recipe, optimizer, scheduler, clock) -> None:
    train = plan.train_batch
    with clock("policy_loss"):
        prompts = [t.tolist() for t in plan.train_prompt_tokens]
        logp, _ = sequence_logprobs(model, prompts, train.token_ids, train.offsets, tok.pad_id, config.temperature)
        reused = torch.arange(plan.num_selected) >= plan.num_fresh_selected
        out = policy_loss(config.loss, logp, train.token_logprobs.float().to(logp.device),
                          plan.train_advantage_for(recipe.normalize_std).float().to(logp.device), train.offsets,
                          reused=reused.to(logp.device), max_len=config.max_new_tokens)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
    with clock("optimizer_step"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    t0 = time.perf_counter()
    scheduler.record_clip_ratio(plan, out.clip_ratio)
    clock.sec["select"] += time.perf_counter() - t0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
           f"{os.cpu_count()} cores)"


def _progress(enabled: bool, total: int):
    if not enabled:
        return lambda *a: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"))
    task = prog.add_task("profile", total=total, info="")
    prog.start()

    def update(step, seconds, rate):
        if step is None:
            prog.stop()
            return
        prog.update(task, completed=step, info=f"{seconds:.1f} s/step  pass {rate:.2f}")

    return update


# ------------------------------------------------------------------- outputs
def stage_table(result: ProfileResult):
    """The mean step by stage (a rich Table), with the scheduling share."""
    from rich.table import Table

    mean = result.mean_seconds()
    total = sum(mean.values())
    n = len(result.measured)
    t = Table(title=f"mean RLVR step over {n} step{'s' * (n != 1)} ({result.device})")
    t.add_column("stage")
    t.add_column("ms / step", justify="right")
    t.add_column("share", justify="right")
    for s in STAGES:
        t.add_row(s + (" *" if s in SCHEDULING else ""), f"{mean[s] * 1e3:.1f}", f"{mean[s] / total:.2%}")
    t.add_row("step", f"{total * 1e3:.1f}", "100%", style="bold")
    t.add_row("scheduling (*)", f"{sum(mean[s] for s in SCHEDULING) * 1e3:.1f}", f"{result.scheduling_share:.2%}",
              style="bold")
    t.add_row("  without the gain probe", f"{sum(mean[s] for s in SCHEDULER_CORE) * 1e3:.1f}",
              f"{result.share(SCHEDULER_CORE):.2%}")
    return t


def write_outputs(result: ProfileResult, out_dir: str) -> tuple[str, str]:
    """profile.json and profile.png (mean stage times, scheduling stages marked) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    js, png = os.path.join(out_dir, PROFILE_JSON), os.path.join(out_dir, PROFILE_PNG)
    with open(js + ".tmp", "w") as f:
        json.dump(result.to_json(), f, indent=1)
    os.replace(js + ".tmp", js)
    mean = result.mean_seconds()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    colors = ["tab:orange" if s in SCHEDULER_CORE else "tab:olive" if s in SCHEDULING else "tab:blue"
              for s in STAGES]
    ax.barh(list(STAGES)[::-1], [max(mean[s], 1e-7) * 1e3 for s in STAGES][::-1], color=colors[::-1])
    ax.set(xlabel="ms per step (log scale)", xscale="log",
           title=f"{os.path.basename(result.model)}: mean RLVR step by stage (orange, olive: scheduling)")
    total = sum(mean.values())
    core, probe = sum(mean[s] for s in SCHEDULER_CORE), mean["gain_probe"]
    rest = total - core - probe
    ax2.bar(["step"], [rest], color="tab:blue", label="rest of the step")
    ax2.bar(["step"], [probe], bottom=[rest], color="tab:olive", label=f"gain probe {probe / total:.2%}")
    ax2.bar(["step"], [core], bottom=[rest + probe], color="tab:orange",
            label=f"scheduler core {core / total:.2%}")
    ax2.set(ylabel="seconds per step")
    ax2.set_title(result.device, fontsize=7, wrap=True)
    ax2.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    fig.savefig(png + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(png + ".tmp.png", png)
    return js, png


__all__ = ["PROFILE_JSON", "PROFILE_PNG", "SCHEDULER_CORE", "SCHEDULING", "STAGES", "ProfileConfig", "ProfileResult", "chat_token_ids",
           "profile", "stage_table", "write_outputs"]
