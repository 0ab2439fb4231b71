"""Mixture-of-experts layers as their stack runs them: the router, the routed experts on the tokens a
rank receives, the shared experts, the permutation copies, and the token dispatch and combine over
the expert-parallel group (operators of ``costmodels.operators``).

Tokens. A rank runs the layer on its ``T = s·b / cp`` tokens, each routed to ``k`` of the ``E``
experts: ``T·k`` assignments. With ``ep`` expert-parallel ranks each holds ``E / ep`` experts and,
after the dispatch all-to-all, computes the assignments of all ``ep`` ranks that fall on its
experts: ``T·k`` on average, ``rank_load_imbalance × T·k`` on the busiest rank, whose work and
whose all-to-all every rank waits for (the combine synchronises the group). Without expert
parallelism a rank computes its own ``T·k`` assignments whatever their spread over experts.

Stacks (``StackKernels.expert_dispatch``): ``tp_replicated`` (ppplan's runtime,
``launch/runtime/moe.py``; torchtitan): every tensor-parallel rank routes and dispatches all of
its data-parallel rank's tokens and runs its FFN shard of its experts on them; the expert outputs stay
partial sums over tp and the block's sum is reduced once on exit (reduce-scattered to sequence shards
after an all-gather on entry under sequence parallelism). In B ppplan's runtime reduces the experts'
input gradients once at the entry and all-reduces the router scores' gradient; torchtitan v0.2.2
(``moe_tp_input_grads_per_linear``) all-reduces each tp-sharded linear's input gradient. ``tp_split``
(Megatron-Core's alltoall dispatcher, expert TP = tp, sequence parallelism required): a tp rank routes
and dispatches its ``1/tp`` share, all-gathers what it receives over tp and reduce-scatters the
outputs. The tp collectives are priced with the layer's others
(``costmodels.layer_costs.tp_comm_passes``).

Expert TP 1 under tp > 1 (``etp``; Megatron-Core's MoE parallel folding, ``tp_split`` only): every
rank holds ``E / ep`` whole experts, the expert-parallel group being ``ep`` consecutive ranks of the
stage's tp x cp x dp (``costmodels.rank_grid``); a tp rank dispatches its ``1/tp`` share and computes
the full-width FFN on the ``1/tp`` of the routed rows it receives, with no tp collective on them. The
FLOPs are those of expert TP = tp; the GEMMs are ``tp`` times taller and narrower, the weights ``tp``
times larger per rank.
"""

from __future__ import annotations

import functools
import math

from costmodels.comm import GroupPlacement
from costmodels.operators import FP32_BYTES, AllToAll, LayerOps, LayerShape, MemoryBound, activation, linear, norm, residual
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels

# The busiest expert's share of routed tokens over the mean. Routers trained with a load-balancing
# loss keep experts near, not at, the mean: Switch Transformer runs its experts with a capacity of
# 1.25x the mean ("capacity factor 1.25", Fedus, Zoph & Shazeer 2022, JMLR, Sec. 2.2 and Table 1,
# where 1.0-1.25 drop few tokens). Megatron-Core's and ppplan's dropless routers compute every token
# instead, so the busiest expert computes its excess rather than dropping it: a stated assumption
# (ppplan's runtime drops no tokens; `ppplan compare` shows what a run measured).
EXPERT_LOAD_IMBALANCE = 1.25
COUNT_BYTES = 8  # int64 tokens-per-expert counts exchanged before the dispatch (launch/runtime/moe.py)
# Element-wise passes over the routed rows (R·h values), forward and again backward: gather into
# expert order (read + write: 2), scatter back (2), weight by the router probabilities and sum over k
# (read the rows and write them weighted, 2, then the sum reads them, 1): 7 accesses.
PERMUTE_ACCESSES = 7
# ppplan's runtime with ep > 1 also reorders what it receives from source-rank into expert order and
# back (launch/runtime/moe.py ``_source_to_expert_order``): 2 more gathers.
SOURCE_ORDER_ACCESSES = 4


def ep_group_placement(tp: int, ep: int, gpus_per_node: int) -> GroupPlacement:
    """An expert-parallel group: ``ep`` ranks ``tp`` apart on the rank grid (pass the expert TP: tp, or 1
    under parallel folding, ``RankGrid.ep_group``); every rank of a node dispatches at once (all groups
    run together)."""
    per_node = max(1, min(ep, gpus_per_node // tp))
    return GroupPlacement(size=ep, ranks_per_node=per_node, nodes=-(-ep // per_node), node_senders=gpus_per_node)


@functools.lru_cache(maxsize=512)
def expected_max_standard_normal(n: int) -> float:
    """E[max of n independent standard normals] = ∫ x·n·φ(x)·Φ(x)^(n-1) dx (order statistics; e.g.
    David & Nagaraja, "Order Statistics", 3rd ed., Table 3.1: 0.5642 for n = 2, 1.0294 for 4, 1.4236
    for 8), by the midpoint rule on [-10, 10]."""
    if n <= 1:
        return 0.0
    steps, lo, hi = 4000, -10.0, 10.0
    dx = (hi - lo) / steps
    total = 0.0
    for i in range(steps):
        x = lo + (i + 0.5) * dx
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        total += x * n * pdf * cdf ** (n - 1) * dx
    return total


def rank_load_imbalance(num_experts: int, ep: int, expert_imbalance: float = EXPERT_LOAD_IMBALANCE) -> float:
    """The busiest of ``ep`` expert-parallel ranks' routed load over the mean, each rank holding
    ``E / ep`` experts. Expert loads are taken as independent with one spread σ, set so that the
    expected busiest of the ``E`` experts carries ``expert_imbalance`` (``1 + σ·z(E)``, z the expected
    maximum of standard normals); a rank sums ``E / ep`` of them, so its load's spread is
    ``σ / sqrt(E / ep)`` and the busiest rank carries ``1 + σ·sqrt(ep / E)·z(ep)``. At one expert per
    rank (``ep = E``) that is ``expert_imbalance`` itself; more experts per rank average out: Mixtral's
    8 experts give 1.05 at ep 2, 1.13 at ep 4, 1.25 at ep 8 (a stated assumption, like the factor)."""
    if ep <= 1 or num_experts <= 1:
        return 1.0
    sigma = (expert_imbalance - 1.0) / expected_max_standard_normal(num_experts)
    return 1.0 + sigma * math.sqrt(ep / num_experts) * expected_max_standard_normal(ep)


def routed_rows(model: ModelSpec, tokens: float, ep: int, imbalance: float | None = None) -> float:
    """Assignments the busiest rank's experts compute for ``tokens`` tokens per rank (module docstring):
    ``rank_load_imbalance`` of the mean; ``imbalance`` replaces it where a run states its routing (a
    benchmark that forces balanced routing: 1.0)."""
    k = model.experts_per_token or 0
    if ep <= 1:
        return tokens * k
    factor = rank_load_imbalance(model.num_experts or 0, ep) if imbalance is None else imbalance
    return tokens * k * factor


def dispatch_rows(model: ModelSpec, tokens: float, tp: int, ep: int, kernels: StackKernels,
                  imbalance: float | None = None) -> float:
    """Rows the busiest rank exchanges in one all-to-all: its routed rows (``tp_replicated``), or their
    ``1/tp`` share (``tp_split``)."""
    rows = routed_rows(model, tokens, ep, imbalance)
    return rows / tp if kernels.expert_dispatch == "tp_split" else rows


def local_rows(rows: float, shape: LayerShape) -> float:
    """Of the busiest rank's routed ``rows``, those its experts compute on one tp rank: all of them
    under expert TP = tp, the ``1/tp`` its tp rank dispatched under expert TP 1 (module docstring)."""
    return rows * shape.expert_tp / shape.tp


def dispatch_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """The dispatch and combine all-to-alls (and their gradients in B); ppplan's runtime first
    exchanges the tokens-per-expert counts (forward only, no autograd)."""
    if shape.ep == 1:
        return LayerOps()
    h, p = model.hidden_size, shape.bytes_per_element
    payload = dispatch_rows(model, shape.tokens, shape.tp, shape.ep, kernels, shape.expert_imbalance) * h * p
    forward: tuple = (AllToAll("moe.dispatch", payload), AllToAll("moe.combine", payload))
    if kernels.expert_dispatch == "tp_replicated":
        forward = (AllToAll("moe.counts", COUNT_BYTES * (model.num_experts or 0)), *forward)
    backward = (AllToAll("moe.combine.bwd", payload), AllToAll("moe.dispatch.bwd", payload))
    return LayerOps(forward=forward, backward_input=backward)


def _router(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """The router GEMM (h -> E, on each tp rank's tokens: all of them, or its 1/tp with ``tp_split``) and
    the fp32 top-k softmax over its logits: cast (p + 4), top-k read (4), F p + 8 bytes per logit; B
    the softmax and scatter back into the logits' gradient (4 + 4 + p)."""
    experts, p = model.num_experts or 0, shape.bytes_per_element
    tokens = shape.tokens / shape.tp if kernels.expert_dispatch == "tp_split" else shape.tokens
    route = LayerOps(forward=(MemoryBound("moe.route", (p + 2 * FP32_BYTES) * tokens * experts),),
                     backward_input=(MemoryBound("moe.route.bwd", (p + 2 * FP32_BYTES) * tokens * experts),))
    return linear("moe.router", tokens, model.hidden_size, experts).plus(route)


def _permutation(model: ModelSpec, shape: LayerShape, kernels: StackKernels, rows: float) -> LayerOps:
    rows = local_rows(rows, shape)
    accesses = PERMUTE_ACCESSES
    if shape.ep > 1 and kernels.expert_dispatch == "tp_replicated":
        accesses += SOURCE_ORDER_ACCESSES
    moved = accesses * rows * model.hidden_size * shape.bytes_per_element
    return LayerOps(forward=(MemoryBound("moe.permute", moved),), backward_input=(MemoryBound("moe.permute.bwd", moved),))


def _expert_mlp(name: str, model: ModelSpec, shape: LayerShape, kernels: StackKernels, rows: float, ffn: float,
                groups: float, tp: int) -> LayerOps:
    """``groups`` MLPs of FFN ``ffn / tp`` on ``rows / groups`` rows each (grouped GEMMs)."""
    h, p = model.hidden_size, shape.bytes_per_element
    swiglu = model.activation == "swiglu"
    ops = linear(f"{name}.fc1", rows / groups, h, (2 if swiglu else 1) * ffn / tp, groups)
    ops = ops.plus(activation(rows * ffn / tp, p, swiglu, kernels.fused_activation, f"{name}.act"))
    return ops.plus(linear(f"{name}.fc2", rows / groups, ffn / tp, h, groups))


def moe_mlp_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """The MLP block of a mixture-of-experts layer: norm, router, dispatch, the rank's ``E / ep`` routed
    experts on the rows they receive, combine, the shared experts on every token, residual."""
    t, h, p = shape.tokens, model.hidden_size, shape.bytes_per_element
    rows = routed_rows(model, t, shape.ep, shape.expert_imbalance)
    local = (model.num_experts or 0) / shape.ep
    ops = norm("mlp.norm", shape.replicated_tokens * h, p, shape.composite_rmsnorm and model.norm == "rmsnorm")
    ops = ops.plus(_router(model, shape, kernels)).plus(dispatch_ops(model, shape, kernels))
    ops = ops.plus(_permutation(model, shape, kernels, rows))
    ops = ops.plus(_expert_mlp("moe.expert", model, shape, kernels, local_rows(rows, shape), model.moe_ffn_hidden_size or 0,
                               local, shape.expert_tp))
    if model.shared_expert_ffn_hidden_size:
        ops = ops.plus(_expert_mlp("moe.shared", model, shape, kernels, t, model.shared_expert_ffn_hidden_size, 1, shape.tp))
    return ops.plus(residual("mlp.residual", shape.replicated_tokens * h, p, kernels.dropout, kernels.fused_activation))


TpCollective = tuple[str, float]  # a tp collective's kind (all_reduce, all_gather, reduce_scatter) and its rows of h


def moe_tp_block_reduction(tokens: float, sequence_parallel: bool) -> TpCollective:
    """A ``tp_replicated`` block's one reduction of its ``tokens`` partial sums over tp, its output's on exit in F and
    its input gradient's at the entry in B: an all-reduce, or with sequence parallelism a reduce-scatter to sequence
    shards (``moe_tp_collectives``)."""
    return ("reduce_scatter", tokens) if sequence_parallel else ("all_reduce", tokens)


def moe_tp_collectives(model: ModelSpec, tokens: float, tp: int, ep: int, sequence_parallel: bool, kernels: StackKernels,
                       imbalance: float | None = None, etp: int | None = None, *, bytes_per_elem: int,
                       ) -> tuple[tuple[TpCollective, ...], tuple[TpCollective, ...]]:
    """The tp collectives of a mixture-of-experts MLP block in F and in B, as rows of h at ``bytes_per_elem`` (an
    all-gather's rows are its output's, a reduce-scatter's its input's; an all-gather plus a reduce-scatter of the
    same rows move what one all-reduce of them moves). The attention's are the dense layer's
    (``costmodels.layer_costs``).

    - ``tp_split`` (Megatron-Core): the routed expert outputs (``routed_rows``; none with expert TP 1) and the
      shared experts' output, each reduced where it is computed, in F and their gradients in B.
    - ``tp_replicated``: the routed and shared experts' outputs stay partial sums over tp; F reduces the block's sum
      once on exit (Shoeybi et al. 2019, Sec. 3, g), reduce-scattered to sequence shards after the input's
      all-gather on entry under sequence parallelism (Korthikanti et al. 2022, Sec. 4.2). B all-gathers the output's
      gradient (sequence parallelism), then:
      - ppplan's runtime (``launch/runtime/moe.py`` ``MoEFeedForward``): all-reduces the T·k router scores' fp32 gradient
        (each rank's is the output gradient against its partial expert outputs) and reduces the experts' input
        gradient once at the entry (an all-reduce, Megatron's f, or the entry all-gather's reduce-scatter);
      - ``moe_tp_input_grads_per_linear`` (torchtitan v0.2.2 and 2645c02, ``distributed/expert_parallel.py``
        TensorParallel and ExpertTensorParallel, ``models/llama4/infra/parallelize.py`` ``apply_moe_ep_tp``):
        all-reduces the gradient of each replicated input a tp-sharded linear reads: the rank's own ``T·k`` routed
        rows (the routed experts' input, its gradient declared Partial, before the dispatch) and the shared
        experts' input once per column-parallel projection (w1, and w3 of a SwiGLU)."""
    if tp <= 1:
        return (), ()
    if kernels.expert_dispatch == "tp_split":
        reduced: tuple[TpCollective, ...] = (("all_reduce", routed_rows(model, tokens, ep, imbalance)),) \
            if etp in (None, tp) else ()
        if model.shared_expert_ffn_hidden_size:
            reduced += (("all_reduce", tokens),)
        return reduced, reduced
    k = model.experts_per_token or 0
    gather: tuple[TpCollective, ...] = (("all_gather", tokens),) if sequence_parallel else ()  # F's input, B's gradient
    reduction = moe_tp_block_reduction(tokens, sequence_parallel)
    if kernels.moe_tp_input_grads_per_linear:
        shared_inputs = 0
        if model.shared_expert_ffn_hidden_size:
            shared_inputs = 2 if model.activation == "swiglu" else 1
        input_gradients = (("all_reduce", tokens * k),) + (("all_reduce", tokens),) * shared_inputs
        return gather + (reduction,), gather + input_gradients
    scores = (("all_reduce", tokens * k * FP32_BYTES / (model.hidden_size * bytes_per_elem)),)
    return gather + (reduction,), gather + scores + (reduction,)


def moe_activation_bytes(model: ModelSpec, tokens: float, tp: int, ep: int, p: int, ffn_tensors: int,
                         etp: int | None = None, gemm_input_bytes: int | None = None,
                         probs_in_activation: bool = False) -> float:
    """What an MoE MLP block keeps for backward per tp rank, beyond its input (the dense formula's "MLP
    input"): the rows the experts receive (``routed_rows``, the fc1 input) and their ``ffn_tensors``
    FFN-wide tensors per row (the last of them the fc2 input), the k weighted copies of each own token
    before the sum (router-weighted outputs), the fp32 top-k probabilities and two int64 index arrays per
    assignment (the runtime's saved tensors, ``launch/runtime/moe.py``; Megatron's permute / unpermute
    keep the same rows), and the shared experts' FFN tensors. ``gemm_input_bytes`` is what a saved GEMM
    input takes per value (1 where an fp8 run keeps the fp8-cast input, ``StackKernels.fp8_saved_gemm_inputs``;
    None: ``p``). ``probs_in_activation``: the router probabilities multiply the expert activation's output
    instead of the expert outputs, so the combine keeps no weighted copies (Megatron-Core's GroupedMLP and
    TEGroupedMLP, ``activation_func_with_probs``: ``StackKernels.moe_probs_in_activation``). With expert TP 1
    a tp rank keeps the ``1/tp`` of the rows and tokens it routed, each row's FFN tensors at full width (the
    same bytes as expert TP = tp's)."""
    h, k = model.hidden_size, model.experts_per_token or 0
    g = p if gemm_input_bytes is None else gemm_input_bytes
    rows = routed_rows(model, tokens, ep)
    share = 1.0 if etp in (None, tp) else etp / tp
    copies = 0.0 if probs_in_activation else tokens * k * h * p
    per_ffn_value = (ffn_tensors - 1) * p + g  # the FFN-wide tensors, the last one the fc2 input
    routed = share * (rows * h * g + copies) + per_ffn_value * rows * (model.moe_ffn_hidden_size or 0) / tp
    routing = share * tokens * k * (FP32_BYTES + 2 * 8)
    shared = per_ffn_value * tokens * (model.shared_expert_ffn_hidden_size or 0) / tp
    return routed + routing + shared
