"""The pieces ``ppplan profile`` measures, and how it times and sizes them (torch).

A case is one layer kind at one (tp, mbs, seq_len, recompute), built from the
runtime's own code (``launch.runtime.model``; a mixture-of-experts layer with all its routed
experts, ep = 1, and its router and routed experts alone, ``RoutedExperts``) inside a
``StageModule`` the way the runtime builds a stage: fp32 weights, or for bf16 plans the bf16 weights
FSDP2's mixed precision computes with (``launch.runtime.fsdp.MIXED_PRECISION``), recompute set per layer. TP > 1 is either
the shapes one TP rank holds, on one device (``sharded_stage``), or the runtime's
DTensor plan over a real TP group (``launch.runtime.tp.apply_tensor_parallel``).

Passes, split as torch's zero-bubble pipeline stages split them
(``torch.distributed.pipelining._backward``, Qi et al. 2023, Sec. 2): F; B = the
gradient with respect to the input only (``stage_backward_input``); W = the gradient
with respect to the weights only (``stage_backward_weight``); and, after a second F,
the unsplit backward (B and W in one autograd call, what schedules without a split
run). Under full recompute torch's split W runs one autograd call per parameter group
and non-reentrant checkpointing re-runs the layer's forward in each.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from launch.runtime import model as runtime_model
from launch.runtime.fsdp import MIXED_PRECISION
from launch.runtime.moe import ExpertGroups, MoEFeedForward
from profiles.schema import ModelSpec

Clock = Callable[[], float]
INPUT_SEED = 1234
LAYER_KINDS_WITH_RECOMPUTE = ("transformer", "moe_transformer")


@dataclass(frozen=True)
class GridPoint:
    kind: str
    tp: int
    mbs: int
    seq_len: int
    recompute: str = "none"
    cp: int = 1  # > 1: one rank of a ring of cp processes, holding seq_len / cp positions
    sequence_parallel: bool = False  # tp > 1 in a TP group with Korthikanti et al.'s sequence parallelism

    @property
    def group_size(self) -> int:
        """Processes that time it together: the ring's cp, else the TP degree (in a TP group)."""
        return self.cp if self.cp > 1 else self.tp

    @property
    def group_only(self) -> bool:
        """Whether it exists only in its group (a ring's rank, a sequence-parallel layer): built, timed and sized
        there, where the other group points are sized from their sharded shapes on one device."""
        return self.cp > 1 or self.sequence_parallel

    @property
    def label(self) -> str:
        extra = f" recompute={self.recompute}" if self.kind in LAYER_KINDS_WITH_RECOMPUTE else ""
        ring = f" cp={self.cp}" if self.cp > 1 else ""
        sp = " sp" if self.sequence_parallel else ""
        return f"{self.kind} tp={self.tp}{sp}{ring} mbs={self.mbs} seq={self.seq_len}{extra}"


@dataclass
class Case:
    """One grid point on its device: the stage, its trainable parameters, inputs and F."""

    stage: Any
    params: list[Any]
    inputs: list[Any]
    forward: Callable[..., Any]
    output_grad: Any = None


def _sharded_linear(linear: Any, tp: int, split: str) -> Any:
    """A Linear of one TP rank's shape: output split (column-parallel) or input split (row-parallel)."""
    fan_in = linear.in_features // (tp if split == "in" else 1)
    fan_out = linear.out_features // (tp if split == "out" else 1)
    new = torch.nn.Linear(fan_in, fan_out, bias=linear.bias is not None)
    with torch.no_grad():
        torch.nn.init.normal_(new.weight, 0.0, runtime_model.INIT_STD)
        if new.bias is not None:
            new.bias.zero_()
    return new


class RoutedExperts(torch.nn.Module):
    """An MoE layer's router and routed experts alone (no norm, attention, shared experts or residual):
    the part of the layer whose work follows the routed load (``ppplan profile``'s "experts" kind)."""

    def __init__(self, feed_forward: MoEFeedForward) -> None:
        super().__init__()
        feed_forward.shared = None
        self.feed_forward = feed_forward

    def set_recompute(self, kind: str) -> None:
        if kind != "none":
            raise ValueError("the routed experts are profiled without recompute")

    def forward(self, x: Any) -> Any:
        # a copy, as the layer's residual add makes one: torch's split backward detaches the stage
        # output in place, which a view (the block's output) refuses
        return self.feed_forward(x).clone()


def build_stage(model: ModelSpec, kind: str) -> Any:
    """A ``StageModule`` holding only the piece ``kind`` (unsharded): a dense layer is layer 0 (dense
    models) or the first of ``first_dense_layers``; an MoE layer the first from ``first_dense_layers``
    on, all its routed experts on this one rank (ep = 1)."""
    if kind == "embedding":
        return runtime_model.StageModule(runtime_model.build_embedding(model), {}, None)
    if kind == "head":
        return runtime_model.StageModule(None, {}, runtime_model.build_head(model))
    if kind == "transformer":
        if model.is_moe and model.first_dense_layers == 0:
            raise ValueError(f"{model.name} has no dense transformer layer")
        return runtime_model.StageModule(None, {0: runtime_model.build_layer(model, 0)}, None)
    layer = runtime_model.build_layer(model, model.first_dense_layers)
    if kind == "experts":
        return runtime_model.StageModule(None, {0: RoutedExperts(layer.feed_forward)}, None)
    return runtime_model.StageModule(None, {0: layer}, None)


def shard_in_place(stage: Any, model: ModelSpec, tp: int) -> None:
    """Give ``stage`` the shapes one TP rank holds in Megatron's split (``launch/runtime/tp.py``):
    column-parallel q/k/v and fc1 (w1, w3), row-parallel wo and fc2, vocab-parallel embedding and logits."""
    if tp == 1:
        return
    vocab_shard = -(-model.vocab_size // tp)
    for layer in stage.layers.values():
        attn, ffn = getattr(layer, "attention", None), layer.feed_forward
        if attn is not None:
            attn.wq, attn.wk, attn.wv = (_sharded_linear(m, tp, "out") for m in (attn.wq, attn.wk, attn.wv))
            attn.wo = _sharded_linear(attn.wo, tp, "in")
        if isinstance(ffn, MoEFeedForward):  # expert TP = tp: each expert keeps 1/tp of its FFN rows
            for experts in (ffn.experts, ffn.shared):
                if experts is not None:
                    experts.keep_ffn_rows(0, experts.w1.shape[1] // tp)
            continue
        ffn.w1 = _sharded_linear(ffn.w1, tp, "out")
        ffn.w3 = _sharded_linear(ffn.w3, tp, "out") if ffn.w3 is not None else None
        ffn.w2 = _sharded_linear(ffn.w2, tp, "in")
    if stage.embedding is not None:
        stage.embedding.tok = torch.nn.Embedding(vocab_shard, model.hidden_size)
    if stage.head is not None:
        stage.head.proj = torch.nn.Linear(model.hidden_size, vocab_shard, bias=False)


def _head_loss(stage: Any, tp: int, gather: bool, targets: Any) -> Callable[[Any], Any]:
    """Head forward and loss as the runtime runs them: logits column-parallel over the vocabulary,
    gathered back to the full vocabulary before the cross-entropy (on one device the gather is a copy)."""

    def forward(x: Any) -> Any:
        logits = stage(x)
        if gather and tp > 1:
            logits = torch.cat([logits] * tp, dim=-1)
        return runtime_model.lm_loss(logits, targets)

    return forward


def make_case(
    model: ModelSpec, point: GridPoint, precision: str, device: str, tp_mesh: Any = None, cp_group: Any = None
) -> Case:
    """Build ``point`` on ``device``: sharded shapes on one device, or the runtime's TP plan on ``tp_mesh`` (with
    sequence parallelism where the point has it: the hidden states in and out are this rank's ``seq_len / tp``
    positions, the embedding's tokens and the head's targets the whole sequence); a ``cp`` point is this
    process's rank of the runtime's ring over ``cp_group`` (``launch.runtime.cp``), its input the rank's
    ``seq_len / cp`` positions."""
    spec = model if point.seq_len <= model.seq_len else model.model_copy(update={"seq_len": point.seq_len})
    stage = build_stage(spec, point.kind)
    for layer in stage.layers.values():
        layer.set_recompute(point.recompute)
    if tp_mesh is None:
        shard_in_place(stage, spec, point.tp)
    stage = stage.to(device)
    if tp_mesh is not None:
        from launch.runtime.tp import apply_tensor_parallel

        if point.kind != "experts":
            apply_tensor_parallel(stage, tp_mesh, sequence_parallel=point.sequence_parallel)
        for layer in stage.layers.values():  # as the runtime joins its MoE layers to the tp group (build.py)
            if isinstance(layer.feed_forward, MoEFeedForward):
                layer.feed_forward.set_parallel(ExpertGroups(tp=tp_mesh.get_group()), tp_mesh.get_local_rank(), point.tp,
                                                sequence_parallel=point.sequence_parallel)
    elif point.sequence_parallel:
        raise ValueError(f"{point.label} runs with sequence parallelism: it needs its TP group")
    if point.cp > 1:
        import torch.distributed as dist

        from launch.runtime.cp import ContextParallel

        if cp_group is None:
            raise ValueError(f"{point.label} runs in a ring: it needs its cp group")
        for layer in stage.layers.values():
            layer.attention.context = ContextParallel(cp_group, point.cp, dist.get_rank(cp_group))
    dtype = MIXED_PRECISION[precision].param_dtype if precision in MIXED_PRECISION else torch.float32
    stage = stage.to(dtype)
    params = [p for p in stage.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)  # the runtime accumulates into existing gradients
    gen = torch.Generator().manual_seed(INPUT_SEED)
    shape = (point.mbs, point.seq_len // point.cp)
    # with sequence parallelism the hidden states between layers are this rank's sequence shard (launch.runtime.tp)
    local = (point.mbs, shape[1] // point.tp) if point.sequence_parallel else shape
    vocab = model.vocab_size if tp_mesh is not None else -(-model.vocab_size // point.tp)
    tokens = torch.randint(0, vocab, shape, generator=gen).to(device)
    hidden = (torch.randn(*local, model.hidden_size, generator=gen) * 0.5).to(device, dtype)
    grad = (torch.randn(*local, model.hidden_size, generator=gen) * 1e-3).to(device, dtype)
    if point.kind == "embedding":
        return Case(stage, params, [tokens], stage, grad)
    if point.kind == "head":
        return Case(stage, params, [hidden], _head_loss(stage, point.tp, tp_mesh is None, tokens))
    return Case(stage, params, [hidden], stage, grad)


def _fresh_inputs(case: Case) -> list[Any]:
    return [x.detach().requires_grad_() if x.is_floating_point() else x for x in case.inputs]


def run_split(case: Case, sync: Callable[[], None], clock: Clock = time.perf_counter) -> tuple[float, float, float]:
    """One F, B, W of ``case``: seconds of each."""
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

    inputs = _fresh_inputs(case)
    grads = None if case.output_grad is None else [case.output_grad]
    sync()
    t0 = clock()
    out = case.forward(*inputs)
    sync()
    t1 = clock()
    if any(x.requires_grad for x in inputs):
        _, groups = stage_backward_input([out], grads, inputs, case.params)
        sync()
        t2 = clock()
        stage_backward_weight(case.params, groups)
    else:  # token ids have no gradient: torch's first stage runs its whole backward as W
        t2 = t1
        torch.autograd.backward([out], grads)
    sync()
    return t1 - t0, t2 - t1, clock() - t2


def run_unsplit(case: Case, sync: Callable[[], None], clock: Clock = time.perf_counter) -> float:
    """One F, then B and W in one autograd call: seconds of the backward."""
    inputs = _fresh_inputs(case)
    out = case.forward(*inputs)
    sync()
    start = clock()
    torch.autograd.backward([out], None if case.output_grad is None else [case.output_grad])
    sync()
    return clock() - start


def sample(case: Case, sync: Callable[[], None], clock: Clock, barrier: Callable[[], None] = lambda: None) -> tuple[float, ...]:
    """One timed iteration: (F, B, W, unsplit backward) seconds (``barrier`` lines up a TP group first)."""
    barrier()
    split = run_split(case, sync, clock)
    barrier()
    return split + (run_unsplit(case, sync, clock),)


def summarize(samples: list[tuple[float, ...]]) -> dict[str, tuple[float, float]]:
    """Median and inter-quartile range of each pass over the timed iterations."""
    stats = {}
    for k, name in enumerate(("forward", "backward_input", "backward_weight", "backward")):
        q25, q50, q75 = np.percentile([s[k] for s in samples], [25, 50, 75])
        stats[name] = (float(q50), float(q75 - q25))
    return stats


def time_case(
    case: Case, warmup: int, repeats: int, sync: Callable[[], None], clock: Clock, barrier: Callable[[], None] = lambda: None
) -> dict[str, tuple[float, float]]:
    """``summarize`` of ``repeats`` iterations after ``warmup`` untimed ones (``time_round_robin`` of one case)."""
    return time_round_robin({0: case}, warmup, repeats, sync, clock, barrier)[0]


def time_round_robin(
    built: dict[int, Case], warmup: int, repeats: int, sync: Callable[[], None], clock: Clock,
    barrier: Callable[[], None] = lambda: None, on_round: Callable[[int, int], None] | None = None,
) -> dict[int, dict[str, tuple[float, float]]]:
    """``time_case`` of every case in ``built``, one iteration of each per round (``warmup`` untimed
    rounds, then ``repeats``), so that the machine's drift and background load fall on every case
    alike instead of on whichever ran during a slow spell (``launch.profiler.layers.interleaves``).
    ``on_round(round, rounds)`` before each round."""
    rounds = warmup + repeats
    samples: dict[int, list[tuple[float, ...]]] = {i: [] for i in built}
    for round_ in range(rounds):
        if on_round is not None:
            on_round(round_ + 1, rounds)
        for index, case in built.items():
            row = sample(case, sync, clock, barrier)
            if round_ >= warmup:
                samples[index].append(row)
    return {i: summarize(rows) for i, rows in samples.items()}


def storages_of(t: Any) -> list[Any]:
    """The storages holding ``t`` on this rank: a tensor subclass that wraps others (a DTensor's local shard,
    a functional collective's pending result; a sequence-parallel layer's parameters and saved inputs are
    such wrappers, with no storage of their own) holds its inner tensors' (``__tensor_flatten__``)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(t):
        return [t.untyped_storage()]
    names, _ = t.__tensor_flatten__()
    inner = (getattr(t, name) for name in names)
    return [storage for x in inner if isinstance(x, torch.Tensor) for storage in storages_of(x)]


def saved_activation_bytes(case: Case) -> int:
    """Bytes of the distinct storages autograd saves in one forward, parameters excluded
    (``saved_tensors_hooks``)."""
    param_ptrs = {storage.data_ptr() for p in case.params for storage in storages_of(p)}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        for storage in storages_of(t):
            if storage.data_ptr() not in param_ptrs:
                saved[storage.data_ptr()] = storage.nbytes()
        return t

    inputs = _fresh_inputs(case)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = case.forward(*inputs)
    del out
    return sum(saved.values())


def memory_of(case: Case, device: str) -> tuple[int, int, int]:
    """(saved activation bytes, parameter bytes, live-bytes peak) of ``case`` (in a ring, every rank calls it)."""
    parameters = sum(storage.nbytes() for p in case.params for storage in storages_of(p))
    return saved_activation_bytes(case), parameters, live_bytes_peak(case, device)


def live_bytes_peak(case: Case, device: str) -> int:
    """Peak bytes live during one F, B and W above the level before F: the CUDA allocator's
    peak on GPU; on CPU a dispatch mode that adds each new output storage and drops it when
    torch frees it (storages keep their Python object, so a finalizer sees the free)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_split(case, torch.cuda.synchronize)
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    state = {"live": 0, "peak": 0}
    tracked: set[int] = set()

    def release(key: int, nbytes: int) -> None:
        tracked.discard(key)
        state["live"] -= nbytes

    class LiveBytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                for storage in storages_of(t) if isinstance(t, torch.Tensor) else ():
                    key = storage.data_ptr()
                    if key and key not in tracked:
                        tracked.add(key)
                        state["live"] += storage.nbytes()
                        state["peak"] = max(state["peak"], state["live"])
                        weakref.finalize(storage, release, key, storage.nbytes())
            return out

    with LiveBytes():
        run_split(case, lambda: None)
    return state["peak"]
