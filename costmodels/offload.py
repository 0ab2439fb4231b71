"""Activation CPU offload: the saved activations of the first N transformer layers copied to pinned host
memory during the forward and back before their backward (``ParallelConfig.offload_layers``).

As Megatron-Core runs it (``cpu_offloading_num_layers``, ``StackSpec.activation_offload``) on Transformer
Engine's ``AsyncDoubleBufferGroupOffloadHandler`` (transformer_engine/pytorch/cpu_offload.py @ v2.5), one
offload group per layer:

- Group k (layer k < N) has a window end ``window[k] = (L // N)(k + 1) - 1``, each of the first ``L % N`` groups
  shifted by k + 1 and the rest by ``L % N`` (``layer_window_map``; ``layer_window``). Its D2H copy runs on its
  own stream from the end of ``window[k - 1]`` (group 0: from its own commit) to the end of ``window[k]``, where
  both streams synchronise and its GPU buffers are freed: it hides under the forward of the layers between
  (``window_spans``). The backward reloads group k on the H2D stream when it reaches layer ``window[k]``, again
  with a two-way synchronisation, so each reload hides under the backward of the same span.
- So while a pass runs layer j, a group k is on the GPU when k <= j <= window[k], and every layer from N on keeps
  its activations as without offload (``peak_resident_layers``).
- Copies move at the cluster's host link (``ClusterSpec.host_link``); what a copy takes beyond the compute of
  its span is exposed (``exposed_copy_s``).

Approximations: a layer's whole saved activation moves (TE offloads the tensors its modules tag
``activation_offloading``: the linear layers' inputs, the norms', the attention's q, k, v and output, Megatron's
SwiGLU input; an untagged one stays), and every layer weighs the stage's mean (a model whose first layers are of
another kind, dense before mixture-of-experts, is priced at the mean).
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.comm import bandwidth_bytes_per_s
from profiles.errors import PlanError
from profiles.schema import ClusterSpec


def layer_window(num_layers: int, groups: int) -> list[int]:
    """Transformer Engine's ``layer_window_map``: the layer at whose end group k's copy must be done (forward)
    and at whose backward its reload starts."""
    base, extra = divmod(num_layers, groups)
    windows, constant = [], 0
    for k in range(groups):
        end = base * (k + 1) - 1
        if k < extra:
            end += k + 1
            constant = k + 1
        else:
            end += constant
        windows.append(end)
    return windows


def window_spans(num_layers: int, groups: int) -> list[int]:
    """Layers of compute each group's copy (and its reload) hides under: ``window[0]`` for the first group (its
    copy starts when layer 0 commits), ``window[k] - window[k - 1]`` for the others."""
    windows = layer_window(num_layers, groups)
    return [windows[0]] + [b - a for a, b in zip(windows, windows[1:])]


def peak_resident_layers(num_layers: int, groups: int) -> int:
    """Most layers whose activations are on the GPU at once: while layer j runs (either pass), the offloaded
    groups k <= j <= window[k] and every non-offloaded layer i <= j (i >= N)."""
    if groups <= 0:
        return num_layers
    windows = layer_window(num_layers, groups)
    return max(
        sum(1 for k in range(groups) if k <= j <= windows[k]) + max(0, j + 1 - groups)
        for j in range(num_layers)
    )


@dataclass(frozen=True)
class OffloadPlan:
    """What a stage offloads: ``groups`` of its ``num_layers`` layers, each ``layer_bytes`` of saved activations,
    whose forward takes ``layer_forward_s`` and backward (B + W) ``layer_backward_s``."""

    num_layers: int
    groups: int
    layer_bytes: float
    layer_forward_s: float = 0.0
    layer_backward_s: float = 0.0


def host_link_bytes_per_s(cluster: ClusterSpec) -> float:
    if cluster.host_link is None:
        raise PlanError(f"cluster '{cluster.name}' states no host_link (each GPU's link to host memory): activation "
                        "offload cannot be priced on it; add host_link to the cluster file or use --offload-layers 0")
    return bandwidth_bytes_per_s(cluster.host_link.bandwidth_gbs)


def exposed_copy_s(cluster: ClusterSpec, plan: OffloadPlan) -> tuple[float, float]:
    """Seconds the copies add to one microbatch's forward and to its backward: each group's transfer (latency +
    bytes over the host link) beyond the compute of its span (``window_spans``)."""
    if not plan.groups:
        return 0.0, 0.0
    rate = host_link_bytes_per_s(cluster)
    copy_s = cluster.host_link.latency_us * 1e-6 + plan.layer_bytes / rate
    spans = window_spans(plan.num_layers, plan.groups)
    forward = sum(max(0.0, copy_s - span * plan.layer_forward_s) for span in spans)
    backward = sum(max(0.0, copy_s - span * plan.layer_backward_s) for span in spans)
    return forward, backward
