"""Full recompute under torch's early stop (``StackKernels.full_recompute_early_stop``): the re-run forward ends
before a dense block's down projection, so that GEMM, the TP collective after it and the residual add do not run
again. Hand-derived from the block's operator list; ``tests/launch/runtime/test_units.py`` counts what ppplan's
runtime executes."""

from __future__ import annotations

import pytest

from costmodels.comm import network_for, tp_all_reduce_s
from costmodels.flops import hardware_flops_per_iteration, recompute_forward_flops, transformer_layer_forward_flops
from costmodels.layer_costs import RooflineTimes
from costmodels.layer_ops import early_stop_tail
from costmodels.operators import Gemm
from costmodels.profile_times import PROFILED_RUNTIME_STOPS_EARLY
from costmodels.selective_ac import recomputed_tp_comm_fraction
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ModelSpec

S, B = 4096, 2
PPPLAN = load_stack("ppplan-torch")
# megatron-core with its TP collectives exposed, as ppplan-torch's: the comparison is of what the recompute re-runs
# (the preset hides part of the backward's: test_layer_costs.test_megatron_core_hides_the_column_parallel_...)
MEGATRON = load_stack("megatron-core").with_changes({"overlap": {"tp_comm": "exposed"}})


def _with_a_shared_expert(model: ModelSpec) -> ModelSpec:
    """``model`` with one shared expert of FFN width 512 (tiny-moe has none)."""
    return model.model_copy(update={"num_shared_experts": 1, "shared_expert_ffn_hidden_size": 512})


@pytest.fixture(scope="module")
def llama():
    return load_model("llama3-8b")


def test_the_stacks_that_stop_early_are_the_ones_whose_checkpoint_does() -> None:
    """ppplan's runtime calls torch.utils.checkpoint with use_reentrant=False (early_stop defaults to True);
    torchtitan's FullAC passes early_stop=False; Megatron re-runs the whole block with its own checkpoint."""
    assert PPPLAN.kernels.full_recompute_early_stop == PROFILED_RUNTIME_STOPS_EARLY  # profiles time ppplan's runtime
    assert not load_stack("torchtitan").kernels.full_recompute_early_stop
    assert not MEGATRON.kernels.full_recompute_early_stop


def test_the_recompute_leaves_out_the_down_projection(llama) -> None:
    """Llama3-8B (h 4096, f 14336), tp 2: the re-run GEMMs are the forward's less fc2, 2·t·(f/2)·h."""
    t, h, f = S * B, 4096, 14336
    early = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=PPPLAN).operators("transformer", 2, B, S, False, "full")
    whole = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=MEGATRON).operators("transformer", 2, B, S, False, "full")
    gemm_flops = [sum(op.flops for op in ops.recompute if isinstance(op, Gemm)) for ops in (whole, early)]
    assert gemm_flops[0] - gemm_flops[1] == 2 * t * (f / 2) * h
    assert recompute_forward_flops(llama, S, B, "full", early_stop=True) == pytest.approx(
        transformer_layer_forward_flops(llama, S, B).total - 2 * t * f * h, rel=1e-12)
    # an MoE layer without shared experts ends with the weighted combine, which saves the expert outputs
    assert recompute_forward_flops(llama, S, B, "full", moe=True, early_stop=True) == \
        recompute_forward_flops(llama, S, B, "full", moe=True)


def test_an_moe_block_with_shared_experts_leaves_out_their_down_projection() -> None:
    """ppplan's runtime adds the shared experts after the combine: their w2 (2·t·f_shared·h) and the residual add
    are the tail; without shared experts the residual add alone."""
    moe = load_model("tiny-moe")
    shared = _with_a_shared_expert(moe)
    assert early_stop_tail(moe, PPPLAN.kernels, moe=True) == ("mlp.residual",)
    assert early_stop_tail(shared, PPPLAN.kernels, moe=True) == ("moe.shared.fc2", "mlp.residual")
    assert early_stop_tail(shared, MEGATRON.kernels, moe=True) == ()
    t, h = 2 * 64, shared.hidden_size
    assert recompute_forward_flops(shared, 64, 2, "full", moe=True, early_stop=True) == pytest.approx(
        recompute_forward_flops(shared, 64, 2, "full", moe=True) - 2 * t * 512 * h, rel=1e-12)


@pytest.mark.parametrize(("sequence_parallel", "rerun"), [(False, 0.5), (True, 0.75)])
def test_the_backward_reruns_the_collectives_before_the_down_projection(llama, sequence_parallel: bool, rerun: float) -> None:
    """Without sequence parallelism the block's forward has two all-reduces and the re-run forward stops before the
    second; with it, the all-gather, reduce-scatter, all-gather of four. The forward's TP traffic is half of a layer's
    without recompute (``tp_comm_s = 2 x forward``), so the layer's total is none x (1 + rerun / 2)."""
    assert recomputed_tp_comm_fraction("full", "attention_core", sequence_parallel, stops_early=True) == rerun
    times = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=PPPLAN)
    none = times.transformer(8, 1, S, sequence_parallel, "none")
    full = times.transformer(8, 1, S, sequence_parallel, "full")
    assert full.tp_comm_s == pytest.approx(none.tp_comm_s * (1 + rerun / 2), rel=1e-12)
    whole = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=MEGATRON).transformer(8, 1, S, sequence_parallel, "full")
    assert whole.tp_comm_s == pytest.approx(none.tp_comm_s * 1.5, rel=1e-12)


def test_hardware_flops_count_what_runs(llama) -> None:
    """32 full-recompute layers: 32 x 2·b·s·f·h fewer re-run FLOPs under early stop."""
    layers = ["full"] * llama.num_layers
    whole = hardware_flops_per_iteration(llama, B, S, layers)
    early = hardware_flops_per_iteration(llama, B, S, layers, early_stop=True)
    assert whole - early == pytest.approx(llama.num_layers * 2 * B * S * 14336 * 4096, rel=1e-12)


def test_an_moe_block_does_not_rerun_its_exit_reduction() -> None:
    """tiny-moe with a shared expert at TP 2 (bf16, 4096 tokens). ppplan's runtime all-reduces, in F, the attention's
    output and the block's partial sum on exit, the latter after the last saved tensor: full recompute re-runs the
    attention's all-reduce alone, one all-reduce of the block's 4096 x h values. Megatron-Core (tp_split, no early
    stop) all-reduces the attention's, the routed experts' and the shared experts' outputs in each pass and re-runs
    all three (none's tp_comm_s is twice the forward's)."""
    cluster = load_cluster("dgx-h100")
    shared = _with_a_shared_expert(load_model("tiny-moe"))
    one = tp_all_reduce_s(S, shared.hidden_size, 2, 2, network_for(cluster))
    ppplan, megatron = (RooflineTimes(shared, cluster, "bf16", stack=stack) for stack in (PPPLAN, MEGATRON))
    none, full = (ppplan.transformer(2, 1, S, False, kind, moe=True) for kind in ("none", "full"))
    assert full.tp_comm_s - none.tp_comm_s == pytest.approx(one, rel=1e-12)
    none, full = (megatron.transformer(2, 1, S, False, kind, moe=True) for kind in ("none", "full"))
    assert full.tp_comm_s == pytest.approx(none.tp_comm_s * 1.5, rel=1e-12)
