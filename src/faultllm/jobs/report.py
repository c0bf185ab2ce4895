"""`faultllm report RUN_DIR... [--out DIR]` (configs/report.yaml): compare train and baselines runs.

A multirun directory counts as its runs. Per model (and training-set size): mean ± sd and a 95%
interval over seeds (a t-interval on the logit scale, inside [0, 1]) (comparison.{md,csv,png}, runs.csv);
each LLM against each other LLM and each baseline on the same test rows: exact McNemar per split and a
paired t-test over seeds (the exact sign test where every seed has the same gap), raw and Holm-adjusted
p-values (paired_tests.{md,csv}); accuracy against training rows when the runs vary data.train_size
(train_size_curve.png). For every model that kept per-row probabilities: ECE, Brier score and NLL,
mean ± sd over seeds, and a reliability diagram per model (calibration.{md,csv,png}); risk-coverage curves
pooled over seeds and their area (selective.{md,csv,png}).
Runs on different data configs, and baselines runs that differ in more than the seed and
data.train_size, are refused; LLM runs that differ become rows of their own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm import plots
from faultllm.baselines import NAMES
from faultllm.calibration import CALIBRATION_FILE, LLM, recalibration_row
from faultllm.comparison import (
    ModelRun,
    aggregate,
    calibration_summary,
    load_runs,
    paired_tests,
    reliability_curves,
    runs_table,
    selective_summary,
    without_forecasts,
)
from faultllm.files import write_csv, write_text
from faultllm.reporting import (
    calibration_display,
    markdown,
    print_table,
    selective_display,
    summary_display,
    tests_display,
)
from faultllm.rundir import read_json, start_run
from faultllm.schema import ReportJob

log = logging.getLogger(__name__)
KEYS = {name: key for key, name in NAMES.items()}  # a baseline's display name -> its key in calibration.json


def run(cfg: ReportJob, out_dir: Path):
    results = load_runs(list(cfg.run_dirs))
    runs = runs_table(results)
    log.info(f"report: intervals over seeds and paired tests for {len(results)} model runs")
    summary, tests = aggregate(runs), paired_tests(results)
    out_dir = start_run(cfg, out_dir, "report")
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
    if tests.empty:
        log.info(_no_tests_reason(results))
    else:
        write_csv(tests, out_dir / "paired_tests.csv")
        write_text(out_dir / "paired_tests.md", markdown(tests_display(tests)))
        print_table("paired tests on the same test rows", tests_display(tests))
    _trust(results, out_dir)
    _recalibrated(results, out_dir)
    log.info(f"written to {out_dir}")
    return summary


def _no_tests_reason(results: list[ModelRun]) -> str:
    kinds = {r.kind for r in results}
    if "llm" not in kinds:
        return "paired tests skipped: no LLM (train) run among the runs; they compare an LLM with the others"
    if len({r.model for r in results}) < 2:
        return "paired tests skipped: only one model among the runs"
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
    calibration = calibration_summary(results)
    if calibration.empty:
        return
    write_text(out_dir / "calibration.md", markdown(calibration_display(calibration)))
    write_csv(calibration, out_dir / "calibration.csv")
    largest = calibration["Train rows"].max()  # among the runs with probabilities: the plots are never empty
    title = f"reliability, {largest} training rows (test rows pooled over seeds, 15 equal-mass bins; shaded: 95% interval)"
    plots.reliability(reliability_curves(results, largest), out_dir / "calibration.png", title)
    print_table("calibration on the test rows (mean ± sd over seeds)", calibration_display(calibration))
    selective, curves = selective_summary(results)
    write_text(out_dir / "selective.md", markdown(selective_display(selective)))
    write_csv(selective, out_dir / "selective.csv")
    shown = {model: curve for (model, rows), curve in curves.items() if rows == largest}
    title = f"selective prediction, {largest} training rows\n(test rows pooled over seeds)"
    plots.risk_coverage(shown, out_dir / "selective.png", title)
    print_table("selective prediction: answer the most confident rows only", selective_display(selective))
    curve_rows = [curve.assign(Model=model, **{"Train rows": rows}) for (model, rows), curve in curves.items()]
    write_csv(pd.concat(curve_rows), out_dir / "selective_curves.csv")


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
