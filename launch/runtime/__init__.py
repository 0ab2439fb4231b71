"""The torch runtime that executes a plan: model pieces, TP / PP / FSDP wrapping,
the per-rank training loop and its metrics. Imports torch."""
