"""`faultllm baselines` (configs/baselines.yaml): classical models on the very same split as the LLM.

Writes metrics.json, predictions.csv (each model's test predictions and per-label probabilities), models/ (for `faultllm predict`),
table_4_2.{md,csv}, feature_importances.csv and the split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm.baselines import (
    check_models,
    fit_and_score,
    importances,
    missing_packages,
    recalibrate,
    save_model,
    table_4_2,
    tune,
)
from faultllm.calibration import CALIBRATION_FILE
from faultllm.errors import FaultLLMError
from faultllm.files import write_csv
from faultllm.loaders import LABEL
from faultllm.progress import steps
from faultllm.reporting import print_table, write_table
from faultllm.results import BaselineMetrics
from faultllm.rundir import save_split, start_run, write_json
from faultllm.schema import BaselinesJob
from faultllm.splits import Split, cv_folds, fold_splits, hold_out, make_split, scale_split

log = logging.getLogger(__name__)


def run(cfg: BaselinesJob, run_dir: Path) -> dict[str, dict]:
    names = available_models(list(cfg.baselines.models))
    run_dir = start_run(cfg, run_dir, "baselines")
    raw = make_split(cfg.data, cfg.seed)
    check_models(names, len(raw.train))
    split, scaler = scale_split(raw, cfg.data.normalize, cfg.data.scale_range)  # as `train` does: then held out
    split, held_out = hold_out(split, cfg.calibrate.holdout, cfg.seed)
    raw = hold_out(raw, cfg.calibrate.holdout, cfg.seed)[0]  # the same rows: tuning folds never see them
    save_split(run_dir, split, scaler, cfg.seed)
    folds = _tuning_folds(raw, cfg) if cfg.baselines.tune else None

    results, tables, recalibrations = {}, [], {}
    predictions = pd.DataFrame({"row": range(len(split.test)), "label": split.test[LABEL]})
    for name in steps(names, "baselines: models done"):
        params = tune(name, folds, cfg.seed, cfg.baselines.n_trials) if folds else {}
        cv_accuracy = params.pop("cv_accuracy", None)
        log.info(f"{name}: fitting on {len(split.train)} rows")
        model, predictions[name], probabilities, results[name] = fit_and_score(name, split, cfg.seed, params)
        for label in split.labels:  # for `report`'s calibration and selective prediction
            predictions[f"{name}_prob_{label}"] = probabilities[str(label)].to_numpy()
        save_model(model, run_dir, name)
        if held_out is not None:
            recalibrations[name] = recalibrate(model, split, held_out, cfg.calibrate.coverage)
        if folds:
            results[name] |= {"params": params, "cv_accuracy": cv_accuracy}
        if name in cfg.baselines.importances_for:
            repeats = cfg.baselines.permutation_repeats
            log.info(f"{name}: permutation importances, {len(split.features)} features x {repeats} repeats")
            tables.append(importances(name, model, split, cfg.seed, repeats))

    write_json(run_dir / "metrics.json", {name: BaselineMetrics.from_json(r).to_json() for name, r in results.items()})
    write_csv(predictions, run_dir / "predictions.csv")  # per test row: what `report`'s paired tests use
    if recalibrations:
        write_json(run_dir / CALIBRATION_FILE, recalibrations)
    table = table_4_2(results)
    write_table(table, run_dir / "table_4_2")
    if tables:
        write_csv(pd.concat(tables), run_dir / "feature_importances.csv")
    print_table(f"baselines: {cfg.data.display_name} ({'tuned' if cfg.baselines.tune else 'study settings'})", table)
    log.info(f"written to {run_dir}")
    return results


def available_models(names: list[str]) -> list[str]:
    """The requested models whose library is installed; a one-line notice for each that is not."""
    missing = missing_packages(names)
    for name, package in missing.items():
        log.warning(f"baselines: {name} skipped: {package} is not installed (pip install 'faultllm[boosting]')")
    kept = [name for name in names if name not in missing]
    if not kept:
        raise FaultLLMError(f"baselines.models={names}: none of their libraries is installed")
    return kept


def _tuning_folds(raw: Split, cfg: BaselinesJob) -> list[Split]:
    """The same stratified (run-grouped) folds as `faultllm hpo`, each scaled on its own training rows."""
    folds = cv_folds(raw.train, cfg.baselines.folds, cfg.seed)
    return fold_splits(raw, folds, cfg.data.normalize, cfg.data.scale_range)
