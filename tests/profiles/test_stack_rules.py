"""The stacks' runtime rules that the cost model and a job share (profiles/stack_schema.py)."""

import pytest

from profiles.loader import load_stack


@pytest.mark.parametrize(("stack", "data_ranks", "zero", "precision", "wraps"), [
    ("ppplan-torch", 1, 0, "fp32", False),  # one rank, fp32: nothing to shard and no mixed precision
    ("ppplan-torch", 1, 0, "bf16", True),   # bf16 is FSDP2's MixedPrecisionPolicy: a one-rank mesh
    ("ppplan-torch", 2, 0, "fp32", True),   # ZeRO 0 over two ranks: HSDP with one shard
    ("ppplan-torch", 4, 3, "bf16", True),
    ("ppplan-torch", 1, 3, "fp32", False),  # ZeRO 3 on one rank: nothing to shard, no mixed precision
    ("torchtitan", 8, 0, "bf16", False),    # ZeRO 0 is torchtitan's DDP
    ("torchtitan", 8, 1, "bf16", True),     # dp_shard over 8
    ("torchtitan", 1, 3, "bf16", False),    # one data rank: nothing to shard
    ("megatron-core", 8, 1, "bf16", False),  # Megatron's ZeRO 1 is its distributed optimizer, not FSDP
    ("megatron-deepspeed", 8, 1, "bf16", False),  # DeepSpeed's ZeRO 1 optimizer
])
def test_fsdp_wraps_where_the_job_calls_fully_shard(stack, data_ranks, zero, precision, wraps):
    """One rule for where FSDP2 wraps the stages: ppplan's runtime builds by it (launch/runtime/build.py) and the
    cost model prices FSDP2's host time and fp32 gradient accumulation by it."""
    assert load_stack(stack).fsdp_wraps(data_ranks, zero, precision) is wraps
