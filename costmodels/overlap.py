"""What hiding communication behind compute costs, and where it can hide.

A collective that runs beside compute is not free: NCCL's kernels hold SMs and HBM bandwidth while they
move the bytes, so the compute beside them runs slower (``OVERLAPPED_COMPUTE_SLOWDOWN``). The data-parallel
reduces and gathers, FSDP's traffic inside a pass (``costmodels.data_parallel``, ``costmodels.estimate``) and the
tensor-parallel collectives a stack overlaps with its GEMMs, a context-parallel ring's K/V transfers under its
blocks and expert all-to-alls under another microbatch's compute (``costmodels.layer_costs``) charge the compute
``contention_s`` of what they hide. On a CPU node nothing hides (``comm_overlaps_compute``).
"""

from __future__ import annotations

from profiles.schema import ClusterSpec

# Compute that runs beside a collective runs slower: NCCL's kernels hold SMs and HBM bandwidth while they move
# the bytes. Lee et al. 2025 ("Characterizing Compute-Communication Overlap in GPU-Accelerated Distributed Deep
# Learning: Performance and Power Implications", arXiv 2507.03114, abstract) measured GPT and LLaMA training's
# compute 18.9 % slower on average (40.0 % at most) when overlapped with its communication than alone, on A100,
# H100, MI250 and MI210. Stated, not fitted.
OVERLAPPED_COMPUTE_SLOWDOWN = 0.189


def contention_s(hidden_s: float) -> float:
    """What ``hidden_s`` of collectives under compute still cost the step: for as long as they run, the compute
    beside them advances at 1 / (1 + sigma) of its speed (``OVERLAPPED_COMPUTE_SLOWDOWN``), so the compute ends
    ``hidden_s * sigma / (1 + sigma)`` later than alone."""
    return hidden_s * OVERLAPPED_COMPUTE_SLOWDOWN / (1.0 + OVERLAPPED_COMPUTE_SLOWDOWN)


def overlapped_pass_s(compute_s: float, comm_s: float) -> float:
    """A pass whose ``compute_s`` runs beside ``comm_s`` of collectives that start with it: the compute slowed
    while they run (``contention_s``), or the collectives themselves where they take longer."""
    if comm_s <= 0.0:
        return compute_s
    return max(comm_s, compute_s + contention_s(comm_s))


def comm_overlaps_compute(cluster: ClusterSpec) -> bool:
    """Whether data-parallel traffic can hide behind compute: yes on accelerators (a copy
    engine / NIC moves the bytes while the SMs compute); no on a CPU node
    (``concurrent_ranks_per_node`` set), where gloo's loopback copies and reductions run on
    the same cores as the compute, and FSDP2 reduces synchronously in its post-backward hook
    (torch.profiler on cpu-local: ``FSDP::post_backward_reduce`` 4-10 ms per layer inside the
    step, nothing running beside it)."""
    return cluster.concurrent_ranks_per_node is None


def cluster_contention_s(cluster: ClusterSpec, hidden_s: float) -> float:
    """``contention_s`` of ``hidden_s`` on an accelerator node; 0 on a CPU node, where nothing hides."""
    return contention_s(hidden_s) if comm_overlaps_compute(cluster) else 0.0
