"""Config files fuzzed: random JSON/TOML values for every TrainConfig field (issue 14).

Every file is either a valid config or a one-line ValueError (exit status 2), and a rejected
file changes nothing on disk, even with --overwrite pointed at an existing run."""

import dataclasses
import json
import math
import os
import typing

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rollout_bandits.cli import main
from rollout_bandits.config import build_dataclass, load_config_file
from rollout_bandits.trainer.loop import TrainConfig, train


def _leaves(cls, prefix=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], (*prefix, f.name))
        else:
            yield (*prefix, f.name)


LEAVES = list(_leaves(TrainConfig))
TINY = {"steps": 1, "prompts_per_step": 2, "group_size": 2, "warmup_steps": 0, "eval_problems": 1,
        "tasks": ["add"], "policy": {"hidden": 16, "n_layers": 1, "n_heads": 2}, "out_dir": "run"}

text = st.text(alphabet=st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",)), max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers() | st.integers(10**18, 10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["", "x", "false", "true", "3", "none",
                                                                                "grpo", "cbs", "add", "/", "."])
           | text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["x", "gamma", "name", "hidden"]) | text, inner, max_size=3),
                      max_leaves=6)
mutation = st.tuples(st.sampled_from(LEAVES) | st.lists(text, min_size=1, max_size=2).map(tuple), values)


def _set(tree, path, value):
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _has_none(v):
    return v is None or (isinstance(v, list) and any(map(_has_none, v))) or \
        (isinstance(v, dict) and any(map(_has_none, v.values())))


def _snapshot(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding a finished tiny run (`run/`) that a wrongly accepted file would replace."""
    root = tmp_path_factory.mktemp("fuzz")
    train(build_dataclass(TrainConfig, {**TINY, "out_dir": str(root / "run")}), progress=False, log=lambda *_: None)
    return root


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(mutations=st.lists(mutation, min_size=1, max_size=3), as_toml=st.booleans())
def test_config_files_are_valid_or_one_clear_error_and_change_nothing(workdir, capsys, mutations, as_toml):
    tree = json.loads(json.dumps(TINY))
    for path, value in mutations:
        _set(tree, path, value)
    as_toml = as_toml and not _has_none(tree)
    name = "c.toml" if as_toml else "c.json"
    cfg_path = workdir / name
    cfg_path.write_text("\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in tree.items()) if as_toml
                        else json.dumps(tree))
    try:
        build_dataclass(TrainConfig, load_config_file(str(cfg_path)))
    except ValueError as err:
        assert ": found " in str(err) and ", expected " in str(err)
    else:
        event("valid")
        return  # a valid config (nothing to reject; it is not run here)
    event("rejected")
    before = _snapshot(workdir)
    old = os.getcwd()
    os.chdir(workdir)
    try:
        code = main(["train", "--config", name, "--overwrite", "--no-progress"])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rollout-bandits: error: "), err
    assert _snapshot(workdir) == before


def test_a_toml_config_file(tmp_path):
    (tmp_path / "c.toml").write_text('steps = 3\ntasks = ["add", "mul"]\n[scheduler]\npolicy = "pods"\n'
                                     '[scheduler.learner]\ngamma = 0.25\n')
    cfg = build_dataclass(TrainConfig, load_config_file(str(tmp_path / "c.toml")))
    assert (cfg.steps, cfg.tasks, cfg.scheduler.policy, cfg.scheduler.learner.gamma) == (3, ("add", "mul"), "pods",
                                                                                          0.25)
