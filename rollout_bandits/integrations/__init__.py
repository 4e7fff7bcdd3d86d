"""Adapters for the RL trainers users already run (each behind its own extra, imported lazily).

`rollout_bandits.integrations.trl.CBSGRPOTrainer`: TRL's GRPOTrainer with the scheduler in the
loop (`pip install 'rollout-bandits[trl]'`).
"""
