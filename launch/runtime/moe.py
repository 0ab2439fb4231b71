"""The mixture-of-experts feed-forward of the runtime: router, routed experts, shared experts,
token dispatch over the expert-parallel group.

- Router: ``gate``, a bias-free h -> num_experts linear; the top-k logits and a softmax over
  those k (Mixtral, Jiang et al. 2024, eq. 1: G(x) = Softmax(TopK(x · W_g))). No capacity
  factor, no token dropping and no auxiliary loss: every token reaches its k experts, so a
  distributed run routes exactly as the single-process reference does.
- Routed experts: ``num_experts`` MLPs of FFN ``moe_ffn_hidden_size`` (SwiGLU or GELU like the
  dense MLP, no biases), held as 3-D weights ``[experts, out, in]``; a rank builds only the
  experts it holds, each from its own seed (``expert_seed``), so any split matches the reference.
- Shared experts: one always-on MLP of FFN ``shared_expert_ffn_hidden_size`` added to the routed
  output (DeepSeekMoE, Dai et al. 2024, eq. 3).
- Expert parallelism: ep ranks hold num_experts / ep consecutive experts each; a token goes to
  the rank of each of its experts by an all-to-all over the expert-parallel group and its
  outputs come back by a second one (GShard, Lepikhin et al. 2020; Megatron-Core's "alltoall"
  token dispatcher), both differentiable (``torch.distributed._functional_collectives.all_to_all_single_autograd``).
- Tensor parallelism (expert TP = tp, Megatron-Core's default): every expert's FFN is split over
  the tp ranks like the dense MLP (rows of w1/w3, columns of w2). Tokens and routing are the
  same on every tp rank; the routed and shared experts' outputs are partial sums over tp, weighted
  and added as partial sums, and the block's sum is reduced once on exit: one all-reduce, or with
  sequence parallelism a reduce-scatter back to sequence shards after an all-gather on entry
  (Megatron's f and g operators, Shoeybi et al. 2019, Sec. 3; Korthikanti et al. 2022, Sec. 4.2).
  In B the experts' input gradients, partial sums too, are reduced once at the entry; the router
  runs on the complete tokens, so its input gradient is complete and joins them after that
  reduction, and its k scores per token get their gradient all-reduced (each rank's is the dot
  product of the output gradient with its partial expert outputs). Per MoE layer and pass the
  block moves one all-reduce's worth of its T tokens (an all-gather plus a reduce-scatter under
  sequence parallelism), plus T·k fp32 scores in B; reducing each expert output where it is
  computed, as this runtime did before, moved T·k rows, T more with a shared expert, and under
  sequence parallelism an all-gather of T besides (``costmodels.experts.moe_tp_collectives``).

Gradient scale: an expert's weights see the tokens of all ep ranks, each rank's loss being a
mean over its own tokens; data parallelism then averages over the ranks holding the same
experts (edp = dp * cp / ep). ``ScaleGrad`` multiplies the experts' weight gradients by 1/ep so
that the result is the gradient of the mean loss over the dp * cp ranks, as for dense weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed._functional_collectives import all_gather_single, all_to_all_single_autograd, reduce_scatter_single
from torch.distributed.tensor import DTensor

from launch.runtime.regather import RegatherSaved
from profiles.schema import ModelSpec

INIT_STD = 0.02  # as the dense layers (launch.runtime.model.INIT_STD, GPT-2 initialisation)


def expert_seed(layer_seed: int, expert: int) -> int:
    """Seed of routed expert ``expert`` of the layer seeded ``layer_seed`` (shared experts: expert = -1)."""
    return layer_seed * 1_009 + 7 + expert


@dataclass(frozen=True)
class ExpertShard:
    """The routed experts one rank holds: ``count`` consecutive experts from ``first``."""

    first: int
    count: int

    @classmethod
    def of_rank(cls, num_experts: int, ep: int, ep_rank: int) -> "ExpertShard":
        per_rank = num_experts // ep
        return cls(first=ep_rank * per_rank, count=per_rank)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class CopyToTensorParallel(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce of the gradient over the tp group backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ReduceFromTensorParallel(torch.autograd.Function):
    """Megatron's g: all-reduce over the tp group forward, identity backward (the gradient of the
    reduced output is the same on every tp rank)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        tensor = tensor.contiguous().clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class PermuteRows(torch.autograd.Function):
    """``rows[perm]`` for a permutation ``perm`` whose inverse is ``inverse``: the backward is the gather
    ``grad[inverse]``, keeping that index only. Autograd's own backward of ``rows[perm]`` scatters with
    accumulation (``index_put_``, which sorts on CUDA), and ``index_copy``'s kept its source rows, T·k rows of
    h that ``costmodels.experts.moe_activation_bytes`` does not count."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return rows[perm]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


class GatheredForRouter(torch.autograd.Function):
    """The sequence-gathered block input as the router reads it: ``gathered`` (already all-gathered over tp)
    forward; backward, the router's gradient, complete on every tp rank, cut back to this rank's sequence
    shard of ``local`` (no collective: a reduce-scatter would count it tp times)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, gathered: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
        ctx.tp_rank, ctx.tp_size = tp_rank, tp_size
        return gathered.detach().view_as(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad.chunk(ctx.tp_size, dim=1)[ctx.tp_rank].contiguous(), None, None, None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Router(nn.Module):
    """Top-k softmax router (module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        assert spec.num_experts is not None and spec.experts_per_token is not None  # MoE layers only
        self.gate = nn.Linear(spec.hidden_size, spec.num_experts, bias=False)
        self.top_k = spec.experts_per_token

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [tokens, k] in fp32, expert ids [tokens, k]) of ``tokens`` [tokens, h]."""
        logits = F.linear(tokens, _local(self.gate.weight)).float()
        top_logits, chosen = logits.topk(self.top_k, dim=-1)
        return top_logits.softmax(dim=-1), chosen


class GroupedExperts(nn.Module):
    """``shard.count`` expert MLPs as 3-D weights; ``ffn_rows`` of each expert's FFN (all, or a tp shard)."""

    def __init__(self, spec: ModelSpec, shard: ExpertShard, ffn: int) -> None:
        super().__init__()
        if spec.linear_bias:
            raise ValueError("the runtime's experts have no biases: set linear_bias: false for a mixture-of-experts model")
        h, n = spec.hidden_size, shard.count
        self.shard = shard
        self.ffn_rows = (0, ffn)
        self.swiglu = spec.activation == "swiglu"
        self.w1 = nn.Parameter(torch.empty(n, ffn, h))
        self.w3 = nn.Parameter(torch.empty(n, ffn, h)) if self.swiglu else None
        self.w2 = nn.Parameter(torch.empty(n, h, ffn))
        self.grad_scale = 1.0

    @torch.no_grad()
    def init_weights(self, layer_seed: int, num_layers: int, first_seed_index: int) -> None:
        """Each expert from ``expert_seed(layer_seed, first_seed_index + i)``: N(0, 0.02), output N(0, 0.02/sqrt(2L))."""
        out_std = INIT_STD / math.sqrt(2 * num_layers)
        for i in range(self.w1.shape[0]):
            gen = torch.Generator().manual_seed(expert_seed(layer_seed, first_seed_index + i))
            nn.init.normal_(self.w1[i], 0.0, INIT_STD, generator=gen)
            if self.w3 is not None:
                nn.init.normal_(self.w3[i], 0.0, INIT_STD, generator=gen)
            nn.init.normal_(self.w2[i], 0.0, out_std, generator=gen)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        w1, w3, w2 = _local(self.w1), _local(self.w3) if self.w3 is not None else None, _local(self.w2)
        if self.grad_scale != 1.0:
            w1, w2 = ScaleGrad.apply(w1, self.grad_scale), ScaleGrad.apply(w2, self.grad_scale)
            w3 = ScaleGrad.apply(w3, self.grad_scale) if w3 is not None else None
        return w1, w3, w2

    def forward(self, tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``tokens`` [sum(counts), h] grouped by expert (``counts[e]`` rows for local expert e).

        The 3-D weights are split into per-expert views once (``unbind``): indexing ``w[e]`` per expert
        instead makes autograd build a zero-filled gradient of the whole 3-D weight for every expert and
        sum them (``select_backward``), E full-size buffers per weight in each backward; ``unbind``'s
        backward stacks the E slices once (measured on one CPU thread, 8 experts of 256 x 512, 256
        tokens: F + backward 25 ms with indexing, 12 ms with unbind)."""
        weights = self._weights()
        w1, w2 = weights[0].unbind(0), weights[2].unbind(0)
        w3 = weights[1].unbind(0) if weights[1] is not None else None
        outputs = []
        for e, chunk in enumerate(tokens.split(counts)):
            hidden = F.silu(chunk @ w1[e].T) * (chunk @ w3[e].T) if w3 is not None else F.gelu(chunk @ w1[e].T)
            outputs.append(hidden @ w2[e].T)
        return torch.cat(outputs) if outputs else tokens[:0]

    @torch.no_grad()
    def keep_ffn_rows(self, start: int, stop: int) -> None:
        """Keep rows [start, stop) of every expert's FFN (this rank's tensor-parallel shard)."""
        self.w1 = nn.Parameter(self.w1[:, start:stop].clone())
        if self.w3 is not None:
            self.w3 = nn.Parameter(self.w3[:, start:stop].clone())
        self.w2 = nn.Parameter(self.w2[:, :, start:stop].clone())
        self.ffn_rows = (self.ffn_rows[0] + start, self.ffn_rows[0] + stop)


@dataclass
class ExpertGroups:
    """The process groups an MoE layer talks over (None: that degree is 1)."""

    ep: dist.ProcessGroup | None = None
    ep_size: int = 1
    tp: dist.ProcessGroup | None = None


def expert_shard_of(spec: ModelSpec, ep: int, data_context_index: int) -> ExpertShard | None:
    """The routed experts the rank at data-context index ``j = dp * cp_size + cp`` holds (position
    ``j % ep`` of its expert-parallel group, ``costmodels.rank_grid``); None for a dense model."""
    if spec.num_experts is None:
        return None
    return ExpertShard.of_rank(spec.num_experts, ep, data_context_index % ep)


def _dispatch_order(chosen: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-expert assignments sorted by expert (stable): (the order, its inverse permutation, tokens per
    expert [E])."""
    flat = chosen.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return order, _inverse_permutation(order), torch.bincount(flat, minlength=num_experts)


def _inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inverse`` with ``inverse[perm[i]] = i`` (``PermuteRows`` gathers by both)."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


class MoEFeedForward(nn.Module):
    """Router + routed experts (this rank's ``shard``) + shared experts (module docstring)."""

    def __init__(self, spec: ModelSpec, shard: ExpertShard) -> None:
        super().__init__()
        assert spec.num_experts is not None and spec.moe_ffn_hidden_size is not None  # MoE layers only
        self.num_experts = spec.num_experts
        self.router = Router(spec)
        self.experts = GroupedExperts(spec, shard, spec.moe_ffn_hidden_size)
        shared_ffn = spec.shared_expert_ffn_hidden_size or 0
        self.shared = GroupedExperts(spec, ExpertShard(0, 1), shared_ffn) if shared_ffn else None
        self.groups = ExpertGroups()
        self.tp_rank, self.tp_size, self.sequence_parallel = 0, 1, False
        self.regather_input: Callable[[], bool] = lambda: False  # launch.runtime.tp.parallelize_layer

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator, layer_seed: int, num_layers: int) -> None:
        nn.init.normal_(self.router.gate.weight, 0.0, INIT_STD, generator=gen)
        self.experts.init_weights(layer_seed, num_layers, self.experts.shard.first)
        if self.shared is not None:
            self.shared.init_weights(layer_seed, num_layers, -1)

    def set_parallel(self, groups: ExpertGroups, tp_rank: int, tp_size: int, sequence_parallel: bool = False) -> None:
        """Join the expert-parallel and tensor-parallel groups: keep this tp rank's rows of every
        expert's FFN and scale the routed experts' gradients by 1 / ep (module docstring).
        ``sequence_parallel``: the block's input and output are this rank's sequence shard (dim 1)."""
        self.groups = groups
        if groups.tp is not None and dist.get_rank(groups.tp) != tp_rank:  # the entry's gather orders by group rank
            raise ValueError(f"tp rank {tp_rank} is rank {dist.get_rank(groups.tp)} of its tp group")
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.sequence_parallel = sequence_parallel and groups.tp is not None
        self.experts.grad_scale = 1.0 / groups.ep_size
        if tp_size > 1:
            for experts in (self.experts, self.shared):
                if experts is not None:
                    rows = experts.w1.shape[1] // tp_size
                    experts.keep_ffn_rows(tp_rank * rows, (tp_rank + 1) * rows)

    def _enter(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the tokens the experts read, the tokens the router reads), [T, h] each, complete on every tp rank.
        The experts' input gradient is a partial sum over tp, reduced here in B: all-reduced (Megatron's f), or
        with sequence parallelism reduce-scattered back to sequence shards (the backward of the entry's
        all-gather). The router's is complete and bypasses that reduction."""
        h = x.shape[-1]
        if self.groups.tp is None:
            return x.reshape(-1, h), x.reshape(-1, h)
        if not self.sequence_parallel:
            return CopyToTensorParallel.apply(x, self.groups.tp).reshape(-1, h), x.reshape(-1, h)
        gathered = all_gather_single(x.contiguous(), 1, self.groups.tp)  # differentiable: B reduce-scatters
        for_router = GatheredForRouter.apply(x, gathered, self.tp_rank, self.tp_size)
        return gathered.reshape(-1, h), for_router.reshape(-1, h)

    def _exit(self, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The block's output ``out`` [T, h] (a partial sum over tp) reduced once: all-reduced (Megatron's g), or
        with sequence parallelism reduce-scattered to this rank's sequence shard (``shape``, the block's input)."""
        if self.groups.tp is None:
            return out.view(shape)
        if not self.sequence_parallel:
            return ReduceFromTensorParallel.apply(out.view(shape), self.groups.tp)
        full = out.view(shape[0], shape[1] * self.tp_size, shape[2])
        return reduce_scatter_single(full, "sum", 1, self.groups.tp)  # differentiable: B all-gathers

    def _run_experts(self, tokens: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Expert outputs of ``tokens`` sorted by (global) expert, ``counts`` [E] per expert, over the ep group
        (partial sums over tp)."""
        ep, per_rank = self.groups.ep_size, self.experts.shard.count
        if ep == 1:
            return self.experts(tokens, counts.tolist())
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.groups.ep)  # [source rank][local expert]
        send_splits = counts.view(ep, per_rank).sum(1).tolist()
        recv_matrix = received.view(ep, per_rank)
        recv_splits = recv_matrix.sum(1).tolist()
        arrived = all_to_all_single_autograd(tokens.contiguous(), recv_splits, send_splits, self.groups.ep)
        by_expert, back = _source_to_expert_order(recv_matrix, tokens.device)
        out = self.experts(PermuteRows.apply(arrived, by_expert, back), recv_matrix.sum(0).tolist())
        return all_to_all_single_autograd(PermuteRows.apply(out, back, by_expert), send_splits, recv_splits, self.groups.ep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, routed_by = self._enter(x)
        with self._saving(tokens, x):
            out = self._block(tokens, routed_by)
        return self._exit(out, x.shape)

    def _saving(self, tokens: torch.Tensor, x: torch.Tensor) -> AbstractContextManager[object]:
        """Under sequence parallelism the router and the shared experts save the gathered tokens: kept as this
        rank's shard ``x`` and gathered again in the backward (``launch.runtime.regather``) while
        ``regather_input()`` (not under full recompute)."""
        if self.sequence_parallel and torch.is_grad_enabled() and self.regather_input():
            assert self.groups.tp is not None  # sequence_parallel
            return RegatherSaved(tokens, x, self.groups.tp)
        return nullcontext()

    def _block(self, tokens: torch.Tensor, routed_by: torch.Tensor) -> torch.Tensor:
        """The block's output [T, h] (a partial sum over tp) of ``tokens`` routed by ``routed_by``."""
        weights, chosen = self.router(routed_by)
        if self.groups.tp is not None:  # each rank's score gradient sees only its partial expert outputs
            weights = CopyToTensorParallel.apply(weights, self.groups.tp)
        order, inverse, counts = _dispatch_order(chosen, self.num_experts)
        top_k = chosen.shape[1]
        sorted_out = self._run_experts(tokens[order // top_k], counts)
        per_choice = PermuteRows.apply(sorted_out, inverse, order).view(-1, top_k, tokens.shape[1])
        out = (per_choice * weights.unsqueeze(-1).to(per_choice.dtype)).sum(1)
        if self.shared is not None:
            out = out + self.shared(tokens, [tokens.shape[0]])
        return out


def _source_to_expert_order(recv_matrix: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows received grouped by source rank then local expert -> grouped by local expert then source
    (``by_expert``), and the inverse permutation (``back``)."""
    ep, per_rank = recv_matrix.shape
    starts = torch.cumsum(recv_matrix.reshape(-1), 0) - recv_matrix.reshape(-1)
    pieces = [
        torch.arange(int(starts[s * per_rank + e]), int(starts[s * per_rank + e] + recv_matrix[s, e]), device=device)
        for e in range(per_rank)
        for s in range(ep)
    ]
    by_expert = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=device)
    return by_expert, _inverse_permutation(by_expert)
