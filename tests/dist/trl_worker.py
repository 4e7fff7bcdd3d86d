"""Run by tests/test_trl_adapter.py under `accelerate launch --cpu --num_processes 2`.

CBSGRPOTrainer on the tiny model, 3 steps; 6 completions per process in groups of 4, so one
group straddles the two processes. Each rank writes OUT/rank{r}.pt: its decisions, its
replicated scheduler state and its counters.
"""

from __future__ import annotations

import os
import sys

import torch
from datasets import Dataset
from trl import GRPOConfig

from rollout_bandits import SchedulerConfig
from rollout_bandits.integrations.trl import CBSGRPOTrainer, char_tokenizer_fast
from rollout_bandits.trainer.policy import PolicyConfig, build_policy


def parity_reward(completions, **_):
    return [float(sum(map(ord, c)) % 2) for c in completions]


def main():
    out, policy = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model, _ = build_policy(PolicyConfig(hidden=16, n_layers=1, n_heads=2, max_length=32, seed=0))
    data = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(10) for b in range(10)]})
    args = GRPOConfig(output_dir=os.path.join(out, "run"), per_device_train_batch_size=6, num_generations=4,
                      max_completion_length=6, max_steps=3, learning_rate=5e-3, logging_steps=1, report_to=[],
                      use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
    tr = CBSGRPOTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=data,
                        processing_class=char_tokenizer_fast(),
                        scheduler_config=SchedulerConfig(policy=policy, window_rounds=2))
    steps = []
    select = tr.cbs.select

    def recording_select(*a, **k):
        rstep = select(*a, **k)
        steps.append({"arm_ids": rstep.step.arm_ids.clone(), "train_owner": rstep.train_owner.clone(),
                      "rows_per_rank": rstep.rows_per_rank, "num_rows": rstep.num_rows,
                      "generated": rstep.step.batch.num_rollouts, "local": rstep.local_arm_ids.numel()})
        return rstep

    tr.cbs.select = recording_select
    tr.train()
    rank = tr.accelerator.process_index
    torch.save({"steps": steps, "state": tr.cbs.state_dict(), "counters": tr.cbs_counters,
                "world": tr.accelerator.num_processes}, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
