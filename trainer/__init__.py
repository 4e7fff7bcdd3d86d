"""The lean RLVR trainer: tasks, verifiers, policy, generation, losses, loop."""
