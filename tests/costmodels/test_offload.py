"""``costmodels.offload``: Transformer Engine's offload windows, the layers left on the GPU and the exposed copies,
derived by hand; the estimate's memory and time with them; the rules that refuse what Megatron-Core refuses."""

from __future__ import annotations

import pytest

from costmodels.estimate import estimate
from costmodels.memory import GIB, layer_activation_bytes
from costmodels.offload import OffloadPlan, exposed_copy_s, layer_window, peak_resident_layers, window_spans
from costmodels.rules import config_violations, offload_violations
from costmodels.stage_plan import activation_variant
from profiles.errors import PlanError
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ClusterSpec, ParallelConfig, TrainSpec
from tests.costmodels.test_estimate import MODEL, Stack, gpu_cluster
from tests.costmodels.unit_layers import UnitLayers


def with_host_link(bandwidth_gbs: float) -> ClusterSpec:
    return ClusterSpec.model_validate(gpu_cluster().model_dump() | {"host_link": {"bandwidth_gbs": bandwidth_gbs,
                                                                                  "latency_us": 0.0}})


def test_windows_follow_transformer_engines_layer_window_map() -> None:
    """TE's map: (L // N)(k + 1) - 1, the first L % N groups shifted by k + 1 and the rest by L % N. 80 layers, 40
    groups: 2k + 1 (Megatron-Bridge's Llama3-70B GB200 FP8 recipe); 10 layers, 3 groups: 3, 6, 9; 80 layers, 60
    groups: 2k + 1 for the first 20, then k + 20."""
    assert layer_window(80, 40)[:3] == [1, 3, 5] and layer_window(80, 40)[-1] == 79
    assert layer_window(10, 3) == [3, 6, 9]
    assert layer_window(80, 60)[19:22] == [39, 40, 41] and layer_window(80, 60)[-1] == 79
    assert window_spans(10, 3) == [3, 3, 3]
    assert window_spans(8, 4) == [1, 2, 2, 2]


def test_layers_on_the_gpu_at_once() -> None:
    """While layer j runs, groups k <= j <= window[k] and the non-offloaded layers up to j hold activations.
    8 layers, 4 groups (windows 1, 3, 5, 7): at j = 7 group 3 and layers 4-7, 5; at j = 3 groups 1-3, 3: peak 5.
    80 layers, 40 groups: 41 (the backward starts with layers 40-79 and group 39); 10 layers, 3 groups: 8;
    no offload: every layer."""
    assert peak_resident_layers(8, 4) == 5
    assert peak_resident_layers(80, 40) == 41
    assert peak_resident_layers(10, 3) == 8
    assert peak_resident_layers(8, 0) == 8


def test_a_copy_shows_only_beyond_the_compute_of_its_span() -> None:
    """2 GB per layer over a 100 GB/s host link: 20 ms a copy. 8 layers, 4 groups (spans 1, 2, 2, 2): a forward
    of 15 ms a layer hides all but 5 ms of the first copy; a backward of 5 ms a layer exposes 15 ms of the first
    and 10 ms of each other."""
    cluster = with_host_link(100.0)
    plan = OffloadPlan(num_layers=8, groups=4, layer_bytes=2e9, layer_forward_s=0.015, layer_backward_s=0.005)
    forward, backward = exposed_copy_s(cluster, plan)
    assert forward == pytest.approx(0.005)
    assert backward == pytest.approx(0.015 + 3 * 0.010)


def test_a_cluster_without_a_host_link_cannot_price_offload() -> None:
    with pytest.raises(PlanError, match="host_link"):
        exposed_copy_s(gpu_cluster(), OffloadPlan(num_layers=8, groups=4, layer_bytes=1e9))


def config(offload: int, pp: int = 1, recompute: str = "none") -> ParallelConfig:
    return ParallelConfig(tp=1, pp=pp, dp=1, mbs=1, num_microbatches=2, recompute=recompute, offload_layers=offload,
                          stage_layers=[8 // pp] * pp)


def test_the_estimate_frees_the_offloaded_layers_and_adds_the_exposed_copies() -> None:
    """The test model (8 layers, F = B = W = 1 s each) offloading 4: 5 layers stay at the peak, so 3 layers'
    activations leave; with copies of 3 s (spans 1, 2, 2, 2) the forward exposes 2 + 1 + 1 + 1 = 5 s and the
    backward (2 s a layer) 1 s, per microbatch: 2 x 6 s more over the step's two microbatches."""
    train = TrainSpec(global_batch=2, seq_len=128, precision="fp32")
    stack = Stack()
    layer = layer_activation_bytes(MODEL, 128, 1, 1, False, "none", activation_variant(gpu_cluster(), train, stack))
    copy_gbs = layer / 3.0 / 1e9
    cluster = with_host_link(copy_gbs)
    plain = estimate(MODEL, cluster, train, config(0), UnitLayers(), stack=stack)
    offloaded = estimate(MODEL, cluster, train, config(4), UnitLayers(), stack=stack)
    freed = plain.memory_breakdown_gib[0]["activations"] - offloaded.memory_breakdown_gib[0]["activations"]
    assert freed == pytest.approx(3 * layer / GIB, abs=1e-4)  # the breakdown is rounded to 1e-4 GiB
    assert offloaded.step_time_s - plain.step_time_s == pytest.approx(2 * 6.0)
    assert offloaded.breakdown.offload_s == pytest.approx(2 * 6.0) and plain.breakdown.offload_s == 0.0
    assert offloaded.breakdown.overhead_s == pytest.approx(plain.breakdown.overhead_s)


def test_megatron_core_offloads_without_a_pipeline_or_recompute_and_below_the_layer_count() -> None:
    """Megatron-Core's TransformerConfig refuses offload with pipeline parallelism, with recomputation and for the
    model's layer count or more; a stack without it refuses any."""
    core, titan = load_stack("megatron-core"), load_stack("torchtitan")
    assert offload_violations(4, 8, 1, "none", core) == []
    assert "pipeline" in offload_violations(4, 8, 2, "none", core)[0]
    assert "recomputation" in offload_violations(4, 8, 1, "selective", core)[0]
    assert "at most 7" in offload_violations(8, 8, 1, "none", core)[0]
    assert "does not offload" in offload_violations(4, 8, 1, "none", titan)[0]
    assert offload_violations(0, 8, 2, "full", titan) == []
    model = load_model("llama3-8b")
    train = TrainSpec(global_batch=8, seq_len=8192, precision="bf16")
    cfg = ParallelConfig(stack="megatron-core", tp=1, pp=1, dp=8, mbs=1, num_microbatches=1, offload_layers=16,
                         zero=1, stage_layers=[32])
    assert config_violations(model, train, 8, cfg, core) == []
    assert load_cluster("gb200-nvl72").host_link is not None
