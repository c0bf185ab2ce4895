"""A finished run reopened from its directory alone: its kind, config, split and scaler, and the rows
given to it checked and scaled like its own; an hpo run stands for its refit (final/)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from faultllm.config.load import load_saved
from faultllm.data.splits import MinMaxScaler, Split, prepared_split
from faultllm.data.tables import LABEL, normalize_labels, read_table, require_columns, validate_features
from faultllm.run.directory import read_json
from faultllm.run.kind import RunKind, run_kind
from faultllm.run.records import SplitSummary
from faultllm.runtime.errors import FaultLLMError

log = logging.getLogger(__name__)

PROMPT_FEATURES = "prompt_features.json"  # the features in the order the prompts wrote them (prompt.feature_order)


@dataclass(frozen=True)
class SavedRun:
    """A finished run reopened from its directory: the kind of run, its config and its split."""

    run_dir: Path
    kind: RunKind  # train | hpo (the refit in final/) | baselines | prepare
    cfg: Any  # the job's typed config (faultllm.config.jobs)
    split: Split  # scaled as at training time
    scaler: MinMaxScaler | None

    @property
    def untrained(self) -> bool:
        """trainer.epochs=0: the base model, reopened without an adapter."""
        return self.cfg.trainer.epochs == 0

    @property
    def has_llm(self) -> bool:
        """A model to reopen: the run's adapter, or the base model alone for a run that trained nothing."""
        return self.untrained or (self.run_dir / "adapter").is_dir()

    def prompt_features(self) -> list[str]:
        path = self.run_dir / PROMPT_FEATURES
        return read_json(path) if path.exists() else self.split.features  # runs made before feature_order

    def read_rows(
        self, path: Path, key: str, require_label: bool = True, scaled_key: str | None = None, scaled: bool = False
    ) -> pd.DataFrame:
        """Raw rows from a table (`key`=path), checked against this run's features and labels, scaled like its rows.
        Without `require_label` the label column may be absent (rows to diagnose). Rows that look already
        scaled are refused, unless `scaled` (the config key `scaled_key` says so): then they are taken as they are."""
        if not path.exists():
            raise FaultLLMError(f"{key}={path}: no such file")
        features, labels = self.split.features, self.split.labels
        frame = read_table(path)
        if frame.empty:
            raise FaultLLMError(f"{key}={path}: the table has no rows")
        needed, what = [*features, LABEL], f"the run's features and a {LABEL!r} column"
        if not require_label:
            needed, what = features, "the run's features (a label column is optional)"
        require_columns(frame, needed, path, what)
        validate_features(frame, features, path, allow_missing=self.cfg.data.allow_missing)
        if LABEL in frame:
            frame[LABEL] = normalize_labels(frame[LABEL], path, LABEL)
            unknown = sorted(set(frame[LABEL]) - set(labels), key=str)
            if unknown:
                raise FaultLLMError(f"{path}: label {unknown[0]!r} was not trained on (labels: {labels})")
        if self.scaler is None or scaled:
            return frame
        self._refuse_scaled(frame, path, key, scaled_key)
        return self.scaler.transform(frame, features)

    def _refuse_scaled(self, frame: pd.DataFrame, path: Path, key: str, scaled_key: str | None) -> None:
        """Scaling rows twice (a run's own train/test.parquet hold scaled rows) silently ruins every prediction."""
        share = self.scaler.share_already_scaled(frame, self.split.train, self.split.features)
        if share is not None and share >= 0.9:
            low, high = self.scaler.feature_range
            accept = f", or {scaled_key}=true to take them as they are" if scaled_key else ""
            raise FaultLLMError(
                f"{key}={path}: the rows look already scaled into the run's [{low:g}, {high:g}] range ({share:.0%} of "
                f"the features that scaling moves); give raw rows (they are scaled like the training rows){accept}"
            )


def open_run(run_dir: str | os.PathLike, command: str = "faultllm train") -> SavedRun:
    run_dir = hpo_refit_dir(Path(run_dir))
    if not (run_dir / "config.yaml").exists() or not (run_dir / "split.json").exists():
        raise FaultLLMError(f"run_dir={run_dir}: not a finished `{command}` run (no config.yaml / split.json)")
    cfg = load_saved(run_dir / "config.yaml")
    summary = SplitSummary.read(run_dir / "split.json")
    if (run_dir / "test.parquet").exists():
        split, scaler = _read_split(run_dir, summary)
    else:  # runs written before the rows were kept: rebuild them from the data files
        split, scaler = prepared_split(cfg.data, cfg.seed)
    if split.fingerprint() != summary.split_fingerprint:
        raise FaultLLMError(f"{run_dir}: the split's rows differ from the ones trained on (files changed?)")
    return SavedRun(run_dir, run_kind(run_dir), cfg, split, scaler)


def open_train_run(run_dir: str | os.PathLike, command: str, instead: str) -> SavedRun:
    """`open_run` for the commands that load a train run's adapter (or its base model alone, for a run with
    trainer.epochs=0); anything else is refused in one line, a baselines run with what to use `instead`."""
    saved = open_run(run_dir)
    if saved.kind is RunKind.BASELINES:
        raise FaultLLMError(f"run_dir={run_dir} is a `faultllm baselines` run; {command} needs a train run: {instead}")
    if not saved.kind.fine_tunes and saved.kind is not RunKind.UNKNOWN:  # unknown: an adapter/ decides, below
        raise FaultLLMError(
            f"run_dir={run_dir} is a `{saved.kind.command}` run (no model); "
            f"{command} needs a `faultllm train` run (or an hpo run, for its refit in final/)"
        )
    if not saved.has_llm:
        raise FaultLLMError(f"run_dir={run_dir}: no adapter found (adapter/); not a finished `faultllm train` run")
    return saved


def hpo_refit_dir(run_dir: Path) -> Path:
    """An hpo run's directory stands for its refit (final/): the best parameters trained on the whole
    training split and tested, the one model the search leaves. Any other directory is itself."""
    if run_kind(run_dir) is not RunKind.HPO or (run_dir / "split.json").exists():
        return run_dir
    final = run_dir / "final"
    if not (final / "config.yaml").exists():
        raise FaultLLMError(
            f"{run_dir} is a `faultllm hpo` run without a refit model (no final/): let it finish, or rerun it "
            "with hpo.refit=true; or give a `faultllm train` run"
        )
    log.info(f"{run_dir} is an hpo run: using its refit, {final}")
    return final


def _read_split(run_dir: Path, summary: SplitSummary) -> tuple[Split, MinMaxScaler | None]:
    train, test = (pd.read_parquet(run_dir / f"{name}.parquet") for name in ("train", "test"))
    integer_labels = pd.api.types.is_integer_dtype(train[LABEL])
    labels = [int(label) if integer_labels else label for label in summary.labels]
    scaler_path = run_dir / "scaler.json"
    scaler = MinMaxScaler.from_dict(read_json(scaler_path)) if scaler_path.exists() else None
    return Split(train=train, test=test, features=list(summary.features), labels=labels), scaler


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
            found.append(hpo_refit_dir(path))
    return found


def _job_number(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def load_importances(run_dir: Path) -> pd.DataFrame:
    """feature_importances.csv of a baselines run (for `explain` and `prompt.feature_order=importance`)."""
    path = Path(run_dir) / "feature_importances.csv"
    if not path.exists():
        raise FaultLLMError(f"{run_dir}: no feature_importances.csv; run `faultllm baselines` with the same data first")
    return pd.read_csv(path)


def baseline_importances(run_dir: str, model: str, split_fingerprint: str) -> dict[str, float]:
    """Impurity importance by feature from a baselines run on the same split (fitted on training rows only:
    test rows never shape the prompt); `run_dir` may be a multirun over seeds."""
    matching = [
        candidate
        for candidate in expand_run_dirs([run_dir])  # a multirun: the job on this split (seed)
        if (candidate / "split.json").exists()
        and SplitSummary.read(candidate / "split.json").split_fingerprint == split_fingerprint
    ]
    if not matching:
        raise FaultLLMError(
            f"prompt.importance_from={run_dir}: no baselines run there was made on this split (same data and seed)"
        )
    table = load_importances(matching[0])
    rows = table[table["model"] == model]
    if rows.empty or rows["impurity"].isna().all():
        shown = ", ".join(sorted(set(table.loc[table["impurity"].notna(), "model"])))
        raise FaultLLMError(f"prompt.importance_model={model!r}: {matching[0]} has impurity importances for: {shown}")
    return dict(zip(rows["feature"].astype(str), rows["impurity"], strict=True))
