"""Every kernel configuration the CUDA launchers can pick compiles for H100 (sm_90) and A100 (sm_80)
with no spill and within the per-block shared memory, checked ahead of time without a GPU
(kernels/aot.py), and the committed table in benchmarks/results/ is the one the check computes."""

import importlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.backends.nvidia", reason="no Triton with an NVIDIA backend (ptxas) to compile with")

from rollout_bandits.kernels import aot  # noqa: E402
from rollout_bandits.kernels.feature_spec import NUM_FEATURES  # noqa: E402

rf = importlib.import_module("rollout_bandits.kernels.rollout_features")
us = importlib.import_module("rollout_bandits.kernels.ucb_score")
tk = importlib.import_module("rollout_bandits.kernels.group_topk")

# The fields that depend only on the kernels and the Triton version (not on the machine's speed).
STABLE = ("kernel", "variant", "config", "num_warps", "num_stages", "target", "arch", "registers", "stack_bytes",
          "spill_stores", "spill_loads", "shared_bytes", "problems")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    # Its own process: this test session runs the kernels in the interpreter (TRITON_INTERPRET=1).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "rollout_bandits.kernels.aot", "--out", str(out), "--jobs", "2"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"the AOT check wrote no report (exit {res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"
    return json.loads(out.read_text()), res


def test_every_config_compiles_without_spill_within_shared_memory(report):
    rep, res = report
    assert rep["failures"] == [], "\n".join(rep["failures"])
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    for row in rep["cases"]:
        assert row["spill_stores"] == row["spill_loads"] == 0 and row["stack_bytes"] == 0, row
        assert row["registers"] <= aot.MAX_REGISTERS, row
        assert row["shared_bytes"] <= aot.TARGETS[row["target"]][1], row


def test_each_case_compiled_for_both_targets(report):
    rep, _ = report
    got = {(r["target"], r["kernel"], json.dumps(r["config"], sort_keys=True), r["variant"]) for r in rep["cases"]}
    want = {(t, c.kernel, json.dumps(dict(c.config.meta), sort_keys=True), c.variant)
            for t in aot.TARGETS for c in aot.cases()}
    assert got == want
    assert {r["arch"] for r in rep["cases"]} == {"sm_90a", "sm_80"}


def test_committed_table_is_current(report):
    rep, _ = report
    path = aot.results_path()
    if not path.exists():
        pytest.skip(f"no committed table for triton {rep['triton']} ({path.name}); "
                    "write it with `python -m rollout_bandits.kernels.aot`")
    committed = json.loads(path.read_text())
    stable = lambda rows: [{k: r.get(k) for k in STABLE} for r in rows]  # noqa: E731
    assert stable(committed["cases"]) == stable(rep["cases"]), (
        f"{path} is stale: regenerate it with `python -m rollout_bandits.kernels.aot` (make aot)")


def test_plans_are_bounded_and_cover_the_domain():
    """The sweep finds every config the plan functions return at the domain's edges, and there are
    few of them (each is a compile)."""
    configs = {c.config for c in aot.cases()}
    assert len(configs) <= 16
    for n, length in [(1, 1), (1, 32_768), (16_384, 128), (16_384, 129), (3, 200), (1024, 1)]:
        assert rf.features_plan(n, n * length) in configs
    for h in (1, 16, 17, 63, 64, 65, 128, 129, 200, 256):
        for diag in (False, True):
            assert us.ucb_plan(NUM_FEATURES, h, diag) in configs
    for contrast in (False, True):
        assert tk.topk_plan(contrast) in configs
    assert tk.topm_plan() in configs
