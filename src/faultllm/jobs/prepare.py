"""`faultllm data prepare` (configs/prepare.yaml): load, guard, sample, split and scale; write the split."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare.tables import print_summary
from faultllm.config.jobs import PrepareJob
from faultllm.data.splits import prepared_split
from faultllm.run.directory import save_split, start_run
from faultllm.run.kind import RunKind
from faultllm.run.records import SplitSummary


def run(cfg: PrepareJob, run_dir: Path) -> SplitSummary:
    run_dir = start_run(cfg, run_dir, RunKind.PREPARE)
    split, scaler = prepared_split(cfg.data, cfg.seed)
    summary = save_split(run_dir, split, scaler, cfg.seed)
    summary.write(run_dir / "summary.json")
    rows = summary.rows
    print_summary(
        f"data prepared: {cfg.data.display_name}",
        {
            "train rows per label": ", ".join(f"{k}: {v}" for k, v in rows["train"].items()),
            "test rows per label": ", ".join(f"{k}: {v}" for k, v in rows["test"].items()),
            "features": f"{len(split.features)} ({split.features[0]} ... {split.features[-1]})",
            "scaling": f"min-max to {summary.scaler_range} (fitted on train)" if scaler else "off",
            "seed / fingerprint": f"{cfg.seed} / {summary.split_fingerprint}",
            "written to": str(run_dir),
        },
    )
    return summary
