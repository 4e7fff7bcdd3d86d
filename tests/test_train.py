"""The RLVR loop end to end on a tiny policy: each optimizer, resume equivalence, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rollout_bandits.bandit.scheduler import SchedulerConfig
from rollout_bandits.trainer.loop import CHECKPOINT, METRICS, TrainConfig, load_checkpoint, train
from rollout_bandits.trainer.losses import LossConfig
from rollout_bandits.trainer.policy import PolicyConfig

DECISIONS = ("reward", "pass_rate", "loss", "trained_fresh", "trained_reused", "selected_arms", "generated")


def tiny(out_dir, **over) -> TrainConfig:
    kw = dict(
        steps=3, prompts_per_step=4, group_size=4, warmup_steps=4, eval_every=3, eval_problems=3,
        checkpoint_every=1, out_dir=str(out_dir), tasks=("add", "parity", "mod"),
        verifier_noise=0.3,  # mixed rewards (non-zero advantages) even for an untrained policy
        policy=PolicyConfig(hidden=32, n_layers=1, n_heads=2),
        scheduler=SchedulerConfig(window_rounds=2),
    )
    kw.update(over)
    return TrainConfig(**kw)


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo"])
def test_three_steps_with_each_optimizer_and_the_scheduler(tmp_path, loss):
    res = train(tiny(tmp_path, loss=LossConfig(name=loss)), progress=False)
    assert [m["step"] for m in res.metrics] == [1, 2, 3]
    assert all(m["loss"] != 0.0 for m in res.metrics)  # the policy was updated every round
    assert all(m["trained_fresh"] > 0 for m in res.metrics)
    assert sum(m["trained_reused"] for m in res.metrics) > 0  # the window fed reuse
    assert res.metrics[-1]["scheduler"]["observed_arms"] > 0  # gains reached the learner
    assert set(res.pass_rate_after) == {"add", "parity", "mod", "mean"}
    assert all(m["seconds"]["schedule"] > 0 for m in res.metrics)
    lines = [json.loads(x) for x in open(tmp_path / METRICS)]
    assert [x["step"] for x in lines] == [0, 1, 2, 3] and "eval" in lines[0] and "eval" in lines[-1]


@pytest.mark.parametrize("policy", ["keep_all", "pods", "dapo_filter", "reuse_fifo", "random_k"])
def test_baselines_run_in_the_same_loop(tmp_path, policy):
    res = train(tiny(tmp_path, steps=2, scheduler=SchedulerConfig(policy=policy, window_rounds=2)), progress=False)
    assert len(res.metrics) == 2


@pytest.mark.parametrize("gain", ["batch", "probe", "heldout"])
def test_gain_signals_run_in_the_loop(tmp_path, gain):
    res = train(tiny(tmp_path, scheduler=SchedulerConfig(gain=gain, window_rounds=2)), progress=False)
    assert res.metrics[-1]["scheduler"]["observed_arms"] > 0


def test_resume_makes_the_same_decisions(tmp_path):
    straight = train(tiny(tmp_path / "a", steps=4), progress=False)
    first = train(tiny(tmp_path / "b", steps=4), progress=False, stop_after=2)
    assert first.interrupted and len(first.metrics) == 2
    resumed = train(tiny(tmp_path / "b", steps=4), resume=True, progress=False)
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
    for a, b in zip(straight.metrics, resumed.metrics):
        for key in DECISIONS:
            assert a[key] == b[key], (a["step"], key)
    sa = load_checkpoint(os.path.join(tmp_path / "a", CHECKPOINT))["model"]
    sb = load_checkpoint(os.path.join(tmp_path / "b", CHECKPOINT))["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    lines = [json.loads(x)["step"] for x in open(tmp_path / "b" / METRICS)]
    assert lines == [0, 1, 2, 3, 4]


def test_existing_checkpoint_is_never_overwritten(tmp_path):
    train(tiny(tmp_path, steps=1), progress=False)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(tiny(tmp_path, steps=1), progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        train(tiny(tmp_path), resume=True, progress=False)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        train(tiny(tmp_path), resume=True, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a checkpoint"


def test_bad_config_values():
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="TrainConfig.tasks"):
        TrainConfig(tasks=("addition",))
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=-1.0)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rollout_bandits.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--steps", "0"], "TrainConfig.steps"),
    (["--steps", "three"], "--steps"),
    (["--loss.name", "ppo"], "LossConfig.name"),
    (["--policy.model-path", "/nonexistent/model"], "PolicyConfig.model_path"),
    (["--config", "/nonexistent.json"], "config.file"),
    (["--resume", "--out-dir", "nowhere"], "does not exist"),
], ids=["zero-steps", "not-a-number", "unknown-loss", "missing-model", "missing-config", "missing-checkpoint"])
def test_cli_bad_input_is_one_clear_line(tmp_path, args, needle):
    out = _cli("train", "--warmup-steps", "0", *args, cwd=tmp_path)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in out.stderr, out.stderr


def test_cli_train_with_config_file_writes_plot_and_summary(tmp_path):
    cfg = {"steps": 2, "prompts_per_step": 3, "group_size": 4, "warmup_steps": 2, "eval_problems": 2,
           "tasks": ["add"], "policy": {"hidden": 32, "n_layers": 1, "n_heads": 2}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    out = _cli("train", "--config", "c.json", "--out-dir", "r", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "learning_curve.png").stat().st_size > 0
    assert "held-out pass rate" in out.stdout


def _hf_checkpoint(path):
    """A local checkpoint with a Hugging Face tokenizer (char-level, built offline) beside the model."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rollout_bandits.trainer.policy import build_policy
    from rollout_bandits.trainer.tokenizer import DEFAULT_CHARS

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(DEFAULT_CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                 unk_token="<unk>")
    model, _ = build_policy(PolicyConfig(hidden=32, n_layers=1, n_heads=2))
    model.save_pretrained(path)
    hf.save_pretrained(path)
    return str(path)


def test_local_checkpoint_with_a_hugging_face_tokenizer_trains(tmp_path):
    ckpt = _hf_checkpoint(tmp_path / "model")
    cfg = tiny(tmp_path / "run", steps=2, warmup_steps=0, policy=PolicyConfig(model_path=ckpt))
    res = train(cfg, progress=False)
    assert len(res.metrics) == 2 and all(m["trained_fresh"] > 0 for m in res.metrics)
    with pytest.raises(ValueError, match="warmup_steps"):
        train(tiny(tmp_path / "run2", policy=PolicyConfig(model_path=ckpt)), progress=False)


def test_resume_can_extend_a_finished_run(tmp_path):
    train(tiny(tmp_path, steps=2), progress=False)
    res = train(tiny(tmp_path, steps=3), resume=True, progress=False)
    assert [m["step"] for m in res.metrics] == [1, 2, 3]
    with pytest.raises(ValueError, match="steps"):
        train(tiny(tmp_path, steps=1), resume=True, progress=False)


def test_mini_batches_take_one_step_each_and_keep_resume_exact(tmp_path):
    # Verifier noise makes rewards mixed (so advantages non-zero) even for an untrained policy.
    cfg = dict(steps=3, mini_batch_rollouts=5, verifier_noise=0.3,
               scheduler=SchedulerConfig(window_rounds=2, gain="heldout"))
    straight = train(tiny(tmp_path / "a", **cfg), progress=False)
    assert all(m["trained_fresh"] > 0 for m in straight.metrics)
    adam = next(iter(load_checkpoint(os.path.join(tmp_path / "a", CHECKPOINT))["optimizer"]["state"].values()))
    assert int(adam["step"]) > 3  # more than one optimizer step per round
    train(tiny(tmp_path / "b", **cfg), progress=False, stop_after=1)
    resumed = train(tiny(tmp_path / "b", **cfg), resume=True, progress=False)
    for a, b in zip(straight.metrics, resumed.metrics):
        for key in DECISIONS:
            assert a[key] == b[key], (a["step"], key)
    with pytest.raises(ValueError, match="mini_batch_rollouts"):
        TrainConfig(mini_batch_rollouts=-1)
