"""GPU families: the fitted constants of the cost model belong to the GPU, not to a cluster file.

``profiles/gpu_families.yaml`` lists one entry per family (V100, A100, H100, B200, cpu, and the
``generic`` fallback). Each entry holds the six a-priori constants of
``profiles.schema.FAMILY_CONSTANTS`` with one source per constant, an optional cited
``attention_max`` (measured, not fitted), and, once ``ppplan validate --update`` has fitted the
family to published runs, a ``fit`` block: the fitted values with their provenance (rows,
sources, held-out, in-sample and a-priori error, constants on a bound) and whether they are
applied. A cluster whose ``gpu.name`` starts with one of a family's ``gpu_name_prefixes`` gets
the family's priced constants (the fit's where applied, else the a-priori ones) for every
efficiency field its own file does not set (``with_family_constants``); a name no family claims
gets ``generic``'s.

This module is the file's schema, the merge rule and the file's text (``render_families``;
pure); ``profiles.loader`` reads the file and ``planner.trust`` writes it.
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from profiles.schema import FAMILY_CONSTANTS, ClusterSpec, Efficiency, StrictModel

GENERIC_FAMILY = "generic"


class FamilyConstants(StrictModel):
    """The six fitted constants (units and meaning: ``profiles.schema.Efficiency``)."""

    gemm_max: float = Field(gt=0, le=1)
    gemm_half_dim: float = Field(ge=0, allow_inf_nan=False)
    hbm: float = Field(gt=0, le=1)
    intra_node_collective: float = Field(gt=0, le=1)
    inter_node_collective: float = Field(gt=0, le=1)
    action_overhead_s: float = Field(ge=0, allow_inf_nan=False)


class FamilyFit(StrictModel):
    """The family's constants fitted to published runs (``ppplan validate --update``), with their
    provenance: how many priced rows of which independent sources, the held-out
    (leave-one-source-out), in-sample and a-priori MAPE on those rows, the constants that ended
    on a physical bound (a sign of structure the cost model lacks), and the command.

    ``applied``: whether clusters of this family price with ``values`` (else with the a-priori
    ``constants``); ``applied_reason`` says why (the fit is applied only where its held-out error
    beats the a-priori one)."""

    values: FamilyConstants
    applied: bool
    applied_reason: str
    rows: PositiveInt
    sources: list[str]
    heldout_mape_pct: NonNegativeFloat
    fitted_mape_pct: NonNegativeFloat
    apriori_mape_pct: NonNegativeFloat
    at_bounds: list[str] = Field(default_factory=list, description="fitted constants that ended on a physical bound")
    command: str


class GpuFamily(StrictModel):
    """One GPU family and its constants (see the module docstring). ``constants`` are the
    a-priori values, each with its source; ``fit`` the fitted ones with their provenance."""

    name: str
    gpu_name_prefixes: list[str]
    note: str | None = None
    constants: FamilyConstants
    sources: dict[str, str]
    attention_max: float | None = Field(default=None, gt=0, le=1)
    attention_max_source: str | None = None
    attention_kernel_ratios: dict[Literal["fa2", "triton"], float] = Field(
        default_factory=dict, description="an older flash kernel's rate over the native one's, measured (not fitted)")
    attention_kernel_ratio_sources: dict[str, str] = Field(default_factory=dict)
    fit: FamilyFit | None = None

    @model_validator(mode="after")
    def _check(self) -> "GpuFamily":
        missing = [c for c in FAMILY_CONSTANTS if not self.sources.get(c)]
        if missing:
            raise ValueError(f"family '{self.name}': no source for {missing[0]} (every constant states where it comes from)")
        extra = sorted(set(self.sources) - set(FAMILY_CONSTANTS))
        if extra:
            raise ValueError(f"family '{self.name}': source for unknown constant '{extra[0]}'")
        if (self.attention_max is None) != (self.attention_max_source is None):
            raise ValueError(f"family '{self.name}': attention_max and attention_max_source go together")
        if set(self.attention_kernel_ratios) != set(self.attention_kernel_ratio_sources):
            raise ValueError(f"family '{self.name}': every attention_kernel_ratios entry needs its source, and only those")
        if any(not 0 < r <= 1 for r in self.attention_kernel_ratios.values()):
            raise ValueError(f"family '{self.name}': attention_kernel_ratios are in (0, 1]")
        if self.fit is not None:
            unknown = [c for c in self.fit.at_bounds if c not in FAMILY_CONSTANTS]
            if unknown:
                raise ValueError(f"family '{self.name}': fit names unknown constant '{unknown[0]}'")
        return self

    def apriori_constants(self) -> dict[str, float]:
        """The six a-priori constants (what a fit starts from and is pulled towards)."""
        return self.constants.model_dump()

    def priced_constants(self) -> FamilyConstants:
        """The six constants clusters of this family price with: the fit's where it is applied."""
        return self.fit.values if self.fit is not None and self.fit.applied else self.constants

    def efficiency(self) -> Efficiency:
        """The family's priced constants as an ``Efficiency`` (step overhead 0)."""
        return Efficiency(**self.priced_constants().model_dump(), attention_max=self.attention_max,
                          attention_kernel_ratios=dict(self.attention_kernel_ratios))


class GpuFamilies(StrictModel):
    """The whole ``gpu_families.yaml``."""

    schema_version: int = 1
    families: list[GpuFamily]

    @model_validator(mode="after")
    def _check(self) -> "GpuFamilies":
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ValueError("a family is listed twice")
        if GENERIC_FAMILY not in names:
            raise ValueError(f"no '{GENERIC_FAMILY}' family (the fallback for GPUs no family claims)")
        return self

    def family_of(self, gpu_name: str) -> GpuFamily:
        """The first family one of whose prefixes starts ``gpu_name`` (case-insensitive), else ``generic``."""
        upper = gpu_name.upper()
        for family in self.families:
            if any(upper.startswith(prefix.upper()) for prefix in family.gpu_name_prefixes):
                return family
        return next(f for f in self.families if f.name == GENERIC_FAMILY)


def with_family_constants(cluster: ClusterSpec, family: GpuFamily) -> ClusterSpec:
    """``cluster`` with every efficiency field its file did not set taken from ``family``.

    Which fields a file set is pydantic's ``model_fields_set``: a cluster without an
    ``efficiency`` block takes all of the family's; one that sets ``gemm_max`` keeps it and
    takes the rest."""
    own = cluster.efficiency.model_dump(include=cluster.efficiency.model_fields_set) if "efficiency" in cluster.model_fields_set else {}
    merged = Efficiency(**{**family.efficiency().model_dump(exclude_none=True), **own})
    return cluster.model_copy(update={"efficiency": merged})


FILE_HEADER = """\
# GPU families and the cost model's six constants (schema and merge rule: profiles/gpu_families.py;
# read by profiles/loader.py). The constants belong to the GPU family: a cluster file whose gpu.name
# starts with one of a family's gpu_name_prefixes (case-insensitive) gets that family's value for
# every efficiency field it does not set itself; a GPU no family claims gets `generic`.
#
# The six constants (profiles/schema.py FAMILY_CONSTANTS; how each is used: costmodels/compute.py,
# costmodels/comm.py, costmodels/estimate.py):
#   gemm_max               large-GEMM fraction of the dense tensor-core peak (the GEMM ceiling)
#   gemm_half_dim          GEMM dimension (elements) at which half the ceiling is reached (the knee):
#                          a GEMM whose smallest dimension is d runs at gemm_max * d / (d + gemm_half_dim)
#   hbm                    memory-bound kernels' fraction of the HBM bandwidth (norms, activations,
#                          softmax, dropout, residuals, rotary, loss, optimizer; the GEMMs' memory floor)
#   intra_node_collective  collectives' and p2p's fraction of the NVLink (intra-node) bandwidth
#   inter_node_collective  their fraction of the network bandwidth (per-GPU NIC path and node egress)
#   action_overhead_s      fixed seconds per pipeline action (one F, B or W of a microbatch on a stage):
#                          the host's work per action, not paid where the whole step is one CUDA graph
#                          (StackOverlap.cuda_graphs full_iteration)
# Everything else the cost model uses is a cited constant in its module or derived from these six
# (e.g. flash attention runs at gemm_max times a cited kernel ratio, costmodels/compute.py), except
# `attention_max`, which a family may state with a source when it was measured (not fitted).
#
# `constants` are a priori, each with its source in `sources` (end-to-end MFU figures are not used:
# they already contain the memory-bound work, communication and bubbles the structure prices).
# `fit` is written by `ppplan validate --update` (planner/trust/family_fit.py): the six fitted to
# the family's published runs under a nearly flat Gaussian prior around the a-priori constants (family_fit.py
# FAMILY_PRIOR_WEIGHT), leave-one-source-out for the held-out error, with the rows, sources and
# errors; clusters price with the fitted values only where `applied` (see `applied_reason`).
# This file is rewritten by `ppplan validate --update`: keep notes in the `note` fields.
"""


class _FlowMap(dict):
    """A mapping written on one line (the six constants)."""


class _FlowList(list):
    """A list written on one line (name prefixes, source names)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))

_ONE_LINE_MAPS = ("constants", "values", "attention_kernel_ratios")
_OMITTED_WHEN_EMPTY = ("attention_kernel_ratios", "attention_kernel_ratio_sources")
_ONE_LINE_LISTS = ("gpu_name_prefixes", "sources", "at_bounds")


def _layout(node: object, key: str = "") -> object:
    """Constants and short lists on one line; citations (``sources`` mappings) one per line."""
    if isinstance(node, dict):
        out = {k: _layout(v, k) for k, v in node.items() if not (k in _OMITTED_WHEN_EMPTY and not v)}
        return _FlowMap(out) if key in _ONE_LINE_MAPS else out
    if isinstance(node, list):
        items = [_layout(v) for v in node]
        return _FlowList(items) if key in _ONE_LINE_LISTS else items
    return node


def render_families(families: GpuFamilies) -> str:
    """The text of ``gpu_families.yaml`` for ``families``: the fixed header, then the document
    (constants and name lists on one line, one citation per line, keys in schema order; no
    timestamps, so the file changes only when a family, the corpus or the cost model does)."""
    document = _layout(families.model_dump(exclude_none=True))
    return FILE_HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
