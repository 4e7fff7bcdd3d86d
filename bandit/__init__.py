"""The contextual-bandit learner, the rollout buffer and the scheduler."""
