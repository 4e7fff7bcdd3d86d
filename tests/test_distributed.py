"""One decision on every rank (rollout_bandits/distributed.py).

In one process: the gathered contexts equal the scheduler's own features, and a RankScheduler
of one rank decides as a plain Scheduler does (per-arm gains through per-row log ratios).
Under torchrun (2 CPU processes, gloo): both ranks make identical decisions and hold identical
replicated states, equal to one process playing both ranks, groups straddling the two ranks;
each reused arm's payload comes back on the rank that generated it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _bandit_helpers import single_thread, states_equal  # noqa: F401

from rollout_bandits import Scheduler, SchedulerConfig
from rollout_bandits.distributed import RankScheduler, gather_rollouts
from rollout_bandits.synthetic import synthetic_batch

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "dist" / "rank_scheduler_worker.py"
SPECS = ["cbs:heldout", "cbs:batch", "pods:batch", "reuse_fifo:self"]


def states_close(a, b, path: str = "state") -> list[str]:
    """Paths where two nested states differ beyond float round-off."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype.is_floating_point:
        x, y = torch.nan_to_num(a.double(), nan=7.5), torch.nan_to_num(b.double(), nan=7.5)
        ok = a.shape == b.shape and bool((x - y).abs().max() <= 1e-4 * x.abs().max() + 1e-6) if a.numel() else \
            a.shape == b.shape
        return [] if ok else [path]
    if isinstance(a, float) and isinstance(b, float):
        return [] if a == pytest.approx(b, rel=1e-4, abs=1e-6, nan_ok=True) else [path]
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        return [p for k in a for p in states_close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in states_close(x, y, f"{path}[{i}]")]
    return states_equal(a, b, path)


def fresh(seed: int):
    b = synthetic_batch(num_groups=5, group_size=(2, 6), mean_len=10, seed=seed, with_cur=False)
    return replace(b, age=None, reuse_count=None, clip_ratio=None)


def test_gathered_contexts_are_the_features_of_the_whole_batch():
    sched = Scheduler(SchedulerConfig(), seed=0)
    b = fresh(1)
    g = gather_rollouts(b, scheduler=sched)
    from rollout_bandits.kernels import rollout_features
    assert torch.equal(g.contexts, rollout_features(b))
    assert torch.equal(g.batch.lengths, b.lengths)
    assert torch.equal(g.owner, torch.zeros(b.num_rollouts, dtype=torch.int64))
    # The summary's mean entropy is the token-weighted mean of the real streams (the batch gain's E).
    assert g.batch.token_entropy.double().mean().item() == pytest.approx(b.token_entropy.double().mean().item(),
                                                                          rel=1e-6)


def test_a_group_split_in_two_local_batches_is_scored_as_one_group():
    """Features of two halves, rebuilt from the gathered rewards, equal the whole batch's."""
    sched = Scheduler(SchedulerConfig(), seed=0)
    b = fresh(2)
    from rollout_bandits.kernels import rollout_features
    whole = rollout_features(b)
    gid = b.group_index()
    go = b.group_offsets.tolist()
    # Cut after the first rollout of a group of mixed rewards.
    g = next(i for i in range(b.num_groups) if go[i + 1] - go[i] > 1 and b.reward[go[i]:go[i + 1]].std() > 0)
    cut = go[g] + 1
    parts = [b.take(torch.arange(0, cut)), b.take(torch.arange(cut, b.num_rollouts))]
    # Each half alone gets the wrong group statistics for the straddling group...
    half = rollout_features(parts[0])
    assert not torch.equal(half, whole[:cut])
    # ...which gather_rollouts rebuilds from the rewards of the whole group.
    from rollout_bandits.distributed import _rebuild_group_columns
    ctx = torch.cat([rollout_features(p) for p in parts])
    _rebuild_group_columns(ctx, gather_rollouts(b, group_ids=gid, scheduler=sched).batch, sched)
    assert torch.allclose(ctx, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gain", ["heldout", "self", "batch"])
def test_one_rank_decides_as_the_plain_scheduler(gain):
    cfg = SchedulerConfig(gain=gain, window_rounds=2)
    plain, ranked = Scheduler(cfg, seed=5), RankScheduler(Scheduler(cfg, seed=5))
    prev = None
    for t in range(5):
        b = fresh(10 + t)
        if prev is not None and gain != "batch":
            pstep, rstep = prev
            gb = pstep.gain_batch
            before = gb.token_logprobs.float()
            after = before + 0.01 * torch.sin(torch.arange(gb.num_tokens, dtype=torch.float32))
            plain.observe_step(pstep, logp_after=after, logp_before=before)
            # The same per-row mean log ratios, reported by their owner (this rank).
            lr = torch.segment_reduce((after - before).double(), "sum", lengths=gb.lengths) / \
                gb.lengths.clamp_min(1)
            n = pstep.fresh_arm_ids.numel()
            ranked.observe_log_ratio(rstep, lr[:n], lr[n:])
        s = plain.select(b)
        r = ranked.select(b, payload=list(range(b.num_rollouts)))
        assert torch.equal(s.arm_ids, r.step.arm_ids)
        assert torch.equal(r.train_rows, torch.arange(s.num_selected))
        assert len(r.reused_payload) == s.num_reused and None not in r.reused_payload
        prev = (s, r)
    # Only float round-off may differ (the per-row means are taken in another order), and the
    # buffer's token streams: the summary batch stores each rollout's mean over its length.
    a, b = plain.state_dict(), ranked.scheduler.state_dict()
    assert torch.equal(a["buffer"]["slot"]["tok_len"], b["buffer"]["slot"]["tok_len"])
    a["buffer"].pop("streams"), b["buffer"].pop("streams")
    assert states_close(a, b) == []


def test_reused_payload_is_the_rollout_it_was_given_for():
    ranked = RankScheduler(Scheduler(SchedulerConfig(window_rounds=3), seed=0))
    seen = {}
    for t in range(4):
        b = fresh(20 + t)
        r = ranked.select(b, payload=[(t, i) for i in range(b.num_rollouts)])
        for i, a in enumerate(r.local_arm_ids.tolist()):
            seen[a] = (t, i)
        assert [seen[int(a)] for a in r.reused_arm_ids] == r.reused_payload
        assert r.num_rows == r.step.num_selected
    assert r.step.num_reused > 0
    # Payloads are forgotten with their arms.
    live = ranked.scheduler.buffer.slot["arm_id"][ranked.scheduler.buffer.live_slots()]
    assert sorted(ranked.payload) == sorted(live.tolist())


def test_bad_inputs_are_value_errors():
    ranked = RankScheduler(Scheduler(SchedulerConfig(), seed=0))
    b = fresh(3)
    with pytest.raises(ValueError, match="RankScheduler.payload"):
        ranked.select(b, payload=[1, 2])
    with pytest.raises(ValueError, match="gather_rollouts.group_ids"):
        ranked.select(b, group_ids=torch.zeros(3, dtype=torch.int64))
    r = ranked.select(b)
    with pytest.raises(ValueError, match="RankScheduler.fresh_log_ratio"):
        ranked.observe_log_ratio(r, torch.zeros(1), torch.zeros(0))
    with pytest.raises(ValueError, match="RankScheduler.scheduler"):
        RankScheduler("cbs")


def _torchrun(out: Path, *args: str, nproc: int = 2) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", str(WORKER), str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not torch.distributed.is_available() or shutil.which(sys.executable) is None:
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist")
    _torchrun(out, *SPECS)
    single = subprocess.run([sys.executable, str(WORKER), str(out), *SPECS], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)], \
        torch.load(out / "single.pt", weights_only=False)


@pytest.mark.slow  # torchrun starts 2 processes (+1 reference), each importing torch: ~35 s on 2 cores
@pytest.mark.parametrize("spec", SPECS)
def test_two_ranks_decide_identically(two_ranks, spec):
    (r0, r1), single = two_ranks
    a, b, s = r0[spec], r1[spec], single[spec]
    assert states_equal(a["state"], b["state"]) == []  # bitwise identical replicated state
    for la, lb in zip(a["log"], b["log"]):
        for key in ("arm_ids", "train_owner", "contexts", "step_adv"):
            assert torch.equal(la[key], lb[key]), key
        # Each rank's rows' advantages are its share of the step's.
        assert torch.equal(la["train_adv"], la["step_adv"][la["train_owner"] == 0])
        assert torch.equal(lb["train_adv"], la["step_adv"][la["train_owner"] == 1])
    # ... and the decisions of one process that sees every rollout.
    for la, ls in zip(a["log"], s["log"]):
        assert torch.equal(la["arm_ids"], ls["arm_ids"])
        assert torch.allclose(la["contexts"], ls["contexts"], rtol=1e-6, atol=1e-6)
    diff = [p for p in states_equal(a["state"]["scheduler"], s["state"]["scheduler"], "s")]
    assert all(p.startswith(("s.learner", "s.counters")) for p in diff), diff


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_each_rank_trains_and_keeps_its_own_rollouts(two_ranks, spec):
    (r0, r1), single = two_ranks
    a, b, s = r0[spec], r1[spec], single[spec]
    reused_any = False
    for la, lb, ls in zip(a["log"], b["log"], s["log"]):
        # Every train row is trained on exactly one rank: the fresh rows by local index, the reused
        # ones with the payload their owner stored, which is the single process's payload.
        assert la["fresh_local"].numel() + la["reused_arm_ids"].numel() == int((la["train_owner"] == 0).sum())
        assert lb["fresh_local"].numel() + lb["reused_arm_ids"].numel() == int((la["train_owner"] == 1).sum())
        both = sorted(la["reused_payload"] + lb["reused_payload"], key=lambda p: (p["round"], p["row"]))
        assert both == sorted(ls["reused_payload"], key=lambda p: (p["round"], p["row"]))
        assert None not in both
        reused_any |= bool(both)
    assert sorted(a["local"]["arm_ids"] + b["local"]["arm_ids"]) == sorted(s["local"]["arm_ids"])
    if spec.split(":")[0] in ("cbs", "reuse_fifo"):
        assert reused_any
