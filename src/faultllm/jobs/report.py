"""`faultllm report RUN_DIR... [--out DIR]` (configs/report.yaml): one comparison table (Markdown, CSV,
bar chart) of train and baselines runs; refuses runs made on different splits."""

from __future__ import annotations

from faultllm import plots
from faultllm.reporting import comparison_table, print_table, write_table
from faultllm.rundir import start_run


def run(cfg, out_dir):
    table, fingerprint = comparison_table(list(cfg.run_dirs))
    out_dir = start_run(cfg, out_dir)
    write_table(table, out_dir / "comparison")
    plots.comparison(table, out_dir / "comparison.png")
    print_table(f"comparison on split {fingerprint}", table)
    print(f"written to {out_dir}")
    return table
