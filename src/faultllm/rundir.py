"""What a run directory holds and how a finished run is reopened from it alone.

Every run writes `config.yaml` (resolved), `run_info.json` and `faultllm.log`. A run that
made a split also keeps it: `split.json` (counts, labels, features, fingerprint), the rows
each side saw (`train.parquet`, `test.parquet`, scaled as the model saw them) and
`scaler.json`, so `evaluate` and `explain` need nothing but the directory.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from faultllm.errors import FaultLLMError
from faultllm.loaders import LABEL, normalize_labels, read_table, require_columns, validate_features
from faultllm.splits import MinMaxScaler, Split, prepared_split

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "faultllm", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
    "optuna", "scikit-learn", "pandas", "numpy", "hydra-core", "flash-attn",
)  # fmt: skip


def start_run(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Create the run directory and write the resolved config, seed, command and versions."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    write_json(
        run_dir / "run_info.json",
        {"seed": cfg.get("seed"), "command": sys.argv, "versions": library_versions()},
    )
    return run_dir


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_split(run_dir: Path, split: Split, scaler: MinMaxScaler | None, seed: int) -> dict:
    """split.json, the rows of both sides and the scaler; returns split.json's content."""
    summary = split.summary(scaler, seed)
    write_json(run_dir / "split.json", summary)
    for name, frame in (("train", split.train), ("test", split.test)):
        frame[split.features + [LABEL]].to_parquet(run_dir / f"{name}.parquet", index=False)
    if scaler is not None:
        write_json(run_dir / "scaler.json", scaler.to_dict(split.features))
    return summary


PROMPT_FEATURES = "prompt_features.json"  # the features in the order the prompts wrote them (prompt.feature_order)


@dataclass(frozen=True)
class SavedRun:
    """A finished run reopened from its directory: its config and the split it was trained on."""

    run_dir: Path
    cfg: DictConfig
    split: Split  # scaled as at training time
    scaler: MinMaxScaler | None

    def prompt_features(self) -> list[str]:
        path = self.run_dir / PROMPT_FEATURES
        return read_json(path) if path.exists() else self.split.features  # runs made before feature_order

    def read_rows(self, path: Path, key: str, require_label: bool = True) -> pd.DataFrame:
        """Raw rows from a table (`key`=path), checked against this run's features and labels, scaled like its rows.
        Without `require_label` the label column may be absent (rows to diagnose)."""
        if not path.exists():
            raise FaultLLMError(f"{key}={path}: no such file")
        features, labels = self.split.features, self.split.labels
        frame = read_table(path)
        needed, what = [*features, LABEL], f"the run's features and a {LABEL!r} column"
        if not require_label:
            needed, what = features, "the run's features (a label column is optional)"
        require_columns(frame, needed, path, what)
        validate_features(frame, features, path, allow_missing=self.cfg.data.get("allow_missing", False))
        if LABEL in frame:
            frame[LABEL] = normalize_labels(frame[LABEL], path, LABEL)
            unknown = sorted(set(frame[LABEL]) - set(labels), key=str)
            if unknown:
                raise FaultLLMError(f"{path}: label {unknown[0]!r} was not trained on (labels: {labels})")
        return self.scaler.transform(frame, features) if self.scaler is not None else frame


def open_run(run_dir: str | os.PathLike, command: str = "faultllm train") -> SavedRun:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "split.json").exists():
        raise FaultLLMError(f"run_dir={run_dir}: not a finished `{command}` run (no config.yaml / split.json)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    summary = read_json(run_dir / "split.json")
    if (run_dir / "test.parquet").exists():
        split, scaler = _read_split(run_dir, summary)
    else:  # runs written before the rows were kept: rebuild them from the data files
        split, scaler = prepared_split(cfg.data, cfg.seed)
    if split.fingerprint() != summary["split_fingerprint"]:
        raise FaultLLMError(f"{run_dir}: the split's rows differ from the ones trained on (files changed?)")
    return SavedRun(run_dir, cfg, split, scaler)


def _read_split(run_dir: Path, summary: dict) -> tuple[Split, MinMaxScaler | None]:
    train, test = (pd.read_parquet(run_dir / f"{name}.parquet") for name in ("train", "test"))
    integer_labels = pd.api.types.is_integer_dtype(train[LABEL])
    labels = [int(label) if integer_labels else label for label in summary["labels"]]
    scaler_path = run_dir / "scaler.json"
    scaler = MinMaxScaler.from_dict(read_json(scaler_path)) if scaler_path.exists() else None
    return Split(train=train, test=test, features=list(summary["features"]), labels=labels), scaler


def expand_run_dirs(paths: list) -> list[Path]:
    """Run directories, with a Hydra multirun directory (multirun.yaml) replaced by its finished jobs'
    directories (those with a metrics.json)."""
    found = []
    for path in map(Path, paths):
        if (path / "multirun.yaml").exists():
            jobs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_job_number)
            finished = [job for job in jobs if (job / "metrics.json").exists()]
            if not finished:
                raise FaultLLMError(f"{path}: a multirun directory without finished runs")
            if len(finished) < len(jobs):
                log.warning(
                    "%s: %d of %d jobs have not finished; using the others", path, len(jobs) - len(finished), len(jobs)
                )
            found += finished
        else:
            found.append(path)
    return found


def _job_number(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)
