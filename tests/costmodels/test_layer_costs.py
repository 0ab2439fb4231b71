"""``costmodels.layer_costs.RooflineTimes``: a layer's passes are its operators' times plus its
TP collectives, exposed or hidden behind the GEMMs as the stack says."""

from __future__ import annotations

import pytest

from costmodels.comm import network_for, tp_layer_comm_s
from costmodels.compute import operators_time_s
from costmodels.layer_costs import RooflineTimes
from costmodels.operators import Gemm
from profiles.loader import load_cluster, load_model, load_stack

MODEL = load_model("gpt3-1.7b")
CLUSTER = load_cluster("dgx-a100-80g")


def _with_tp_comm(name: str, tp_comm: str):
    return load_stack(name).with_changes({"overlap": {"tp_comm": tp_comm}})


def test_passes_are_the_operator_times_plus_the_tp_collectives() -> None:
    stack = _with_tp_comm("megatron-core", "exposed")
    roof = RooflineTimes(MODEL, CLUSTER, "bf16", stack=stack)
    ops = roof.operators("transformer", 2, 1, 2048, False, "selective")
    comm = tp_layer_comm_s(2048, MODEL.hidden_size, 2, 2, network_for(CLUSTER))
    got = roof.transformer(2, 1, 2048, False, "selective")
    redo = operators_time_s(CLUSTER, "bf16", ops.recompute)
    assert got.forward_s == pytest.approx(operators_time_s(CLUSTER, "bf16", ops.forward) + comm)
    assert got.backward_input_s == pytest.approx(operators_time_s(CLUSTER, "bf16", ops.backward_input) + redo + comm)
    assert got.backward_weight_s == pytest.approx(operators_time_s(CLUSTER, "bf16", ops.backward_weight))
    assert got.tp_comm_s == pytest.approx(2 * comm) and got.recompute_s == pytest.approx(redo)


def test_full_recompute_reruns_the_forward_and_its_collectives() -> None:
    roof = RooflineTimes(MODEL, CLUSTER, "bf16", stack=_with_tp_comm("megatron-core", "exposed"))
    none, full = roof.transformer(2, 1, 2048, False, "none"), roof.transformer(2, 1, 2048, False, "full")
    comm = tp_layer_comm_s(2048, MODEL.hidden_size, 2, 2, network_for(CLUSTER))
    assert full.recompute_s == pytest.approx(none.forward_s - comm)  # the forward's compute
    assert full.tp_comm_s == pytest.approx(3 * comm)  # F, B and the recomputed forward's
    assert full.backward_input_s == pytest.approx(none.backward_input_s + none.forward_s)


def test_tp_communication_overlapped_with_the_gemms_shows_its_excess_and_its_contention() -> None:
    """A stack that overlaps TP communication (TE userbuffers): per pass, what the pass's GEMMs
    cannot hide, plus the contention of what they hide (the GEMMs run 18.9 % slower beside the
    collectives: c hidden costs c * 0.189 / 1.189). Here the GEMMs are longer, so all of it hides."""
    exposed_stack = _with_tp_comm("megatron-core", "exposed")
    overlapped_stack = _with_tp_comm("megatron-core", "overlapped")
    exposed = RooflineTimes(MODEL, CLUSTER, "bf16", stack=exposed_stack).transformer(2, 1, 2048, False, "none")
    hidden = RooflineTimes(MODEL, CLUSTER, "bf16", stack=overlapped_stack)
    got = hidden.transformer(2, 1, 2048, False, "none")
    ops = hidden.operators("transformer", 2, 1, 2048, False)
    gemm_f = operators_time_s(CLUSTER, "bf16", tuple(op for op in ops.forward if isinstance(op, Gemm)))
    comm = tp_layer_comm_s(2048, MODEL.hidden_size, 2, 2, network_for(CLUSTER))
    assert exposed.tp_comm_s == pytest.approx(2 * comm) and gemm_f > comm
    slowed = comm * 0.189 / 1.189
    assert got.tp_comm_s == pytest.approx(2 * slowed) and got.overlapped_tp_comm_s == pytest.approx(2 * (comm - slowed))
    assert got.forward_s == pytest.approx(exposed.forward_s - comm + slowed)
    assert got.total_s == pytest.approx(exposed.total_s - 2 * (comm - slowed))


def test_backward_overlapped_tp_communication_hides_only_the_backwards_collectives() -> None:
    """Megatron-LM 2022's async TP communication: F keeps its all-reduces on the critical path; B's
    run beside the dgrad and wgrad GEMMs (longer here, so all of it hides, at the contention of
    c * 0.189 / 1.189); under full recompute the recomputed forward's all-reduces inside B stay exposed."""
    exposed_stack = load_stack("megatron-lm-2021")
    async_stack = _with_tp_comm("megatron-lm-2021", "backward_overlapped")
    exposed = RooflineTimes(MODEL, CLUSTER, "bf16", stack=exposed_stack)
    hidden = RooflineTimes(MODEL, CLUSTER, "bf16", stack=async_stack)
    comm = tp_layer_comm_s(2048, MODEL.hidden_size, 2, 2, network_for(CLUSTER))
    slowed = comm * 0.189 / 1.189
    for recompute, collectives in (("none", 2), ("full", 3)):
        before, got = exposed.transformer(2, 1, 2048, False, recompute), hidden.transformer(2, 1, 2048, False, recompute)
        assert before.tp_comm_s == pytest.approx(collectives * comm)
        assert got.forward_s == pytest.approx(before.forward_s)
        assert got.overlapped_tp_comm_s == pytest.approx(comm - slowed)
        assert got.tp_comm_s == pytest.approx(before.tp_comm_s - comm + slowed)
        assert got.backward_input_s == pytest.approx(before.backward_input_s - comm + slowed)


def test_megatron_core_hides_the_column_parallel_backward_collectives_only() -> None:
    """Megatron-Core on Transformer Engine without --tp-comm-overlap (the preset's ``backward_overlapped``): the
    column-parallel linears' backward collectives run asynchronously beside the GEMMs, the row-parallel output
    gradient's all-gather does not. Without sequence parallelism the backward's two all-reduces are the column-parallel
    input gradients': all of them hide; with it the backward reduce-scatters and all-gathers s·b·h twice each, the
    two all-gathers stay exposed: half hides (``backward_async_share``). Each hidden second costs the contention
    c * 0.189 / 1.189; F's collectives stay on the critical path."""
    assert load_stack("megatron-core").overlap.tp_comm == "backward_overlapped"
    exposed = RooflineTimes(MODEL, CLUSTER, "bf16", stack=_with_tp_comm("megatron-core", "exposed"))
    core = RooflineTimes(MODEL, CLUSTER, "bf16", stack=load_stack("megatron-core"))
    comm = tp_layer_comm_s(2048, MODEL.hidden_size, 2, 2, network_for(CLUSTER))
    for sp, share in ((False, 1.0), (True, 0.5)):
        before, got = exposed.transformer(2, 1, 2048, sp, "none"), core.transformer(2, 1, 2048, sp, "none")
        assert before.tp_comm_s == pytest.approx(2 * comm)
        hidden = share * comm
        slowed = hidden * 0.189 / 1.189
        assert got.forward_s == pytest.approx(before.forward_s)
        assert got.overlapped_tp_comm_s == pytest.approx(hidden - slowed)
        assert got.backward_input_s == pytest.approx(before.backward_input_s - hidden + slowed)


def test_each_shape_is_priced_once() -> None:
    roof = RooflineTimes(MODEL, CLUSTER, "bf16", stack=load_stack("ppplan-torch"))
    first = roof.transformer(1, 2, 2048, False, "none")
    assert roof.transformer(1, 2, 2048, False, "none") is first
    assert roof.operators("transformer", 1, 2, 2048, False, "none") is roof.operators("transformer", 1, 2, 2048, False, "none")
