"""The command line: one flag style, every command a subcommand, bad input one clear line."""

import argparse
import re

import pytest

from rollout_bandits.cli import build_parser, main
from rollout_bandits.trainer.generation import GenerationConfig
from rollout_bandits.trainer.loop import TrainConfig
from rollout_bandits.trainer.losses import LossConfig
from rollout_bandits.trainer.policy import PolicyConfig
from rollout_bandits.trainer.tasks import TaskConfig

COMMANDS = ("run", "train", "demo", "sweep", "report", "diagnose", "warmup", "profile")
FLAG = re.compile(r"^--[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)*$")


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_is_a_subcommand_with_one_flag_style():
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    for name, p in subs.items():
        for action in p._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert FLAG.match(flag), (name, flag)  # dashes, dotted nesting, no underscores
                if isinstance(action, argparse.BooleanOptionalAction):
                    assert action.nargs == 0  # booleans are plain switches (--overwrite / --no-overwrite)
    train = {f for a in subs["train"]._actions for f in a.option_strings}
    assert {"--out-dir", "--max-grad-norm", "--scheduler.learner.gamma", "--overwrite", "--no-progress"} <= train
    assert {"--group-size", "--mean-len", "--device"} <= {f for a in subs["demo"]._actions for f in a.option_strings}


def test_no_hidden_module_entry_points():
    import importlib

    for name in ("trainer.policy", "experiments", "experiments.grids", "experiments.runner",
                 "experiments.statistics", "experiments.report", "experiments.diagnose"):
        mod = importlib.import_module(f"rollout_bandits.{name}")
        assert "__main__" not in open(mod.__file__).read(), mod.__name__


@pytest.mark.parametrize("make,field", [
    (lambda: TrainConfig(verifier_noise="x"), "TrainConfig.verifier_noise"),
    (lambda: TrainConfig(probe_fraction="x"), "TrainConfig.probe_fraction"),
    (lambda: TrainConfig(tasks=5), "TrainConfig.tasks"),
    (lambda: TrainConfig(out_dir=5), "TrainConfig.out_dir"),
    (lambda: TrainConfig(out_dir=""), "TrainConfig.out_dir"),
    (lambda: TrainConfig(num_threads=-3), "TrainConfig.num_threads"),
    (lambda: TrainConfig(seed=-1), "TrainConfig.seed"),
    (lambda: TrainConfig(max_grad_norm=-1.0), "TrainConfig.max_grad_norm"),
    (lambda: TrainConfig(max_grad_norm=0.0), "TrainConfig.max_grad_norm"),
    (lambda: TrainConfig(steps=True), "TrainConfig.steps"),
    (lambda: LossConfig(clip_low="x"), "LossConfig.clip_low"),
    (lambda: GenerationConfig(max_new_tokens="3"), "GenerationConfig.max_new_tokens"),
    (lambda: PolicyConfig(seed="x"), "PolicyConfig.seed"),
    (lambda: PolicyConfig(hidden=2.5), "PolicyConfig.hidden"),
    (lambda: TaskConfig("add", noise="x"), "TaskConfig.noise"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_trainer_configs_reject_bad_types_and_ranges_in_one_wording(make, field):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: found .*, expected "):
        make()


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("argv,needle", [
    (["demo", "--groups", "0"], "DemoOptions.groups"),
    (["demo", "--groups", "-1"], "DemoOptions.groups"),
    (["demo", "--group-size", "0"], "DemoOptions.group_size"),
    (["demo", "--repeats", "0"], "DemoOptions.repeats"),
    (["demo", "--mean-len", "-5"], "DemoOptions.mean_len"),
    (["demo", "--device", "foo"], "DemoOptions.device"),
    (["demo", "--groups", "many"], "--groups"),
    (["sweep", "--only", "["], "SweepOptions.only"),
    (["sweep", "--grid", "tpu"], "SweepOptions.grid"),
    (["sweep", "--seeds", "0,x"], "--seeds"),
    (["diagnose", "x", "{not json"], "DiagnoseOptions.overrides"),
    (["diagnose", "../x", "{}"], "DiagnoseOptions.name"),
    (["warmup", "--steps", "0"], "WarmupOptions.steps"),
    (["train", "--max-grad-norm", "-1"], "TrainConfig.max_grad_norm"),
    (["train", "--max-grad-norm", "0"], "TrainConfig.max_grad_norm"),
    (["train", "--num-threads", "-3"], "TrainConfig.num_threads"),
    (["train", "--resume", "--overwrite"], "TrainOptions.overwrite"),
], ids=lambda x: "_".join(x) if isinstance(x, list) else "")
def test_bad_command_lines_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, err = _err(capsys, argv)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_demo_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _err(capsys, ["demo", "--device", "cuda"])
    assert code == 2 and len(err) == 1 and "no CUDA device" in err[0]


def test_demo_runs(capsys):
    assert main(["demo", "--groups", "4", "--group-size", "3", "--mean-len", "5", "--repeats", "1",
                 "--device", "cpu"]) == 0
    assert "throughput" in capsys.readouterr().out


def test_warmup_command(capsys):
    assert main(["warmup", "--steps", "2", "--problems", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("steps=2 ") and "add=" in out and "count=" in out
