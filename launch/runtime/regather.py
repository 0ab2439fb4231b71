"""Keep a sequence-parallel block's gathered input as this rank's shard, and gather it again in the backward.

Under sequence parallelism a block all-gathers its input (the norm's ``[b, s/tp, h]`` shard) to the whole
sequence before its column-parallel projections (q/k/v, the MLP's w1/w3, an MoE block's router and shared
experts), which autograd would keep for their weight gradients: ``s·b·h`` values on every tp rank. Megatron-LM
keeps the shard instead and all-gathers it again in the backward (Korthikanti et al. 2022, Sec. 4.2.2:
``LinearWithGradAccumulationAndAsyncCommunication``), so a layer keeps ``s·b·h/tp`` for each of the two inputs.

``RegatherSaved`` does that with saved-tensor hooks around the block's forward: a tensor autograd saves that lies
in the gathered input's storage (the input or a view of it, as ``F.linear`` saves it) is packed as the shard and
the view's geometry; its unpack gathers the shard once per backward pass over the block and every node that saved
it reads views of that one gather (a count of packs and unpacks: the gather is dropped when each pack was unpacked
once; not per autograd call, since torch's W runs one call per weight's group of nodes, q, k and v each). A backward
split into B and W (zero-bubble schedules, ``torch.distributed.pipelining``'s ``stage_backward_input`` and
``stage_backward_weight``) runs the saving nodes in each, so it gathers twice: once in B (autograd unpacks a node's
saved tensors before it knows which gradients it computes) and once in W; one autograd call gathers once
(``StackKernels.sequence_parallel_regather_exposed``).

Other saved tensors pass to the hooks around the block (the profiler's byte count, a checkpoint's) or are kept
detached (no reference cycle through a saved output); the shard passes to them in the input's place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single, wait_tensor
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


@dataclass(frozen=True)
class _SavedView:
    """A saved tensor that was a view of the gathered input: what the unpack rebuilds it from."""

    shard: Any  # the shard, or what the outer pack hook made of it
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # storage offset from the gathered input's
    dtensor: tuple[Any, Any, torch.Size, tuple[int, ...]] | None  # a saved DTensor's mesh, placements, shape, stride


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor inside ``t``: a DTensor's local tensor, a functional collective's waited result."""
    while is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        t = getattr(t, names[0])
    return t


def _storage_ptr(t: torch.Tensor) -> int | None:
    local = _local(t)
    return None if local.device.type == "meta" else local.untyped_storage().data_ptr()


def _dtensor_meta(t: torch.Tensor) -> tuple[Any, Any, torch.Size, tuple[int, ...]] | None:
    """A DTensor's mesh, placements, global shape and stride (not its local tensor: that is the gathered input)."""
    return (t.device_mesh, t.placements, t.shape, tuple(t.stride())) if isinstance(t, DTensor) else None


def gather_sequence(shard: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """All-gather ``shard`` over ``group`` along ``dim`` (rank order), contiguous: a functional collective, as the
    forward's (what ``tests/launch/runtime/tp_comm_worker.py`` counts)."""
    return wait_tensor(all_gather_single(shard.contiguous(), dim, group)).contiguous()


class RegatherSaved:
    """Saved-tensor hooks (a context manager) that keep ``gathered``, the all-gather over ``group`` along ``dim`` of
    ``shard``, as ``shard`` for the backward (module docstring)."""

    def __init__(self, gathered: torch.Tensor, shard: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> None:
        gathered = _local(gathered)
        if not gathered.is_contiguous():
            raise ValueError("the gathered input must be contiguous: its views are rebuilt from a contiguous gather")
        self._ptr = _storage_ptr(gathered)  # None: shapes only (a pipeline stage's metadata pass), nothing to keep
        self._base_offset = gathered.storage_offset()
        self._shard = _local(shard).detach()
        if self._ptr is not None and gathered.numel() != self._shard.numel() * dist.get_world_size(group):
            raise ValueError(f"the gathered input ({tuple(gathered.shape)}) is not {dist.get_world_size(group)} equal "
                             f"shards of {tuple(self._shard.shape)}: the backward's gather cannot rebuild it")
        self._group, self._dim = group, dim
        self._packs = self._unpacks = 0
        self._full: torch.Tensor | None = None
        self._outer: tuple[Any, Any] | None = None

    def __enter__(self) -> RegatherSaved:
        if self._ptr is not None:
            self._outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
            torch._C._autograd._push_saved_tensors_default_hooks(self._pack, self._unpack)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ptr is not None:
            torch._C._autograd._pop_saved_tensors_default_hooks()
        self._shard = None  # the packs keep it (or the outer hooks' record of it)

    def _pack(self, t: torch.Tensor) -> Any:
        outer_pack = self._outer[0] if self._outer else None
        if _storage_ptr(t) != self._ptr:
            return ("other", outer_pack(t) if outer_pack else t.detach())
        self._packs += 1
        local = _local(t)
        kept = outer_pack(self._shard) if outer_pack else self._shard
        return ("view", _SavedView(kept, tuple(local.shape), tuple(local.stride()),
                                   local.storage_offset() - self._base_offset,
                                   _dtensor_meta(t)))

    def _unpack(self, packed: tuple[str, Any]) -> torch.Tensor:
        outer_unpack = self._outer[1] if self._outer else None
        kind, value = packed
        if kind == "other":
            return outer_unpack(value) if outer_unpack else value
        saved: _SavedView = value
        if self._full is None:
            shard = outer_unpack(saved.shard) if outer_unpack else saved.shard
            self._full = gather_sequence(shard, self._group, self._dim)
        full = self._full
        self._unpacks += 1
        if self._unpacks % self._packs == 0:  # every saving node of this backward pass read it
            self._full = None
        local = full.as_strided(saved.size, saved.stride, saved.offset)
        if saved.dtensor is None:
            return local
        mesh, placements, shape, stride = saved.dtensor
        return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)
