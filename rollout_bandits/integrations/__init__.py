"""Adapters for the RL trainers users already run (each behind its own extra, imported lazily).

`rollout_bandits.integrations.trl.CBSGRPOTrainer`: TRL's GRPOTrainer with the scheduler in the
loop (`pip install 'rollout-bandits[trl]'`).
`rollout_bandits.integrations.verl`: the scheduler on verl's gathered `DataProto` in the driver
(`schedule_dataproto`, `CBSTrainerMixin` for `RayPPOTrainer` / the DAPO recipe's `RayDAPOTrainer`;
`pip install 'rollout-bandits[verl]'`).
"""
