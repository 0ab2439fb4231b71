"""The tables ``ppplan validate --update`` ships, and the error band every estimate carries.

``profiles/calibration/fitted_constants.yaml``: per GPU family, the constants fitted to every
priced row of that family, with their provenance (rows, sources, held-out and in-sample
MAPE, the constants each held-out source was priced with, the constants that ended on a
physical bound).

``profiles/calibration/error_bands.yaml``: the MAPE of the rows of each (stack, GPU family)
and of each family over all stacks, twice: held-out (leave-one-source-out,
``planner.trust.validation``), the error of the family's fitted constants on a source they
never saw; and a priori, the error of the preset constants, which were fitted to nothing, so
that figure is out of sample too. ``error_band_pct`` picks the one that describes the
cluster's constants: held-out when they are the family's fitted ones, a priori otherwise
(the presets as shipped, or constants of the user's own). It looks up the plan's stack on
its GPU family when that cell has at least ``BAND_MIN_ROWS`` rows, else its GPU family over
all stacks (the constants are the family's; the stack's own behaviour is then unvalidated),
else None (no published run on that GPU class, e.g. ``cpu-local``). The CLI applies it to the estimates of
``search`` and ``evaluate`` priced by the roofline (a measured profile replaces what the band
describes, so it gets none). Figures are rounded for the file: no timestamps, so the tables
change only when the corpus or the cost model does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from planner.trust.accuracy import grouped, mape_pct
from planner.trust.corpus_rules import gpu_family
from planner.trust.validation import RowResult, ValidationReport
from profiles.files import write_atomic
from profiles.loader import PUBLIC_RUNS_CSV, read_document, validate_as
from profiles.schema import ClusterSpec, Estimate, StrictModel

CALIBRATION_DIR = PUBLIC_RUNS_CSV.parent
ERROR_BANDS_NAME = "error_bands.yaml"
FITTED_CONSTANTS_NAME = "fitted_constants.yaml"
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
    fitted: dict[str, dict[str, float]]  # GPU family -> its fitted constants (fitted families only)


def _band(results: list[RowResult]) -> Band:
    return Band(heldout_mape_pct=round(mape_pct(r.error("heldout") for r in results), 2),
                apriori_mape_pct=round(mape_pct(r.error("apriori") for r in results), 2),
                rows=len(results), sources=sorted({r.row.source for r in results}))


def bands_of(report: ValidationReport) -> ErrorBands:
    """The error-band table of a validation run."""
    by_stack = grouped(report.priced, lambda r: r.row.stack)
    return ErrorBands(
        bands={stack: {f: _band(rs) for f, rs in grouped(rows, lambda r: r.family).items()} for stack, rows in by_stack.items()},
        families={f: _band(rs) for f, rs in grouped(report.priced, lambda r: r.family).items()},
        fitted={f: {k: round(v, 6) for k, v in fit.terms.items()} for f, fit in report.family_fits.items() if fit.rounds},
    )


def write_tables(report: ValidationReport, corpus: Path, directory: Path = CALIBRATION_DIR) -> list[Path]:
    """Write both tables into ``directory`` (atomically); returns their paths."""
    header = HEADER.format(corpus=corpus.name, rows=len(report.priced))
    bands = bands_of(report).model_dump()
    constants = {"families": report.family_summary()}
    paths = [Path(directory) / ERROR_BANDS_NAME, Path(directory) / FITTED_CONSTANTS_NAME]
    texts = [header + yaml.safe_dump(doc, sort_keys=True, width=160) for doc in (bands, constants)]  # both or neither
    for path, text in zip(paths, texts):
        write_atomic(path, text)
    return paths


@lru_cache(maxsize=4)
def load_bands(path: Path = CALIBRATION_DIR / ERROR_BANDS_NAME) -> ErrorBands:
    return validate_as(ErrorBands, read_document(path), str(path))


def carries_fitted_constants(cluster: ClusterSpec, fitted: dict[str, float] | None) -> bool:
    """Whether the cluster prices with its family's fitted constants (to the file's rounding)."""
    if not fitted:
        return False
    return all(abs(getattr(cluster.efficiency, k) - v) <= 1e-6 * max(1.0, abs(v)) for k, v in fitted.items())


def error_band_pct(stack: str, cluster: ClusterSpec, bands: ErrorBands) -> float | None:
    """The out-of-sample error that applies to a plan on ``stack`` and ``cluster`` (module docstring)."""
    family = gpu_family(cluster.gpu.name)
    if family is None:
        return None
    cell = bands.bands.get(stack, {}).get(family)
    if cell is None or cell.rows < BAND_MIN_ROWS:
        cell = bands.families.get(family)
    if cell is None:
        return None
    return cell.heldout_mape_pct if carries_fitted_constants(cluster, bands.fitted.get(family)) else cell.apriori_mape_pct


def with_error_band(est: Estimate, stack: str, cluster: ClusterSpec, bands: ErrorBands | None = None) -> Estimate:
    """``est`` carrying the shipped error band of its stack and GPU family."""
    band = error_band_pct(stack, cluster, bands or load_bands())
    return est.model_copy(update={"error_band_pct": band})
