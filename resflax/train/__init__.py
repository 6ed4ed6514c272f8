"""Training: state, optimizer, losses and the pure train/eval steps (parallelism wraps them)."""
