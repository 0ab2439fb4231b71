"""``ppplan validate``: the cost model against published measurements.

Each priceable row of ``public_runs.csv`` (``planner.trust.published_runs``) is priced
at exactly its configuration and compared on the metric its source reports.
Three predictions exist per row:

- a priori: the cluster presets as shipped (constants documented in
  ``costmodels/compute.py``, fitted to nothing);
- held-out (``mape_pct``): ``VALIDATION_FIT_TERMS`` fitted by least squares on
  log step time to every *other* source, then used on this row
  (leave-one-source-out, so no row is scored with constants it helped fit);
- fitted (``mape_pct_fitted``): the same terms fitted to all rows (in-sample).

With no fitted terms (``fit_terms=()``) all three are the a-priori figure.
Every metric compared (tokens/s per GPU, TFLOP/s per GPU, MFU) is inversely
proportional to step time for a fixed configuration, so each row's measurement
converts exactly to an equivalent step time, which is what the fit sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.trust.calibration import MeasuredRun, cross_validate, error_pct, estimate_with, fit_efficiency, mape_pct
from planner.trust.published_runs import DEFAULT_RUNS_CSV, PublishedRow, SkippedRow, read_published_runs
from profiles.schema import Estimate

# One constant shared by every GPU (its a-priori value is the same for A100 and H100):
# the large-GEMM fraction of dense peak.
VALIDATION_FIT_TERMS: tuple[str, ...] = ("gemm_max",)


def metric_value(metric: str, est: Estimate, gpus: int) -> float:
    """The figure ``metric`` names, from an estimate (MFU in %, as sources print it)."""
    values = {
        "step_time_s": est.step_time_s,
        "tokens_per_gpu_per_s": est.tokens_per_s / gpus,
        "hw_tflops_per_gpu": est.hw_tflops_per_gpu,
        "model_tflops_per_gpu": est.model_tflops_per_gpu,
        "mfu_pct": 100.0 * est.mfu,
    }
    return values[metric]


def equivalent_step_time_s(row: PublishedRow, est: Estimate) -> float:
    """The step time at which this configuration would produce the measured figure."""
    if row.metric == "step_time_s":
        return row.measured
    gpus = row.config.world_size
    return est.step_time_s * metric_value(row.metric, est, gpus) / row.measured


@dataclass(frozen=True)
class RowResult:
    row: PublishedRow
    apriori: float
    heldout: float
    fitted: float

    def error(self, which: str) -> float:
        return error_pct(getattr(self, which), self.row.measured)


@dataclass(frozen=True)
class ValidationReport:
    results: list[RowResult]
    skipped: list[SkippedRow]
    fit_terms: tuple[str, ...]
    fitted_terms: dict[str, float]
    heldout_terms: dict[str, dict[str, float]]

    def mape(self, which: str) -> dict:
        """{"overall": MAPE over all rows, "per_source": {source: MAPE}} of one prediction."""
        per_source: dict[str, list[float]] = {}
        for r in self.results:
            per_source.setdefault(r.row.source, []).append(r.error(which))
        return {
            "overall": round(mape_pct([r.error(which) for r in self.results]), 3),
            "per_source": {s: round(mape_pct(errs), 3) for s, errs in sorted(per_source.items())},
        }

    def to_json(self) -> dict:
        """Exactly the DESIGN.md ``validate --json`` document; rows carry the held-out prediction."""
        return {
            "mape_pct": self.mape("heldout"),
            "mape_pct_fitted": self.mape("fitted"),
            "rows": [
                {
                    "run": r.row.run,
                    "source": r.row.source,
                    "metric": r.row.metric,
                    "predicted": round(r.heldout, 6),
                    "measured": r.row.measured,
                    "error_pct": round(r.error("heldout"), 3),
                    "assumptions": list(r.row.assumptions),
                }
                for r in self.results
            ],
            "skipped": [{"run": s.run, "reason": s.reason} for s in self.skipped],
        }


def _predict(row: PublishedRow, terms: dict[str, float]) -> float:
    run = _as_run(row, 1.0)
    gpus = run.gpus
    return metric_value(row.metric, estimate_with(run, terms), gpus)


def _as_run(row: PublishedRow, step_time_s: float) -> MeasuredRun:
    return MeasuredRun(row.run, row.source, row.model, row.cluster, row.train, row.config, step_time_s)


def validate(path: Path = DEFAULT_RUNS_CSV, fit_terms: tuple[str, ...] = VALIDATION_FIT_TERMS) -> ValidationReport:
    """Price every row; fit ``fit_terms`` leave-one-source-out and in-sample."""
    parsed = read_published_runs(path)
    rows = [p for p in parsed if isinstance(p, PublishedRow)]
    skipped = [p for p in parsed if isinstance(p, SkippedRow)]
    runs, apriori = [], {}
    for row in rows:
        est = estimate_with(_as_run(row, 1.0), {})
        apriori[row.run] = metric_value(row.metric, est, row.config.world_size)
        runs.append(_as_run(row, equivalent_step_time_s(row, est)))
    fitted_terms: dict[str, float] = {}
    heldout_terms: dict[str, dict[str, float]] = {r.run: {} for r in runs}
    if fit_terms and runs:
        fitted_terms = fit_efficiency(runs, fit_terms).terms
        heldout_terms, _ = cross_validate(runs, fit_terms, {r.run: r.group for r in runs})
    results = [
        RowResult(
            row=row,
            apriori=apriori[row.run],
            heldout=_predict(row, heldout_terms[row.run]) if heldout_terms[row.run] else apriori[row.run],
            fitted=_predict(row, fitted_terms) if fitted_terms else apriori[row.run],
        )
        for row in rows
    ]
    per_source_terms = {}
    for r in runs:
        per_source_terms.setdefault(r.group, heldout_terms[r.run])
    return ValidationReport(results, skipped, tuple(fit_terms), fitted_terms, per_source_terms)
