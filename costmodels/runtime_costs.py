"""What ppplan's runtime costs beyond the layers' own F/B/W, as measured on the machine
(``ppplan profile`` and ``ppplan profile-comm``), for the estimate to price.

- Collectives and p2p by their own measured fits: ``profile-comm`` fits an alpha-beta
  link per collective (``CommProfile.tiers[].per_collective``). The cluster file keeps one
  link per tier; on gloo the collectives differ by 3x and more (cpu-local, measured:
  all-reduce 214 us / 1.4 GB/s, reduce-scatter 400-480 us / 0.35-0.55 GB/s, p2p
  110-170 us / 3.0-3.2 GB/s), so ZeRO's reduce-scatter and all-gather and the pipeline's
  p2p are priced with their own fits when a comm profile is given.
- Host overhead per pipeline action: what torch.distributed.pipelining adds to each F,
  B and W action (building the action's inputs, autograd bookkeeping, the schedule's
  Python), measured by ``ppplan profile`` (``ProfileFile.runtime``); it replaces the stack's
  a-priori ``host_overhead_per_action_s`` in ``estimate.action_overhead_s``. Only where the
  host runs the compute (CPU ranks): on a GPU the host issues the next kernels while the
  device runs, and the overhead hides.
- What a real pipeline adds (pp > 1, CPU ranks), measured by ``ppplan profile`` on two ranks
  (``launch/profiler/pipelined.py``): the actions run slower than the same calls made alone
  (``pipelined_compute_factor``: waits between actions leave cold caches, gloo's threads and the
  peer compete), and the schedule spends host time between actions posting p2p and keeping its
  books (``host_overhead_per_pipelined_action_s``, replacing the one-rank figure where there is a
  pipeline). A profile taken before they were measured keeps the one-rank figure and factor 1.
  Where a node runs more ranks than cores, the actions stretch further in wall time (waking idle
  ranks, cold caches), measured on pipelines of 2 and 4 ranks per core (``crowded_pipeline``,
  ``crowded_factor``).
- FSDP2's host work per wrapped unit and step (copy-in/copy-out of parameters and
  gradients, its hooks), measured by ``ppplan profile`` per layer; the runtime wraps each
  layer and each stage root (``launch/runtime/fsdp.py``). On CPU ranks it runs on the
  cores that compute, once per step, whenever dp > 1.
- The optimizer step: the runtime's AdamW timed per parameter by ``ppplan profile`` (on cpu-local
  tiny-gpt's 6.6 M parameters stepped in 20 ms where 30 B per parameter at the cluster file's memory
  bandwidth priced 12 ms); the estimate prices each rank's updated parameters at that rate.
- Time-sharing loss: where a node's ranks outnumber its cores, the node delivers less than its
  cores (switches, cold caches), measured by ``ppplan profile`` (``launch/profiler/timeshare.py``)
  and applied by ``costmodels.processor_sharing``.
- The optimizer's step temporary: torch's foreach AdamW (``torch/optim/adam.py``,
  ``_multi_tensor_adam``: ``exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)``)
  allocates one fp32 tensor per parameter it updates. On CPU, glibc's heap keeps the
  pages of freed activations, so that temporary adds to the resident peak instead of
  reusing them (a caching GPU allocator reuses them: no term there).

``runtime_costs_of(layers, cluster)`` is the one place the estimate asks; a ``LayerTimes``
carries its measured costs as ``.runtime`` (``costmodels.profile_times``), the roofline none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from costmodels.comm import US, Link, Network, bandwidth_bytes_per_s, network_for
from costmodels.layer_costs import runs_on_cpu
from costmodels.memory import STEP_TEMP_BYTES_PER_PARAM
from profiles.profile_schema import CommProfile, RuntimeMeasurement
from profiles.schema import ClusterSpec


@dataclass(frozen=True)
class RuntimeCosts:
    """Measured costs of the runtime around the layers (module docstring); ``None`` links mean
    the cluster file's tier link."""

    host_overhead_per_action_s: float | None = None  # None: not measured (the stack's figure applies)
    host_overhead_per_pipelined_action_s: float | None = None  # pp > 1; None: host_overhead_per_action_s applies
    pipelined_compute_factor: float = 1.0  # pp > 1: the actions' time in a pipeline over the same calls alone
    fsdp_overhead_per_unit_step_s: float = 0.0
    optimizer_s_per_param: float | None = None  # None: priced by bytes (costmodels.estimate)
    p2p_link: Link | None = None
    all_reduce_link: Link | None = None
    reduce_scatter_link: Link | None = None
    all_gather_link: Link | None = None
    timeshare_efficiency: tuple[tuple[float, float], ...] = ()  # (k, e): ranks time-sharing cores (processor_sharing)
    crowded_pipeline: tuple[tuple[float, int, float], ...] = ()  # (ranks per core, mbs, factor): pp > 1, more ranks than cores


NO_RUNTIME_COSTS = RuntimeCosts()


def _fit_link(comm: CommProfile | None, collective: str) -> Link | None:
    """The intra-node fit of one collective (ranks of one CPU node: where a comm profile runs)."""
    tier = comm.tier("intra_node") if comm else None
    fit = tier.per_collective.get(collective) if tier else None
    if fit is None:
        return None
    return Link(bandwidth_bytes_per_s=bandwidth_bytes_per_s(fit.bandwidth_gbs), latency_s=fit.latency_us * US)


def measured_runtime_costs(comm: CommProfile | None, runtime: RuntimeMeasurement | None = None) -> RuntimeCosts:
    """The runtime costs a comm profile and a layer profile's runtime block measured."""
    return RuntimeCosts(
        host_overhead_per_action_s=runtime.pipeline_action_overhead_s if runtime else None,
        host_overhead_per_pipelined_action_s=runtime.pipelined_action_overhead_s if runtime else None,
        pipelined_compute_factor=(runtime.pipelined_compute_factor or 1.0) if runtime else 1.0,
        fsdp_overhead_per_unit_step_s=runtime.fsdp_overhead_per_layer_step_s if runtime else 0.0,
        optimizer_s_per_param=runtime.optimizer_s_per_param if runtime else None,
        p2p_link=_fit_link(comm, "p2p"),
        all_reduce_link=_fit_link(comm, "all_reduce"),
        reduce_scatter_link=_fit_link(comm, "reduce_scatter"),
        all_gather_link=_fit_link(comm, "all_gather"),
        timeshare_efficiency=tuple((p.processes_per_core, p.efficiency) for p in runtime.timeshare_efficiency) if runtime else (),
        crowded_pipeline=tuple((p.ranks_per_core, p.mbs, p.compute_factor) for p in runtime.crowded_pipeline) if runtime else (),
    )


def runtime_costs_of(layers: object, cluster: ClusterSpec) -> RuntimeCosts:
    """What the estimate prices for ``layers`` on ``cluster``: the measured costs the layer
    times carry; host overhead only on CPU ranks (module docstring)."""
    costs = getattr(layers, "runtime", None) or NO_RUNTIME_COSTS
    if not runs_on_cpu(cluster):
        costs = replace(costs, host_overhead_per_action_s=None, host_overhead_per_pipelined_action_s=None,
                        pipelined_compute_factor=1.0, fsdp_overhead_per_unit_step_s=0.0, optimizer_s_per_param=None,
                        crowded_pipeline=())
    return costs


def pricing_network(cluster: ClusterSpec, costs: RuntimeCosts) -> Network:
    """The network the estimate prices a step's communication on: the cluster's, at the links ``costs`` measured."""
    return with_measured_links(network_for(cluster), costs)


def with_measured_links(network: Network, costs: RuntimeCosts) -> Network:
    """``network`` with the intra-node collectives and p2p at their measured links, where measured."""
    measured = {"p2p": costs.p2p_link, "all_reduce": costs.all_reduce_link, "reduce_scatter": costs.reduce_scatter_link,
                "all_gather": costs.all_gather_link}  # fmt: skip
    pairs = tuple((kind, link) for kind, link in measured.items() if link is not None)
    return replace(network, intra_by_collective=pairs) if pairs else network


def optimizer_temp_bytes(cluster: ClusterSpec, optimizer_params: float) -> float:
    """Resident bytes of the optimizer step's temporary on CPU ranks (module docstring); 0 on GPUs."""
    return STEP_TEMP_BYTES_PER_PARAM * optimizer_params if runs_on_cpu(cluster) else 0.0  # foreach AdamW's sqrt


def host_overhead_per_action_s(costs: RuntimeCosts, pp: int) -> float | None:
    """The measured host seconds per action: the two-rank pipeline's where there is a pipeline and it
    was measured, else the one-rank figure; None where neither was measured."""
    if pp > 1 and costs.host_overhead_per_pipelined_action_s is not None:
        return costs.host_overhead_per_pipelined_action_s
    return costs.host_overhead_per_action_s


def compute_factor(costs: RuntimeCosts, pp: int, ranks_per_core: float = 1.0, mbs: int = 1) -> float:
    """How much slower the layers' F, B and W run than measured alone: 1 without a pipeline; the
    two-rank pipeline's factor where the node has a core per rank; where it runs more ranks than
    cores, the crowded pipeline's (``crowded_factor``), never below the two-rank one."""
    if pp <= 1:
        return 1.0
    crowded = crowded_factor(costs.crowded_pipeline, costs.pipelined_compute_factor, ranks_per_core, mbs)
    return max(costs.pipelined_compute_factor, crowded)


def crowded_factor(points: tuple[tuple[float, int, float], ...], base: float, ranks_per_core: float, mbs: int) -> float:
    """The measured factor at ``ranks_per_core`` and ``mbs`` (``launch/profiler/pipelined.py``: one
    one-layer stage per rank, GPipe, actions timed by the wall clock): at each measured ranks per core,
    linear in log2(mbs) between the measured microbatch sizes; then linear in ranks per core from
    ``base`` at one rank per core; both held constant beyond the measured range (``np.interp``: never
    extrapolated)."""
    if ranks_per_core <= 1.0 or not points:
        return base
    by_load: dict[float, list[tuple[float, float]]] = {}
    for load, size, factor in points:
        by_load.setdefault(load, []).append((math.log2(size), factor))
    loads, factors = [1.0], [base]
    for load, pairs in sorted(by_load.items()):
        sizes, values = zip(*sorted(pairs))
        loads.append(load)
        factors.append(float(np.interp(math.log2(mbs), sizes, values)))
    return float(np.interp(ranks_per_core, loads, factors))


def fsdp_host_s(costs: RuntimeCosts, wrapped: bool, layers_on_rank: int, stages_on_rank: int) -> float:
    """FSDP2's host time per step on a rank whose stages FSDP2 ``wrapped`` (module docstring): one unit per layer
    and per stage root."""
    if not wrapped:
        return 0.0
    return costs.fsdp_overhead_per_unit_step_s * (layers_on_rank + stages_on_rank)
