"""Runtime pieces without processes: rank grid vs mesh, stage layout, model pieces, data.

Expected values are derived by hand from the rank-grid formula
rank = (pp * dp + dp_idx) * tp + tp_idx and the plans' stage_layers.
"""

from __future__ import annotations

import math

import pytest
import torch

from costmodels.layout import local_stages, loss_pipeline_rank, stage_layouts
from costmodels.rank_grid import RankCoord
from launch.runtime.data import BRANCHING, SyntheticTokens, dp_slice
from launch.runtime.layout import grid_of, metrics_ranks, tied_embedding_pairs
from launch.runtime.model import build_full_model, build_layer, build_stage_module, lm_loss
from launch.runtime.parallel import dp_split, mesh_ranks
from launch.runtime.reference import reference_losses
from tests.launch.runtime.runtime_plans import make_plan


@pytest.mark.parametrize("zero", [0, 3])
def test_mesh_groups_are_the_rank_grid_groups(zero: int) -> None:
    cfg = make_plan(tp=2, pp=2, dp=2, zero=zero).config
    grid = grid_of(cfg)
    mesh = mesh_ranks(grid, dp_split(cfg)[0]).reshape(cfg.pp, cfg.dp, cfg.tp)
    for p in range(cfg.pp):
        for d in range(cfg.dp):
            assert mesh[p, d, :].tolist() == grid.tp_group(d, p)
        for t in range(cfg.tp):
            assert mesh[p, :, t].tolist() == grid.dp_group(p, t)
    for d in range(cfg.dp):
        for t in range(cfg.tp):
            assert mesh[:, d, t].tolist() == grid.pp_group(d, t)
    # hand-derived: (pp=1, dp=0, tp=1) -> (1*2 + 0)*2 + 1 = 5
    assert grid.rank(RankCoord(dp=0, pp=1, tp=1)) == 5 == int(mesh[1, 0, 1])


def test_uneven_stage_layouts() -> None:
    cfg = make_plan(pp=4, stage_layers=[1, 3, 3, 1], global_batch=4).config
    layouts = stage_layouts(cfg)
    assert [(s.first_layer, s.num_layers) for s in layouts] == [(0, 1), (1, 3), (4, 3), (7, 1)]
    assert [s.has_embedding for s in layouts] == [True, False, False, False]
    assert [s.has_head for s in layouts] == [False, False, False, True]


def test_v_placement_puts_loss_on_rank_zero() -> None:
    cfg = make_plan(pp=2, v=2, schedule="zbv", global_batch=4).config
    assert [s.pipeline_rank for s in stage_layouts(cfg)] == [0, 1, 1, 0]
    assert [s.stage for s in local_stages(cfg, 0)] == [0, 3]
    assert loss_pipeline_rank(cfg) == 0
    looped = make_plan(pp=2, v=2, schedule="interleaved-1f1b", global_batch=4).config
    assert [s.pipeline_rank for s in stage_layouts(looped)] == [0, 1, 0, 1]
    assert loss_pipeline_rank(looped) == 1


def test_tied_embedding_pairs_and_metric_ranks() -> None:
    plan = make_plan(tp=2, pp=2, dp=2)
    # embedding on pp rank 0, logits on pp rank 1: pair (dp, 0, tp) with (dp, 1, tp)
    assert tied_embedding_pairs(plan.model, plan.config) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert metrics_ranks(plan.config) == [0, 4]
    zbv = make_plan(pp=2, v=2, schedule="zbv", global_batch=4)
    assert tied_embedding_pairs(zbv.model, zbv.config) == []  # both copies on pp rank 0
    llama = make_plan("tiny-llama", pp=2)
    assert tied_embedding_pairs(llama.model, llama.config) == []  # untied


@pytest.mark.parametrize("model", ["tiny-gpt", "tiny-llama"])
def test_stage_chain_equals_full_model(model: str) -> None:
    plan = make_plan(model, pp=4, stage_layers=[1, 3, 3, 1], global_batch=4)
    full = build_full_model(plan.model, seed=3)
    tokens = torch.randint(0, plan.model.vocab_size, (2, 16))
    x = tokens
    for lay in stage_layouts(plan.config):
        stage = build_stage_module(plan.model, lay.first_layer, lay.num_layers, lay.has_embedding, lay.has_head, seed=3)
        x = stage(x)
    torch.testing.assert_close(x, full(tokens), rtol=0, atol=0)


def test_tied_and_untied_parameter_counts() -> None:
    gpt = make_plan("tiny-gpt").model
    llama = make_plan("tiny-llama").model
    h, v, s, f = 256, 1024, 128, 1024
    gpt_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # qkvo + biases, mlp + biases, two LayerNorms
    assert sum(p.numel() for p in build_full_model(gpt).parameters()) == v * h + s * h + 8 * gpt_layer + 2 * h
    kv = 4 * 32
    llama_layer = 2 * h * h + 2 * h * kv + 3 * h * 704 + 2 * h  # q, o, k, v, SwiGLU, two RMSNorms
    assert sum(p.numel() for p in build_full_model(llama).parameters()) == 2 * v * h + 8 * llama_layer + h


@pytest.mark.parametrize("kind", ["selective", "full"])
def test_recompute_keeps_gradients(kind: str) -> None:
    spec = make_plan("tiny-llama").model
    tokens = torch.randint(0, spec.vocab_size, (2, 16))
    grads = []
    for recompute in ("none", kind):
        net = build_full_model(spec)
        for layer in net.layers.values():
            layer.set_recompute(recompute)
        lm_loss(net(tokens[:, :-1]), tokens[:, 1:]).backward()
        grads.append(net.layers["0"].attention.wq.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt", "tiny-moe", "tiny-moe+shared"])
def test_full_recompute_reruns_the_gemms_the_stack_prices(name: str) -> None:
    """The GEMM FLOPs a layer's backward runs beyond its no-recompute backward under ``full`` are the re-run forward
    the ppplan-torch stack prices: torch's non-reentrant checkpoint stops once the forward's last saved tensor is
    packed again (``full_recompute_early_stop``), before a dense block's w2, or an MoE block's shared experts' w2
    (they run after the combine); an MoE block without shared experts ends with the weighted combine, which saves
    the expert outputs, so all of its GEMMs run again. Counted by torch's FlopCounterMode (aten.mm / addmm; SDPA is
    not counted on CPU, and the priced attention core is left out alike)."""
    from torch.utils.flop_counter import FlopCounterMode

    from costmodels.layer_ops import transformer_layer_ops
    from costmodels.operators import Gemm, LayerShape
    from profiles.loader import load_stack

    spec = make_plan(name.removesuffix("+shared")).model
    if name.endswith("+shared"):
        spec = spec.model_copy(update={"num_shared_experts": 1, "shared_expert_ffn_hidden_size": 512})
    batch, seq = 2, 16
    backward = {}
    for recompute in ("none", "full"):
        torch.manual_seed(0)
        layer = build_layer(spec, 0)
        layer.set_recompute(recompute)
        out = layer(torch.randn(batch, seq, spec.hidden_size, requires_grad=True))
        with FlopCounterMode(display=False) as counted:
            out.sum().backward()
        backward[recompute] = counted.get_total_flops()
    moe = spec.is_moe
    ops = transformer_layer_ops(spec, LayerShape(1, batch, seq, False, "full", 4, moe=moe), load_stack("ppplan-torch").kernels)
    priced = sum(op.flops for op in ops.recompute if isinstance(op, Gemm))
    last_w2 = {"tiny-llama": spec.ffn_size, "tiny-gpt": spec.ffn_size, "tiny-moe": 0, "tiny-moe+shared": 512}[name]
    skipped = 2 * batch * seq * last_w2 * spec.hidden_size
    assert backward["full"] - backward["none"] == priced == sum(op.flops for op in ops.forward if isinstance(op, Gemm)) - skipped


def test_data_is_deterministic_and_sliced_by_dp() -> None:
    data = SyntheticTokens(vocab_size=1024, seq_len=32, seed=0)
    inputs, targets = data.global_batch(step=2, global_batch=8)
    again, _ = data.global_batch(step=2, global_batch=8)
    assert torch.equal(inputs, again)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(dp_slice(inputs, 4, 3), inputs[6:8])
    table = data.successor_table()
    follows = table[inputs[:, :-1].reshape(-1)]
    assert (follows == inputs[:, 1:].reshape(-1, 1)).any(dim=1).all()  # every token is a listed successor
    assert math.log(BRANCHING) < math.log(1024)


def test_reference_loss_starts_near_uniform_and_falls() -> None:
    plan = make_plan("tiny-gpt", global_batch=8, seq_len=32)
    losses = reference_losses(plan.model, plan.train, steps=4)
    assert abs(losses[0] - math.log(1024)) < 0.2
    assert losses[-1] < losses[0] - 0.3


def test_a_stage_shards_each_layer_before_it_builds_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tp > 1 no two unsharded layers are ever alive together (``build._build_module``): the
    order of events is build 0, shard 0, build 1, shard 1, ..., then the embedding and head's plan."""
    from launch.runtime import build, model

    events: list[str] = []
    real_build_layer = model.build_layer

    def build_layer(spec, index, seed=0, experts=None):
        events.append(f"build {index}")
        return real_build_layer(spec, index, seed, experts)

    monkeypatch.setattr(model, "build_layer", build_layer)
    monkeypatch.setattr(build, "parallelize_layer", lambda layer, mesh, sp, sp_regather=False: events.append("shard"))
    monkeypatch.setattr(build, "apply_tensor_parallel", lambda stage, mesh, sp, layers_done=False: events.append(f"ends {layers_done}"))
    plan = make_plan("tiny-gpt", tp=2, pp=2, dp=1, mbs=1, global_batch=4)
    layout = local_stages(plan.config, 0)[0]
    build._build_module(plan, layout, 0, torch.device("cpu"), None, tp_mesh=object())
    assert events == [e for i in range(layout.num_layers) for e in (f"build {i}", "shard")] + ["ends True"]


def test_autocast_keeps_a_bf16_copy_of_every_gemm_weight_per_microbatch() -> None:
    """torch.autocast over fp32 parameters (ppplan's runtime until 2026-12; torchtitan without FSDP, TP or PP):
    each microbatch's forward casts every GEMM weight to bf16 and saves the cast for its backward, a copy of its own
    per microbatch (autocast clears its cache when the region exits). A stack with ``autocast_fp32_params`` prices
    exactly that: ``gemm_weight_copy_bytes`` (2) per GEMM weight of the stage's layers and head, not the embedding
    lookup's table, per microbatch in flight (``costmodels.stage_plan.plan_stage``); ppplan-torch as shipped, FSDP2's
    mixed precision, none."""
    from costmodels.memory import stage_param_split
    from costmodels.stage_plan import activation_variant
    from profiles.loader import load_cluster, load_model, load_stack
    from profiles.schema import TrainSpec

    model = load_model("tiny-llama")
    stage = build_stage_module(model, 0, 2, True, True, seed=3)
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    weight_bytes = {2 * p.numel() for p in stage.parameters() if p.dim() == 2}  # a bf16 cast's storage (16 tokens'
    copies: dict[int, int] = {}  # activations are far smaller than any weight of tiny-llama)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # the GEMMs save the cast or a transposed view of it
        if t.dtype == torch.bfloat16 and storage.nbytes() in weight_bytes and storage.data_ptr() not in params:
            copies[storage.data_ptr()] = storage.nbytes()
        return t

    outputs = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(2):  # two microbatches in flight
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs.append(stage(torch.randint(0, model.vocab_size, (1, 16))))
    gemm_params = stage_param_split(model, 0, 2, False, True, 1).total  # layers and head, no embedding table
    norms = sum(p.numel() for name, p in stage.named_parameters() if p.dim() == 1)
    assert sum(copies.values()) == 2 * 2 * (gemm_params - norms)  # 2 microbatches x 2 B, the norms' scales not cast
    cluster, shipped = load_cluster("dgx-a100-80g"), load_stack("ppplan-torch")
    train = TrainSpec(global_batch=8, seq_len=16, precision="bf16")
    variant = activation_variant(cluster, train, shipped.with_changes({"autocast_fp32_params": True}))
    assert (variant.gemm_weight_copy_bytes, variant.residual_stream_bytes, variant.bytes_per_element) == (2, 4, 2)
    variant = activation_variant(cluster, train, shipped)
    assert (variant.gemm_weight_copy_bytes, variant.residual_stream_bytes, variant.bytes_per_element) == (0, 2, 2)
    fp32 = activation_variant(cluster, TrainSpec(global_batch=8, seq_len=16, precision="fp32"), shipped)
    assert (fp32.gemm_weight_copy_bytes, fp32.residual_stream_bytes, fp32.bytes_per_element) == (0, 4, 4)


def test_fsdp_mixed_precision_keeps_one_bf16_copy_of_the_weights_for_every_microbatch(tmp_path) -> None:
    """ppplan's runtime runs bf16 as FSDP2's mixed precision (``launch/runtime/fsdp.py``), on a one-rank mesh at
    dp x cp = 1. Run as torch.distributed.pipelining runs a stage (gradient sync off until the step's reduce) with a
    split backward (torch's B, then W), three microbatches:
    - the forward computes with bf16 unsharded parameters that every microbatch shares: the GEMMs of the
      microbatches save the same weight storages, those of the module's unsharded parameters (2 B per parameter);
    - each W leaves a bf16 ``.grad`` on the unsharded parameters after FSDP2's post-backward has run, and the next
      microbatch's backward folds it into an fp32 accumulator: from the first W on the stage holds both (4 + 2 B,
      ``costmodels.memory.bf16_grads_beside_fp32``); without the fp32 reduce dtype there would be no fp32 one;
    - the parameters FSDP2 shards back to are fp32 (the master weights)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

    from launch.runtime.fsdp import apply_data_parallel
    from profiles.loader import load_model

    model = load_model("tiny-llama")
    stage = build_stage_module(model, 0, 2, False, False, seed=3)
    shapes = {tuple(p.shape) for p in stage.parameters() if p.dim() == 2}
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp_replicate", "dp_shard"))
        apply_data_parallel(stage, mesh, zero=1, precision="bf16")
        stage.set_requires_gradient_sync(False)  # as torch's pipeline stage does before every backward but the step's reduce
        stage.set_reshard_after_backward(False)
        fsdp_params = [fp for module in stage.modules() if hasattr(module, "_get_fsdp_state")
                       for group in [module._get_fsdp_state()._fsdp_param_group] if group for fp in group.fsdp_params]

        def held() -> tuple[set, set]:
            accumulated = {None if fp.unsharded_accumulated_grad is None else fp.unsharded_accumulated_grad.dtype for fp in fsdp_params}
            return accumulated, {None if fp.unsharded_param.grad is None else fp.unsharded_param.grad.dtype for fp in fsdp_params}

        saved: list[set[int]] = []
        for microbatch in range(3):
            weights: set[int] = set()

            def pack(t: torch.Tensor, weights: set[int] = weights) -> torch.Tensor:
                if t.dtype == torch.bfloat16 and t.dim() == 2 and (tuple(t.shape) in shapes or tuple(t.shape[::-1]) in shapes):
                    weights.add(t.untyped_storage().data_ptr())
                return t

            x = (torch.randn(1, 16, model.hidden_size) * 0.5).to(torch.bfloat16).requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = stage(x)
            saved.append(weights)
            assert all(p.dtype == torch.bfloat16 for p in stage.parameters())
            unsharded = {p.untyped_storage().data_ptr() for p in stage.parameters()}
            _, groups = stage_backward_input([out], [torch.ones_like(out)], [x], stage.parameters())
            assert held() == ({None if microbatch == 0 else torch.float32}, {None})  # B folded the last W's .grad
            stage_backward_weight(stage.parameters(), groups)
            assert held() == ({None if microbatch == 0 else torch.float32}, {torch.bfloat16})  # both, after W
        assert saved[0] and saved[0] == saved[1] == saved[2] and saved[0] <= unsharded
        for module in stage.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        assert all(p.dtype == torch.float32 for p in stage.parameters())
    finally:
        dist.destroy_process_group()
