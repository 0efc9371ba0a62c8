"""Training: the loop, the optimizer step, stops and budgets, the resumable train state, and
the distributed (torchrun) context."""
