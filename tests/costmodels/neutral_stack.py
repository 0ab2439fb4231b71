"""A stack with the schema's default kernels and overlaps, for tests whose hand-derived figures
assume them: flash attention and fused element-wise kernels (``StackKernels()``), DP gradients
reduced in buckets during the last backward, TP and p2p exposed, no host overhead. ``estimate``
has no default stack; these tests name this one."""

from __future__ import annotations

from profiles.loader import load_stack
from profiles.stack_schema import StackKernels, StackOverlap, StackSpec


def neutral_stack(**overlap: object) -> StackSpec:
    """ppplan-torch's rules with the schema's default kernels and these overlaps (bucketed DP reduce
    unless given)."""
    return load_stack("ppplan-torch").model_copy(update={
        "name": "neutral", "kernels": StackKernels(),
        "overlap": StackOverlap(**{"dp_grad_reduce": "bucketed", **overlap}),
    })
