"""`faultllm train` (configs/train.yaml): QLoRA SFT on one split, then restricted-label evaluation.

Writes adapter/, metrics.json, predictions.csv, prompt_features.json, epochs.jsonl, learning_curves.{csv,png},
confusion_matrix.png and the split (split.json, train/test.parquet, scaler.json).
"""

from __future__ import annotations

from pathlib import Path

from faultllm.config.jobs import TrainJob
from faultllm.data.splits import prepared_split
from faultllm.llm.finetune import train_on_split
from faultllm.run.directory import TRAIN_RESUME, start_run
from faultllm.run.kind import RunKind
from faultllm.runtime.distributed import is_main_process


def run(cfg: TrainJob, run_dir: Path) -> dict:
    """Fine-tune, evaluate, and write everything into run_dir. Returns metrics.json's content.

    Under torchrun/accelerate every rank trains (DDP) and scores its share of the rows; the main
    process writes the files.
    """
    run_dir = start_run(cfg, run_dir, RunKind.TRAIN, TRAIN_RESUME) if is_main_process() else Path(run_dir)
    split, scaler = prepared_split(cfg.data, cfg.seed)
    return train_on_split(cfg, split, scaler, run_dir)
