"""The RLVR loop end to end on a tiny policy: each optimizer, resume equivalence, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

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


# ------------------------------------------------------------ issue 14: the run directory
def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_config_file_string_never_overwrites_a_run(tmp_path, capsys, monkeypatch):
    from rollout_bandits.cli import main

    monkeypatch.chdir(tmp_path)
    train(tiny(tmp_path / "run", steps=1), progress=False)
    before = _snapshot(tmp_path)
    bad = [{"overwrite": "false"}, {"out_dir": 5}, {"out_dir": ""}, {"verifier_noise": "x"},
           {"probe_fraction": "x"}, {"tasks": 5}, {"num_threads": -3}, {"seed": -1}, {"max_grad_norm": 0},
           {"steps": "3"}, {"policy": {"hidden": "64"}}, {"scheduler": 5}, {"loss": {"nme": "grpo"}}]
    for values in bad:
        (tmp_path / "c.json").write_text(json.dumps({"out_dir": "run", **values}))
        before["c.json"] = (tmp_path / "c.json").read_bytes()
        code = main(["train", "--config", "c.json", "--overwrite", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ": found " in err[0], (values, err)
        assert _snapshot(tmp_path) == before, values  # nothing on disk changed


def test_one_writer_per_run_directory(tmp_path):
    from rollout_bandits.trainer.rundir import RunLock

    with RunLock(str(tmp_path), log=lambda *_: None):
        with pytest.raises(ValueError, match=rf"in use by pid {os.getpid()} on "):
            train(tiny(tmp_path, steps=1), progress=False)
    assert not (tmp_path / METRICS).exists()
    train(tiny(tmp_path, steps=1), progress=False)  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead), "host": "h", "started": "then"}))
    logs = []
    train(tiny(tmp_path, steps=1), progress=False, log=logs.append)
    assert any(f"taking over the lock of pid {dead}" in x for x in logs), logs
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly


def _cli_process(tmp_path, *args) -> subprocess.Popen:
    """`python -m rollout_bandits.cli ARGS` in tmp_path, with Ctrl-C (SIGINT) at its default: a child
    inherits an ignored SIGINT from its parent (some pytest-xdist workers end up ignoring it after
    earlier tests), and a Python started that way never sees KeyboardInterrupt."""
    return subprocess.Popen([sys.executable, "-m", "rollout_bandits.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Ctrl-C the child and collect its output; a child that does not stop is killed (never left
    running after the test) and the test fails."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def _long_run(tmp_path, checkpoint_every, *flags):
    """A `train` subprocess of 400 tiny steps in tmp_path/r (stopped by the test)."""
    cfg = {"steps": 400, "prompts_per_step": 2, "group_size": 2, "warmup_steps": 0, "eval_every": 400,
           "eval_problems": 1, "checkpoint_every": checkpoint_every, "tasks": ["add"],
           "policy": {"hidden": 16, "n_layers": 1, "n_heads": 2}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    return _cli_process(tmp_path, "train", "--config", "c.json", "--out-dir", "r", *flags)


def test_two_processes_on_one_run_directory(tmp_path):
    """A live `train` holds the directory: a second one (here `--resume`) is refused, naming it."""
    first = _long_run(tmp_path, 1, "--no-progress")
    try:
        for _ in range(600):  # wait for its first checkpoint
            if (tmp_path / "r" / CHECKPOINT).exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        second = _cli("train", "--resume", "--out-dir", "r", "--no-progress", cwd=tmp_path)
        assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr, second.stderr
    finally:
        _, err = _interrupt(first)
    assert first.returncode == 130, err
    steps = [json.loads(x)["step"] for x in open(tmp_path / "r" / METRICS)]
    assert steps == sorted(set(steps))  # one writer: no interleaved duplicate steps


def test_metrics_of_a_run_without_checkpoint_are_not_silently_replaced(tmp_path):
    (tmp_path / METRICS).write_text('{"step": 0}\n')
    with pytest.raises(ValueError, match="stopped before its first checkpoint"):
        train(tiny(tmp_path, steps=1), progress=False)
    assert (tmp_path / METRICS).read_text() == '{"step": 0}\n'
    logs = []
    train(tiny(tmp_path, steps=1), overwrite=True, progress=False, log=logs.append)
    assert any("--overwrite: removed metrics.jsonl" in x for x in logs)
    assert [json.loads(x)["step"] for x in open(tmp_path / METRICS)] == [0, 1]


def _main(capsys, *argv):
    """The CLI in this process: (exit status, stdout, stderr lines)."""
    from rollout_bandits.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, " ".join(out.out.split()), out.err.strip().splitlines()


def test_a_run_directory_that_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="TrainConfig.out_dir: found .*which is a file"):
        train(tiny(tmp_path / "f"), progress=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(capsys, "train", "--out-dir", "f")
    assert code == 2 and len(err) == 1 and "which is a file" in err[0]


def test_resume_with_changed_settings_is_an_error_naming_them(tmp_path):
    train(tiny(tmp_path, steps=2), progress=False, stop_after=1)
    ckpt = (tmp_path / CHECKPOINT).read_bytes()
    changed = tiny(tmp_path, steps=2, lr=0.5, scheduler=SchedulerConfig(policy="keep_all", window_rounds=2))
    with pytest.raises(ValueError, match=r"changed lr 5e-05 -> 0\.5; scheduler\.policy 'cbs' -> 'keep_all'"):
        train(changed, resume=True, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == ckpt
    logs = []
    res = train(tiny(tmp_path, steps=3), resume=True, progress=False, log=logs.append)
    assert "resume: steps 2 -> 3" in logs and [m["step"] for m in res.metrics] == [1, 2, 3]


def test_cli_resume_names_changed_flags_and_extends_with_steps(tmp_path, capsys, monkeypatch):
    cfg = {"steps": 1, "prompts_per_step": 2, "group_size": 2, "warmup_steps": 0, "eval_problems": 1,
           "tasks": ["add"], "policy": {"hidden": 16, "n_layers": 1, "n_heads": 2}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert _main(capsys, "train", "--config", "c.json", "--out-dir", "r", "--no-progress")[0] == 0
    code, _, err = _main(capsys, "train", "--resume", "--out-dir", "r", "--lr", "0.5", "--scheduler.policy",
                         "keep_all")
    assert code == 2 and len(err) == 1 and "lr 5e-05 -> 0.5" in err[0] and "scheduler.policy" in err[0], err
    code, out, _ = _main(capsys, "train", "--resume", "--out-dir", "r", "--steps", "2", "--no-progress")
    assert code == 0 and "resume: steps 1 -> 2" in out
    assert [json.loads(x)["step"] for x in open(tmp_path / "r" / METRICS)] == [0, 1, 2]


def test_run_resume_continues_the_newest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train(tiny(tmp_path / "runs" / "run-20000101-000000", steps=2), progress=False, stop_after=1)
    train(tiny(tmp_path / "runs" / "run-20000101-000001", steps=2), progress=False, stop_after=1)
    (tmp_path / "runs" / "run-20000101-000002").mkdir()  # no checkpoint: not a run to resume
    assert _main(capsys, "run", "--resume", "--no-progress")[0] == 0
    newest = tmp_path / "runs" / "run-20000101-000001"
    assert [json.loads(x)["step"] for x in open(newest / METRICS)] == [0, 1, 2]
    assert [json.loads(x)["step"] for x in open(tmp_path / "runs" / "run-20000101-000000" / METRICS)] == [0, 1]


def test_run_resume_without_a_run_and_a_config_directory_are_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(capsys, "run", "--resume")
    assert code == 2 and len(err) == 1 and "run-*" in err[0]
    code, _, err = _main(capsys, "train", "--config", str(tmp_path))
    assert code == 2 and len(err) == 1 and "a directory" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("when,extra", [
    ("supervised warm-up", ["--warmup-steps", "100000"]),
    ("evaluating the held-out pass rate before RL", ["--warmup-steps", "0", "--eval-problems", "100000"]),
], ids=["warm-up", "first-evaluation"])
def test_ctrl_c_before_the_first_step_is_clean(tmp_path, when, extra):
    proc = _cli_process(tmp_path, "train", "--out-dir", "r", "--no-progress", "--policy.hidden", "16",
                        "--policy.n-layers", "1", "--policy.n-heads", "2", *extra)
    for line in proc.stdout:
        if when in line:
            break
    time.sleep(0.5)
    out, err = _interrupt(proc)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "nothing to save" in " ".join(out.split()) and err.strip() == "rollout-bandits: interrupted"
    assert not (tmp_path / "r" / CHECKPOINT).exists()


def test_ctrl_c_mid_run_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    proc = _long_run(tmp_path, 400)  # with the progress bar
    for _ in range(600):
        if (tmp_path / "r" / METRICS).exists() and len((tmp_path / "r" / METRICS).read_text().splitlines()) > 2:
            break
        time.sleep(0.1)
    out, err = _interrupt(proc)
    assert proc.returncode == 130 and "Traceback" not in err, err
    out = " ".join(out.split())  # rich wraps lines when not on a terminal
    assert "resume with: rollout-bandits train --resume --out-dir r" in out
    assert "'after' is the evaluation at step 0" in out  # the stale evaluation says so
    assert load_checkpoint(str(tmp_path / "r" / CHECKPOINT))["step"] >= 2


# ------------------------------------------------------------ issue 14: checkpoint hygiene
def test_checkpoints_are_fsynced_and_stale_temp_files_removed(tmp_path, monkeypatch):
    stale = tmp_path / f"{CHECKPOINT}.tmp.999999"
    stale.write_bytes(b"half a checkpoint")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    logs = []
    train(tiny(tmp_path, steps=1), overwrite=True, progress=False, log=logs.append)
    assert not stale.exists() and any("checkpoint.pt.tmp.999999" in x for x in logs)
    assert len(synced) >= 2  # the file before the rename, the folder after it
    assert not list(tmp_path.glob("*.tmp.*"))


# ------------------------------------------------------------ issue 14: empty selections
def test_an_empty_selection_is_logged_and_skips_the_update(tmp_path):
    logs = []
    # Groups of one rollout have zero reward variance: the DAPO filter drops every group.
    res = train(tiny(tmp_path, steps=2, group_size=1, scheduler=SchedulerConfig(policy="dapo_filter")),
                progress=False, log=logs.append)
    assert [m["trained_fresh"] + m["trained_reused"] for m in res.metrics] == [0, 0]
    assert sum("selected no rollouts" in x for x in logs) == 2
    assert all(m["loss"] == 0.0 for m in res.metrics)
