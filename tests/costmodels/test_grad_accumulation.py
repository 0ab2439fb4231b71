"""Gradient accumulation per microbatch (costmodels/grad_accumulation.py), by hand."""

import pytest

from costmodels.compute import memory_bound_time_s
from costmodels.estimate import estimate, stage_times
from costmodels.grad_accumulation import accumulated_share, accumulation_bytes_per_param, grad_accumulation_s
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec


@pytest.mark.parametrize(("stack", "precision", "per_param"), [
    ("megatron-core", "bf16", 0),  # the wgrad GEMM accumulates into main_grad
    ("megatron-lm-2021", "bf16", 4 + 2 + 4),  # main_grad (fp32) += grad (bf16)
    ("megatron-lm-2021", "fp16", 2 + 2 + 2),  # fp16 runs keep an fp16 main_grad
    ("torchtitan", "bf16", 4 + 2 + 4),  # FSDP2 accumulates unsharded gradients in fp32
    ("ppplan-torch", "fp32", 4 + 4 + 4),
])
def test_bytes_per_parameter_read_both_and_write_the_buffer(stack: str, precision: str, per_param: int) -> None:
    assert accumulation_bytes_per_param(load_stack(stack), precision) == per_param


def test_main_grad_adds_every_microbatch_autograd_all_but_the_first() -> None:
    assert accumulated_share(load_stack("megatron-lm-2021"), 8) == 1.0
    assert accumulated_share(load_stack("ppplan-torch"), 8) == 7 / 8
    assert accumulated_share(load_stack("ppplan-torch"), 1) == 0.0
    assert accumulated_share(load_stack("megatron-core"), 8) == 0.0


def test_a_stage_pays_its_parameters_bytes_in_each_backward() -> None:
    """gpt3-1.7b (h 2,304, vocab 51,200, tied) on A100 80 GB, megatron-lm-2021, tp 1 pp 2 (12 layers a stage)
    M = 4: W of every microbatch moves 10 B per parameter of the stage through HBM (2,039 GB/s x the family's
    efficiency), on top of the layers' weight-gradient GEMMs; a measured profile's W holds it already."""
    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    stack, train = load_stack("megatron-lm-2021"), TrainSpec(global_batch=4, seq_len=2048)
    cfg = ParallelConfig(stack="megatron-lm-2021", tp=1, pp=2, dp=1, mbs=1, num_microbatches=4, schedule="1f1b",
                         stage_layers=[12, 12])
    h, vocab = 2304, 51200
    layers = 12 * (12 * h * h + 13 * h)  # weights, biases and norms of 12 layers
    params = [layers + vocab * h + 2048 * h, layers + vocab * h]  # the embedding (and positions); the tied head's copy
    assert grad_accumulation_s(cluster, stack, "bf16", cfg, params[0]) == pytest.approx(
        memory_bound_time_s(cluster, 10 * params[0]))
    added = stage_times(model, cluster, train, cfg, stack=stack).backward_weight_s
    fused = stage_times(model, cluster, train, cfg, stack=stack.model_copy(update={"grad_accumulation": "fused"}))
    for with_it, without, n in zip(added, fused.backward_weight_s, params):
        assert with_it - without == pytest.approx(memory_bound_time_s(cluster, 10 * n), rel=1e-3)
    assert estimate(model, cluster, train, cfg, stack=stack).step_time_s > estimate(
        model, cluster, train, cfg, stack=stack.model_copy(update={"grad_accumulation": "fused"})).step_time_s


def test_fsdp_syncing_every_microbatch_accumulates_its_shard() -> None:
    stack, cluster = load_stack("torchtitan"), load_cluster("dgx-h100")
    cfg = ParallelConfig(stack="torchtitan", tp=1, pp=1, dp=8, mbs=1, num_microbatches=4, schedule="1f1b", zero=3,
                         stage_layers=[32])
    whole = memory_bound_time_s(cluster, 10 * 8e9) * 3 / 4
    assert grad_accumulation_s(cluster, stack, "bf16", cfg, 8e9) == pytest.approx(whole / 8)
