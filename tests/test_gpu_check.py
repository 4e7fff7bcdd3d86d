"""The pieces of `make gpu-check` that are meaningful without a GPU run here: the in-loop profile
(benchmarks/profile_loop.py) on a tiny run, and the warm-up, which compiles nothing without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rollout_bandits.trainer.loop import SCHEDULING_STAGES, STAGES

ROOT = Path(__file__).resolve().parent.parent


def test_profile_loop_reports_the_scheduling_share(tmp_path):
    out = tmp_path / "profile.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_loop.py"), "--steps", "2",
                          "--prompts", "4", "--group", "2", "--warmup", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rep = json.loads(out.read_text())
    loop = rep["loop"]
    stages = loop["stage_seconds_per_step"]
    assert set(stages) == set(STAGES)
    assert all(v >= 0 for v in stages.values()) and stages["schedule"] > 0
    share = sum(stages[s] for s in SCHEDULING_STAGES) / sum(stages.values())
    assert abs(loop["scheduling_share"] - share) < 1e-9 and 0 < share < 1
    assert ("cuda_schedule" in rep) == torch.cuda.is_available()


def test_warm_up_compiles_nothing_without_cuda():
    pytest.importorskip("triton", reason="warm_up compiles Triton kernels; triton is not installed")
    from rollout_bandits.kernels.aot import warm_up

    if torch.cuda.is_available():
        return  # compiles for real: gpu-check times it
    assert warm_up() == 0
