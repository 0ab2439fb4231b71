"""What ``ppplan validate --update`` ships, and the error band every estimate carries.

``profiles/gpu_families.yaml`` (the one home of the six constants): each fitted GPU family gets
a ``fit`` block, the constants fitted to every priced row of that family with their provenance
(rows, sources, held-out, in-sample and a-priori MAPE, constants on a physical bound, the
command), applied to the family's clusters only where the held-out MAPE beats the a-priori one
(``fitted_families``). The a-priori ``constants`` and their sources are kept as they are.

``profiles/calibration/error_bands.yaml``: the MAPE of the rows of each (stack, GPU family)
and of each family over all stacks, twice: held-out (leave-one-source-out,
``planner.trust.validation``), the error of the family's fitted constants on a source they
never saw; and a priori, the error of the a-priori constants, which were fitted to nothing, so
that figure is out of sample too. ``error_band_pct`` picks the one that describes the
cluster's constants: held-out when they are the family's fitted ones, a priori otherwise
(a family whose fit is not applied, or constants of the user's own). It looks up the plan's stack on
its GPU family when that cell has at least ``BAND_MIN_ROWS`` rows, else its GPU family over
all stacks (the constants are the family's; the stack's own behaviour is then unvalidated),
else None (no published run on that GPU class, e.g. ``cpu-local``). The CLI applies it to the estimates of
``search`` and ``evaluate`` priced by the roofline (a measured profile replaces what the band
describes, so it gets none). Figures are rounded for the file: no timestamps, so the tables
change only when the corpus or the cost model does.

The same file's ``memory`` table says the same of peak memory, per stack, over every category's readings
(``validation.memory_bands``): how far the held-out predicted peak (``RowResult.memory_under_pct``, in % of
the reading; a reading the stack's caching-allocator share was fitted on is priced at the share fitted
without its sweep) fell below each published reading of the stack, as its 95th percentile (nearest rank),
its worst and the readings under by more than 5 %. ``memory_error_band_pct`` is that 95th percentile for a
plan's stack on a GPU class with published runs (None below ``BAND_MIN_ROWS`` readings: the stack's memory
is unvalidated), so a reader can hold it against the headroom the cluster's ``memory_safety_margin`` leaves.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from planner.trust.accuracy import grouped, mape_pct
from planner.trust.validation import FIT_CATEGORY, MemoryBand, RowResult, ValidationReport, memory_bands
from profiles.files import check_outputs, write_atomic
from profiles.gpu_families import FamilyConstants, FamilyFit, GpuFamilies, render_families
from profiles.loader import GPU_FAMILIES_YAML, PUBLIC_RUNS_CSV, load_gpu_families, read_document, validate_as
from profiles.schema import ClusterSpec, Estimate, StrictModel

CALIBRATION_DIR = PUBLIC_RUNS_CSV.parent
ERROR_BANDS_NAME = "error_bands.yaml"
GPU_FAMILIES_NAME = GPU_FAMILIES_YAML.name
UPDATE_COMMAND = "ppplan validate --update"
BAND_MIN_ROWS = 5
HEADER = ("# Written by `ppplan validate --update` from {corpus} ({rows} priced rows); do not edit by hand.\n"
          "# Held-out = leave-one-source-out (planner/trust/validation.py, planner/trust/family_fit.py).\n")


class Band(StrictModel):
    """Held-out and a-priori MAPE of a group of rows, with how many rows and which sources."""

    heldout_mape_pct: float
    apriori_mape_pct: float
    rows: int
    sources: list[str]


class ErrorBands(StrictModel):
    bands: dict[str, dict[str, Band]]  # stack -> GPU family -> band
    families: dict[str, Band]  # GPU family, all stacks
    memory: dict[str, MemoryBand] = {}  # stack -> its memory readings


def _band(results: list[RowResult]) -> Band:
    return Band(heldout_mape_pct=round(mape_pct(r.error("heldout_fit") for r in results), 2),
                apriori_mape_pct=round(mape_pct(r.error("apriori") for r in results), 2),
                rows=len(results), sources=sorted({r.row.source for r in results}))


def bands_of(report: ValidationReport) -> ErrorBands:
    """The error-band table of a validation run: step time over the ``FIT_CATEGORY`` rows the constants are
    fitted on, peak memory over every category's readings (``validation.memory_bands``)."""
    fitted_on = report.of_category(FIT_CATEGORY)
    by_stack = grouped(fitted_on.priced, lambda r: r.row.stack)
    return ErrorBands(
        bands={stack: {f: _band(rs) for f, rs in grouped(rows, lambda r: r.family).items()} for stack, rows in by_stack.items()},
        families={f: _band(rs) for f, rs in grouped(fitted_on.priced, lambda r: r.family).items()},
        memory=memory_bands(report.memory()),
    )


def family_fit_block(summary: dict) -> FamilyFit:
    """A fitted family's ``fit`` block from ``ValidationReport.family_summary``: applied where its
    held-out MAPE is below the a-priori one on the same rows (fitted constants that would price
    a source they never saw worse than the a-priori ones are not shipped)."""
    heldout, apriori = summary["heldout_mape_pct"], summary["apriori_mape_pct"]
    applied = heldout < apriori
    reason = (f"held-out MAPE {heldout:.2f} % {'<' if applied else '>='} a-priori {apriori:.2f} % "
              f"on the same {summary['rows']} rows")
    return FamilyFit(
        values=FamilyConstants(**summary["terms"]), applied=applied, applied_reason=reason, rows=summary["rows"],
        sources=summary["sources"], heldout_mape_pct=heldout, fitted_mape_pct=summary["in_sample_mape_pct"],
        apriori_mape_pct=apriori, at_bounds=summary["at_bounds"], command=UPDATE_COMMAND,
    )


def fitted_families(report: ValidationReport, families: GpuFamilies) -> GpuFamilies:
    """``families`` with a ``fit`` block for every family the report fitted (others unchanged:
    a family with one source, or no rows, keeps what it had)."""
    summary = report.family_summary()
    out = []
    for family in families.families:
        fitted = summary.get(family.name)
        if fitted is not None and fitted["fitted"]:
            family = family.model_copy(update={"fit": family_fit_block(fitted)})
        out.append(family)
    return families.model_copy(update={"families": out})


def write_tables(report: ValidationReport, corpus: Path, directory: Path | None = None) -> list[Path]:
    """Write the error bands and the GPU families with their fits (atomically; both or neither):
    into their shipped places, or both into ``directory``. Returns their paths."""
    if directory is None:
        paths = [CALIBRATION_DIR / ERROR_BANDS_NAME, GPU_FAMILIES_YAML]
    else:
        paths = [Path(directory) / ERROR_BANDS_NAME, Path(directory) / GPU_FAMILIES_NAME]
    check_outputs(*paths)  # both writable before either is written: both or neither
    fitted_on = report.of_category(FIT_CATEGORY)  # the rows the constants are fitted on and the time bands come from
    header = HEADER.format(corpus=corpus.name, rows=len(fitted_on.priced))
    bands_text = header + yaml.safe_dump(bands_of(report).model_dump(), sort_keys=True, width=160)
    families_text = render_families(fitted_families(fitted_on, load_gpu_families()))
    for path, text in zip(paths, (bands_text, families_text)):
        write_atomic(path, text)
    if directory is None:
        load_gpu_families.cache_clear()  # the next cluster loaded gets the constants just written
    return paths


@lru_cache(maxsize=4)
def load_bands(path: Path = CALIBRATION_DIR / ERROR_BANDS_NAME) -> ErrorBands:
    return validate_as(ErrorBands, read_document(path), str(path))


def carries_fitted_constants(cluster: ClusterSpec, fitted: dict[str, float] | None) -> bool:
    """Whether the cluster prices with its family's fitted constants (to the file's rounding)."""
    if not fitted:
        return False
    return all(abs(getattr(cluster.efficiency, k) - v) <= 1e-6 * max(1.0, abs(v)) for k, v in fitted.items())


def error_band_pct(stack: str, cluster: ClusterSpec, bands: ErrorBands, families: GpuFamilies | None = None) -> float | None:
    """The out-of-sample error that applies to a plan on ``stack`` and ``cluster`` (module docstring)."""
    family = (families or load_gpu_families()).family_of(cluster.gpu.name)
    cell = bands.bands.get(stack, {}).get(family.name)
    if cell is None or cell.rows < BAND_MIN_ROWS:
        cell = bands.families.get(family.name)
    if cell is None:
        return None
    fitted = family.fit.values.model_dump() if family.fit is not None else None
    return cell.heldout_mape_pct if carries_fitted_constants(cluster, fitted) else cell.apriori_mape_pct


def memory_error_band_pct(stack: str, cluster: ClusterSpec, bands: ErrorBands, families: GpuFamilies | None = None) -> float | None:
    """The 95th-percentile under-prediction of ``stack``'s published memory readings, held out
    (module docstring); None where it has fewer than ``BAND_MIN_ROWS``, or where no published run priced the
    cluster's GPU class (the readings are GPU caching-allocator peaks: nothing says they hold for a CPU's)."""
    band = bands.memory.get(stack)
    family = (families or load_gpu_families()).family_of(cluster.gpu.name)
    if band is None or band.rows < BAND_MIN_ROWS or family.name not in bands.families:
        return None
    return band.under_p95_pct


def with_error_band(est: Estimate, stack: str, cluster: ClusterSpec, bands: ErrorBands | None = None) -> Estimate:
    """``est`` carrying the shipped error bands of its stack and GPU family: step time and peak memory."""
    bands = bands or load_bands()
    return est.model_copy(update={"error_band_pct": error_band_pct(stack, cluster, bands),
                                  "memory_error_band_pct": memory_error_band_pct(stack, cluster, bands)})
