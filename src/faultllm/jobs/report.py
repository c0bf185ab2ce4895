"""`faultllm report RUN_DIR... [--out DIR]` (configs/report.yaml): compare train and baselines runs.

A multirun directory counts as its runs. Per model (and training-set size): mean ± sd and a 95%
interval over seeds (comparison.{md,csv,png}, runs.csv); each LLM against each baseline on the
same test rows: exact McNemar per split and a paired t-test over seeds (the exact sign test where
every seed has the same gap), raw and Holm-adjusted p-values (paired_tests.{md,csv});
accuracy against training rows when the runs vary data.train_size (train_size_curve.png).
Runs on different data configs, and baselines runs that differ in more than the seed and
data.train_size, are refused; LLM runs that differ become rows of their own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from faultllm import plots
from faultllm.comparison import aggregate, load_runs, paired_tests, runs_table
from faultllm.files import write_csv, write_text
from faultllm.reporting import markdown, print_table, summary_display, tests_display
from faultllm.rundir import start_run
from faultllm.schema import ReportJob

log = logging.getLogger(__name__)


def run(cfg: ReportJob, out_dir: Path):
    results = load_runs(list(cfg.run_dirs))
    runs = runs_table(results)
    summary, tests = aggregate(runs), paired_tests(results)
    out_dir = start_run(cfg, out_dir, "report")
    shown = summary_display(summary)
    write_text(out_dir / "comparison.md", markdown(shown))
    write_csv(summary, out_dir / "comparison.csv")
    write_csv(runs, out_dir / "runs.csv")
    plots.comparison(summary[summary["Train rows"] == summary["Train rows"].max()], out_dir / "comparison.png")
    if summary["Train rows"].nunique() > 1:
        plots.train_size_curve(summary, out_dir / "train_size_curve.png")
    seeds = runs["Seed"].nunique()
    print_table(f"comparison over {seeds} seed{'s' * (seeds > 1)} ({len(runs)} model runs)", shown)
    if not tests.empty:
        write_csv(tests, out_dir / "paired_tests.csv")
        write_text(out_dir / "paired_tests.md", markdown(tests_display(tests)))
        print_table("paired tests on the same test rows", tests_display(tests))
    log.info(f"written to {out_dir}")
    return summary
