"""Which command made a run directory: the one rule every command reads a run's kind by."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path


class RunKind(str, Enum):
    """The command that wrote a run directory, as run_info.json's `job` records it."""

    PREPARE = "prepare"
    TRAIN = "train"
    HPO = "hpo"  # its refit in final/ is an hpo run too
    BASELINES = "baselines"
    EVALUATE = "evaluate"
    PREDICT = "predict"
    EXPLAIN = "explain"
    REPORT = "report"
    PLAN = "plan"
    BENCH = "bench"
    UNKNOWN = "unknown"  # no run_info.json and nothing that tells

    def __str__(self) -> str:
        return self.value

    @property
    def command(self) -> str:
        """The command as a user types it: `faultllm data prepare`, `faultllm train`."""
        return "faultllm data prepare" if self is RunKind.PREPARE else f"faultllm {self.value}"

    @property
    def fine_tunes(self) -> bool:
        """A run that leaves a fine-tuned LLM: train, or hpo (its refit)."""
        return self in (RunKind.TRAIN, RunKind.HPO)


def run_kind(run_dir: Path) -> RunKind:
    """The kind of run in `run_dir`: run_info.json's job, or for runs made before it was recorded, what the
    directory holds."""
    run_dir = Path(run_dir)
    info = run_dir / "run_info.json"
    job = json.loads(info.read_text()).get("job") if info.exists() else None
    if job:
        return RunKind(job) if job in RunKind.__members__.values() else RunKind.UNKNOWN
    if (run_dir / "models").is_dir() or (run_dir / "table_4_2.csv").exists():
        return RunKind.BASELINES
    return RunKind.TRAIN if (run_dir / "adapter").is_dir() else RunKind.UNKNOWN
