"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Each rank holds an uneven slice of every round's rollouts (groups span ranks), selects through
RankScheduler, trains nothing, feeds per-arm gains back from synthetic log ratios, and writes its
decisions, its replicated state and its local payloads to OUT/rank{r}.pt. Without torchrun
(world of one) it plays every rank's part itself and writes OUT/single.pt: the reference.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from rollout_bandits import Scheduler, SchedulerConfig
from rollout_bandits.distributed import RankScheduler
from rollout_bandits.synthetic import synthetic_batch

ROUNDS = 5


def rank_slices(n: int, world: int) -> list[slice]:
    """Uneven contiguous slices (rank 0 gets fewer rows), so groups straddle ranks."""
    if world == 1:
        return [slice(0, n)]
    cut = n // 2 - 3
    return [slice(0, cut), slice(cut, n)]


def round_batch(t: int):
    b = synthetic_batch(num_groups=6, group_size=(3, 6), mean_len=12, seed=100 + t, with_cur=False)
    # Fresh rollouts: no age / reuse / clip history.
    return replace(b, age=None, reuse_count=None, clip_ratio=None)


def run(policy: str, gain: str, rank: int, world: int, slices_world: int):
    sched = RankScheduler(Scheduler(SchedulerConfig(policy=policy, gain=gain, intra_ratio=0.5, window_rounds=2),
                                    seed=3))
    log = []
    prev = None
    for t in range(ROUNDS):
        full = round_batch(t)
        sl = rank_slices(full.num_rollouts, slices_world)[rank]
        idx = torch.arange(full.num_rollouts)[sl]
        local = full.take(idx)
        gids = full.group_index()[idx]
        payload = [{"row": int(i), "round": t} for i in idx.tolist()]
        if prev is not None and gain != "batch":
            pstep = prev
            # Synthetic per-row log ratios: a function of the arm id, known on the owning rank only.
            fr = torch.sin(pstep.local_arm_ids.double() * 0.37)
            rr = torch.cos(pstep.reused_arm_ids.double() * 0.21)
            sched.observe_log_ratio(pstep, fr, rr)
        rstep = sched.select(local, group_ids=gids, payload=payload)
        mine = rstep.step.arm_ids[rstep.train_rows]
        sched.record_clip_ratio(rstep, (mine % 7).float() / 10)
        log.append({"arm_ids": rstep.step.arm_ids.clone(), "train_owner": rstep.train_owner.clone(),
                    "fresh_local": rstep.fresh_local.clone(), "reused_arm_ids": rstep.reused_arm_ids.clone(),
                    "reused_payload": list(rstep.reused_payload), "train_adv": rstep.train_advantage.clone(),
                    "step_adv": rstep.step.train_advantage.clone(),
                    "contexts": rstep.step.fresh.contexts.clone()})
        prev = rstep
    return {"log": log, "state": sched.state_dict(), "local": sched.local_state_dict()}


def main():
    """argv: OUT then specs "policy:gain" ..."""
    out, specs = sys.argv[1], [s.split(":") for s in sys.argv[2:]]
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        res = {f"{p}:{g}": run(p, g, rank, world, world) for p, g in specs}
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()
    else:
        torch.save({f"{p}:{g}": run(p, g, 0, 1, 1) for p, g in specs}, os.path.join(out, "single.pt"))


if __name__ == "__main__":
    main()
