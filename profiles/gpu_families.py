"""GPU families: the fitted constants of the cost model belong to the GPU, not to a cluster file.

``profiles/gpu_families.yaml`` lists one entry per family (A100, H100, H200, B200, cpu, and the
``generic`` fallback). Each entry holds the six constants of ``profiles.schema.FAMILY_CONSTANTS``
with one source per constant (an a-priori citation, or the fit that produced the value), an
optional cited ``attention_max`` (not fitted), and, once fitted, the fit's provenance (rows,
sources, held-out error). A cluster whose ``gpu.name`` starts with one of a family's
``gpu_name_prefixes`` gets that family's constants for every efficiency field its own file does
not set (``with_family_constants``); a name no family claims gets ``generic``'s.

This module is the file's schema and the merge rule (pure); ``profiles.loader`` reads the file.
"""

from __future__ import annotations

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
    """Where fitted constants came from: how many published rows of which sources, the
    leave-one-source-out (held-out) and in-sample MAPE, when and with what command."""

    rows: PositiveInt
    sources: list[str]
    heldout_mape_pct: NonNegativeFloat
    fitted_mape_pct: NonNegativeFloat | None = None
    constants: list[str] = Field(description="which of the six were fitted (the rest keep their a-priori source)")
    date: str
    command: str


class GpuFamily(StrictModel):
    """One GPU family and its constants (see the module docstring)."""

    name: str
    gpu_name_prefixes: list[str]
    constants: FamilyConstants
    sources: dict[str, str]
    attention_max: float | None = Field(default=None, gt=0, le=1)
    attention_max_source: str | None = None
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
        if self.fit is not None:
            unknown = [c for c in self.fit.constants if c not in FAMILY_CONSTANTS]
            if unknown:
                raise ValueError(f"family '{self.name}': fit names unknown constant '{unknown[0]}'")
        return self

    def efficiency(self) -> Efficiency:
        """The family's constants as an ``Efficiency`` (step overhead 0)."""
        return Efficiency(**self.constants.model_dump(), attention_max=self.attention_max)


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
