"""Can each model's probabilities be trusted, over its seeds? Calibration and selective prediction
(calibration.py) of the test rows of every run that kept per-row probabilities, per seed and pooled over
seeds, per model and training-set size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from faultllm.compare.calibration import (
    Forecast,
    binned_ece,
    calibrated_ece,
    reliability,
    risk_coverage,
    scores,
    selective_scores,
    zero_probability_rows,
)
from faultllm.compare.pooling import ModelRun


def _with_forecasts(results: list[ModelRun]) -> dict[tuple[str, int], list[ModelRun]]:
    """(model, training rows) -> its runs that kept per-row probabilities, in the order given."""
    groups: dict[tuple[str, int], list[ModelRun]] = {}
    for r in results:
        if r.forecast is not None:
            groups.setdefault((r.model, r.train_rows), []).append(r)
    return groups


def without_forecasts(results: list[ModelRun]) -> list[str]:
    """Models with no run that kept probabilities (eval.mode=generate; runs written before they were kept)."""
    kept = {model for model, _ in _with_forecasts(results)}
    return list(dict.fromkeys(r.model for r in results if r.model not in kept))


def calibration_summary(results: list[ModelRun]) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """(per model and training-set size: the ECE of the test rows pooled over seeds (what the reliability
    diagram draws) and, beside it, the ECE a perfectly calibrated model would show with those confidences
    at that many rows (`calibrated_ece`); mean and sd over seeds of the per-seed ECE, Brier score, NLL, mean
    confidence and accuracy; and how many rows gave their true label probability 0 (an infinite NLL);
    per model and size, the reliability bins of its pooled rows)."""
    rows, bins = [], {}
    for (model, train_rows), runs in _with_forecasts(results).items():
        pooled = Forecast.pooled([r.forecast for r in runs])
        binned = bins[(model, train_rows)] = reliability(pooled.confidence, pooled.correct)
        per_seed = pd.DataFrame([scores(r.forecast) for r in runs])
        row = {
            "Model": model, "Train rows": train_rows, "Runs": len(runs), "Rows": len(pooled.truth),
            "ece_pooled": binned_ece(binned), "ece_calibrated": calibrated_ece(binned),
            "zero_p_true": int(per_seed.pop("zero_p_true").sum()),
        }  # fmt: skip
        rows.append(row | _over_seeds(per_seed))
    return pd.DataFrame(rows), bins


def _over_seeds(per_seed: pd.DataFrame) -> dict[str, float]:
    """key_mean and key_sd over the seeds (rows) of each column; sd NaN for one seed (and for an infinite NLL)."""
    with np.errstate(invalid="ignore"):
        return {
            name: value
            for key in per_seed
            for name, value in ((f"{key}_mean", float(per_seed[key].mean())), (f"{key}_sd", float(per_seed[key].std())))
        }


def zero_probability_table(results: list[ModelRun]) -> pd.DataFrame:
    """Where a probability of 0 was given to the true label: model, run and row of predictions.csv."""
    found = [
        {"Model": r.model, "Train rows": r.train_rows, "Seed": r.seed, "Run": str(r.run_dir), "Row": int(row)}
        for runs in _with_forecasts(results).values()
        for r in runs
        for row in zero_probability_rows(r.forecast)
    ]
    return pd.DataFrame(found, columns=["Model", "Train rows", "Seed", "Run", "Row"])


# The coverages at which per-seed risk-coverage curves are read to draw their mean and spread.
COVERAGE_GRID = np.arange(1, 101) / 100


def selective_summary(results: list[ModelRun]) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Risk-coverage on each seed's test rows: (per model and training-set size: mean and sd over seeds of the
    area under accuracy-coverage, AURC and accuracy at 50/80/100% coverage; per model and size, the curve at
    the coverages of COVERAGE_GRID: the mean accuracy over seeds and the lowest and highest seed's)."""
    rows, curves = [], {}
    for (model, train_rows), runs in _with_forecasts(results).items():
        per_seed = pd.DataFrame([selective_scores(r.forecast.confidence, r.forecast.correct) for r in runs])
        rows_scored = sum(len(r.forecast.truth) for r in runs)
        rows.append(
            {"Model": model, "Train rows": train_rows, "Runs": len(runs), "Rows": rows_scored} | _over_seeds(per_seed)
        )
        on_grid = np.array([_on_grid(risk_coverage(r.forecast.confidence, r.forecast.correct)) for r in runs])
        curves[(model, train_rows)] = pd.DataFrame({
            "coverage": COVERAGE_GRID, "accuracy": on_grid.mean(axis=0),
            "accuracy_low": on_grid.min(axis=0), "accuracy_high": on_grid.max(axis=0),
        })  # fmt: skip
    return pd.DataFrame(rows), curves


def _on_grid(curve: pd.DataFrame) -> np.ndarray:
    """A risk-coverage curve's accuracy at each coverage c of the grid: with ceil(c N) rows answered."""
    answered = np.ceil(COVERAGE_GRID * len(curve) - 1e-9).astype(int)
    return curve["accuracy"].to_numpy()[np.maximum(answered, 1) - 1]
