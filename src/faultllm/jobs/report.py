"""`faultllm report RUN_DIR... [--out DIR]` (configs/report.yaml): compare train and baselines runs.

The seed is the unit. A multirun directory counts as its runs. Per model (and training-set size): mean ±
sd and a 95% interval over seeds (comparison.{md,csv,png}, runs.csv); each LLM against each other LLM and
each baseline across seeds on the same splits: mean gap, its 95% interval, the sign-flip permutation test,
Holm over that table (paired_tests.{md,csv}: the headline); exact McNemar per split, labelled within-split
evidence, Holm over its own table (within_split_tests.{md,csv}); accuracy against training rows when the
runs vary data.train_size (train_size_curve.png). For every model that kept per-row probabilities: pooled
ECE beside a calibrated model's ECE at that size, per-seed ECE, Brier score and NLL (mean ± sd) and a
reliability diagram per model (calibration.{md,csv,png}; zero_probability_rows.csv where a true label got
probability 0); risk-coverage per seed, mean ± sd and the seeds' band (selective.{md,csv,png}).
Runs on different data configs, and baselines runs that differ in more than the seed and
data.train_size, are refused; LLM runs that differ become rows of their own. docs/statistics.md says
what each number estimates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm.compare import plots
from faultllm.compare.baselines import NAMES
from faultllm.compare.calibration import CALIBRATION_FILE, LLM, recalibration_row
from faultllm.compare.pooled_calibration import (
    calibration_summary,
    selective_summary,
    without_forecasts,
    zero_probability_table,
)
from faultllm.compare.pooling import ModelRun, load_runs, runs_table
from faultllm.compare.statistics import aggregate, paired_tests, within_split_tests
from faultllm.compare.tables import (
    UNIT,
    WITHIN_SPLIT,
    calibration_display,
    markdown,
    print_table,
    selective_display,
    summary_display,
    tests_display,
    within_split_display,
)
from faultllm.config.jobs import ReportJob
from faultllm.run.directory import read_json, start_run
from faultllm.run.kind import RunKind
from faultllm.runtime.files import write_csv, write_text

log = logging.getLogger(__name__)
KEYS = {name: key for key, name in NAMES.items()}  # a baseline's display name -> its key in calibration.json


def run(cfg: ReportJob, out_dir: Path):
    results = load_runs(list(cfg.run_dirs))
    runs = runs_table(results)
    log.info(f"report: intervals over seeds and paired tests for {len(results)} model runs")
    summary, tests = aggregate(runs), paired_tests(results)
    out_dir = start_run(cfg, out_dir, RunKind.REPORT)
    shown = summary_display(summary)
    write_text(out_dir / "comparison.md", markdown(shown))
    write_csv(summary, out_dir / "comparison.csv")
    write_csv(runs, out_dir / "runs.csv")
    largest = summary["Train rows"].max()
    plots.comparison(summary[summary["Train rows"] == largest], out_dir / "comparison.png")
    if summary["Train rows"].nunique() > 1:
        plots.train_size_curve(summary, out_dir / "train_size_curve.png")
    seeds = runs["Seed"].nunique()
    print_table(f"comparison over {seeds} seed{'s' * (seeds > 1)} ({len(runs)} model runs)", shown)
    _tests(results, tests, out_dir)
    _trust(results, out_dir)
    _recalibrated(results, out_dir)
    log.info(f"written to {out_dir}")
    return summary


def _tests(results: list[ModelRun], tests: pd.DataFrame, out_dir: Path) -> None:
    """paired_tests.{md,csv} (across seeds: the headline) and within_split_tests.{md,csv} (McNemar per split)."""
    within = within_split_tests(results)
    if tests.empty:
        log.info(_no_tests_reason(results, within))
    else:
        write_csv(tests, out_dir / "paired_tests.csv")
        write_text(out_dir / "paired_tests.md", f"{UNIT}\n\n{markdown(tests_display(tests))}")
        log.info(UNIT)
        print_table("paired tests across seeds (the headline)", tests_display(tests))
    if not within.empty:
        write_csv(within, out_dir / "within_split_tests.csv")
        write_text(out_dir / "within_split_tests.md", f"{WITHIN_SPLIT}\n\n{markdown(within_split_display(within))}")
        log.info(WITHIN_SPLIT)
        print_table("within-split evidence: McNemar per split", within_split_display(within))


def _no_tests_reason(results: list[ModelRun], within: pd.DataFrame) -> str:
    kinds = {r.kind for r in results}
    if "llm" not in kinds:
        return "paired tests skipped: no LLM (train) run among the runs; they compare an LLM with the others"
    if len({r.model for r in results}) < 2:
        return "paired tests skipped: only one model among the runs"
    if not within.empty:
        return (
            "paired tests across seeds skipped: no LLM shares two or more splits (seeds) with another model, "
            "so there is only within-split evidence below; rerun with more seeds to test the method"
        )
    return (
        "paired tests skipped: no LLM run shares a split (same data config and seed) with another model; "
        "rerun with the same seeds to pair them"
    )


def _trust(results: list[ModelRun], out_dir: Path) -> None:
    """calibration.{md,csv,png} and selective.{md,csv,png} for the models that kept per-row probabilities."""
    skipped = without_forecasts(results)
    if skipped:
        log.info(
            "calibration and selective prediction skip %s: no per-row probabilities (eval.mode=generate, or a "
            "run written before they were kept)", ", ".join(skipped)
        )  # fmt: skip
    log.info("report: calibration and selective prediction")
    calibration, bins = calibration_summary(results)
    if calibration.empty:
        return
    calibration_table = calibration_display(calibration)
    write_text(out_dir / "calibration.md", markdown(calibration_table))
    write_csv(calibration, out_dir / "calibration.csv")
    largest = calibration["Train rows"].max()  # among the runs with probabilities: the plots are never empty
    title = (
        f"reliability, {largest} training rows (test rows pooled over seeds, 15 equal-mass bins; shaded: 95% interval)"
    )
    panels = {model: table for (model, rows), table in bins.items() if rows == largest}
    plots.reliability(panels, out_dir / "calibration.png", title)
    print_table("calibration on the test rows (pooled over seeds; per seed: mean ± sd)", calibration_table)
    _zero_probabilities(results, out_dir)
    selective, curves = selective_summary(results)
    selective_table = selective_display(selective)
    write_text(out_dir / "selective.md", markdown(selective_table))
    write_csv(selective, out_dir / "selective.csv")
    shown = {model: curve for (model, rows), curve in curves.items() if rows == largest}
    title = f"selective prediction, {largest} training rows\n(mean over seeds; shaded: lowest to highest seed)"
    plots.risk_coverage(shown, out_dir / "selective.png", title)
    print_table("selective prediction: answer the most confident rows only", selective_table)
    curve_rows = [curve.assign(Model=model, **{"Train rows": rows}) for (model, rows), curve in curves.items()]
    write_csv(pd.concat(curve_rows), out_dir / "selective_curves.csv")


def _zero_probabilities(results: list[ModelRun], out_dir: Path) -> None:
    """zero_probability_rows.csv and a line per model where a true label got probability 0 (NLL infinite)."""
    found = zero_probability_table(results)
    if found.empty:
        return
    write_csv(found, out_dir / "zero_probability_rows.csv")
    for model, rows in found.groupby("Model", sort=False):
        log.info(
            "%s gave the true label probability 0 on %d test rows (NLL infinite; rows of predictions.csv in "
            "zero_probability_rows.csv)", model, len(rows)
        )  # fmt: skip


def _recalibrated(results: list[ModelRun], out_dir: Path) -> None:
    """recalibration.{md,csv}: per model run with a calibration.json (`calibrate.holdout`), the temperature and
    the conformal sets fitted on its held-out training rows, measured on its test rows."""
    rows = []
    for result in results:
        path = result.run_dir / CALIBRATION_FILE
        key = LLM if result.kind == "llm" else KEYS.get(result.model, result.model)
        entry = read_json(path).get(key) if path.exists() else None
        if entry is not None:
            rows.append(recalibration_row(result.model, result.seed, entry))
    if not rows:
        return
    table = pd.DataFrame(rows)
    write_text(out_dir / "recalibration.md", markdown(table))
    write_csv(table, out_dir / "recalibration.csv")
    print_table("temperature and prediction sets, fitted on held-out training rows (test rows)", table)
