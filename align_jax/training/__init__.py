"""Training machinery shared by every stage: optimizer, train state, step, loop, checkpoints."""
