"""Hooks a training loop calls: the per-sample recorder, embeddings, coreset stability
and the stop rule, and pruning during training."""
