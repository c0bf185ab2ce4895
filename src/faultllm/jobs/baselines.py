"""`faultllm baselines` (configs/baselines.yaml): classical models on the very same split as the LLM.

Writes metrics.json, predictions.csv (each model's test predictions and per-label probabilities), models/ (for `faultllm predict`),
table_4_2.{md,csv}, feature_importances.csv and the split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm.compare.baselines import (
    ModelTask,
    check_models,
    fit_model,
    missing_packages,
    recalibrate,
    save_model,
    table_4_2,
)
from faultllm.compare.calibration import CALIBRATION_FILE
from faultllm.compare.tables import print_table, write_table
from faultllm.config.jobs import BaselinesJob
from faultllm.data.splits import Split, cv_folds, fold_splits, hold_out, make_split, scale_split
from faultllm.data.tables import LABEL
from faultllm.run.directory import save_split, start_run
from faultllm.run.kind import RunKind
from faultllm.run.records import BaselineMetrics, BaselinesMetrics
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_csv, write_json
from faultllm.runtime.progress import steps
from faultllm.runtime.threads import available_cores, loop_plan, parallel_map

log = logging.getLogger(__name__)


def run(cfg: BaselinesJob, run_dir: Path) -> dict[str, dict]:
    names = available_models(list(cfg.baselines.models))
    run_dir = start_run(cfg, run_dir, RunKind.BASELINES)
    raw = make_split(cfg.data, cfg.seed)
    check_models(names, len(raw.train))
    split, scaler = scale_split(raw, cfg.data.normalize, cfg.data.scale_range)  # as `train` does: then held out
    split, held_out = hold_out(split, cfg.calibrate.holdout, cfg.seed)
    raw = hold_out(raw, cfg.calibrate.holdout, cfg.seed)[0]  # the same rows: tuning folds never see them
    save_split(run_dir, split, scaler, cfg.seed)
    folds = _tuning_folds(raw, cfg) if cfg.baselines.tune else None

    results, tables, recalibrations = {}, [], {}
    predictions = pd.DataFrame({"row": range(len(split.test)), "label": split.test[LABEL]})
    workers, n_jobs = loop_plan(available_cores(cfg.threads).count, len(names), len(split.train))
    log.info(f"baselines: {len(names)} models in {workers} worker process(es) of {n_jobs} thread(s)")
    outcomes = parallel_map(fit_model, _model_tasks(names, split, folds, cfg, n_jobs), workers, n_jobs)
    for name, outcome in zip(names, steps(outcomes, "baselines: models done", total=len(names)), strict=True):
        predictions[name], results[name] = outcome.predicted, outcome.metrics
        for label in split.labels:  # for `report`'s calibration and selective prediction
            predictions[f"{name}_prob_{label}"] = outcome.probabilities[str(label)].to_numpy()
        save_model(outcome.model, run_dir, name)
        if held_out is not None:
            recalibrations[name] = recalibrate(outcome.model, split, held_out, cfg.calibrate.coverage)
        if outcome.importances is not None:
            tables.append(outcome.importances)

    BaselinesMetrics({name: BaselineMetrics.from_json(r) for name, r in results.items()}).write(
        run_dir / "metrics.json"
    )
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


def _model_tasks(names: list[str], split: Split, folds: list[Split] | None, cfg: BaselinesJob, n_jobs: int) -> list:
    settings = cfg.baselines
    repeats = {name: settings.permutation_repeats if name in settings.importances_for else None for name in names}
    return [ModelTask(name, split, cfg.seed, folds, settings.n_trials, repeats[name], n_jobs) for name in names]


def _tuning_folds(raw: Split, cfg: BaselinesJob) -> list[Split]:
    """The same stratified (run-grouped) folds as `faultllm hpo`, each scaled on its own training rows."""
    folds = cv_folds(raw.train, cfg.baselines.folds, cfg.seed)
    return fold_splits(raw, folds, cfg.data.normalize, cfg.data.scale_range)
