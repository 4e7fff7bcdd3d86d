"""The core installs anywhere: RolloutBatch, the kernels' PyTorch paths and Scheduler import and
select with torch and numpy alone (no triton, transformers, matplotlib, rich or math-verify)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("triton", "transformers", "matplotlib", "rich", "math_verify", "trl", "datasets", "accelerate")

SCRIPT = textwrap.dedent(f"""
    import sys

    BLOCKED = {BLOCKED!r}

    class Block:
        '''A meta-path finder: these packages are "not installed".'''
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    from rollout_bandits import RolloutBatch, Scheduler, SchedulerConfig
    from rollout_bandits.distributed import RankScheduler
    from rollout_bandits.kernels import group_topk, rollout_features, ucb_score
    from rollout_bandits.synthetic import synthetic_batch
    from rollout_bandits.validation import triton_available

    assert not triton_available()
    for policy in ("cbs", "pods", "dapo_filter"):
        sched = Scheduler(SchedulerConfig(policy=policy), seed=0)
        for t in range(2):
            step = sched.select(synthetic_batch(num_groups=4, group_size=4, mean_len=8, seed=t))
            assert 0 < step.num_selected and step.train_batch.num_rollouts == step.num_selected
    RankScheduler(Scheduler(SchedulerConfig(), seed=0)).select(synthetic_batch(seed=3))
    try:
        rollout_features(synthetic_batch(seed=1), backend="triton")
    except ValueError as e:
        assert "triton package is not installed" in str(e), e
    else:
        raise AssertionError("backend='triton' without triton did not raise")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("core ok")
""")


def test_core_imports_and_selects_without_optional_packages():
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "core ok" in proc.stdout
