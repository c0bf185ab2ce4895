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
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from faultllm.config.jobs import TrainJob
from faultllm.config.load import as_tree, load_saved
from faultllm.data.splits import MinMaxScaler, Split, prepared_split
from faultllm.data.tables import LABEL, normalize_labels, read_table, require_columns, validate_features
from faultllm.runtime.credentials import redact, redact_tree
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_json, write_parquet, write_text

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "faultllm", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
    "optuna", "scikit-learn", "pandas", "numpy", "hydra-core", "flash-attn",
)  # fmt: skip


def start_run(config: Any, run_dir: str | os.PathLike, job: str, resumes: ResumeKeys | None = None) -> Path:
    """Create the run directory and write the resolved config (passwords redacted) and run_info.json: the job
    that writes the directory (what `report`, `predict` and `evaluate` read it as), seed, command and
    versions. With `resumes`, a directory holding a run to continue must first agree with `config` on those
    keys (`check_resume`): a refused resume leaves its files as they were."""
    run_dir = Path(run_dir)
    wanted_config = redacted_config(config)
    if resumes is not None:
        check_resume(wanted_config, run_dir, resumes)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(wanted_config))
    command = [redact(arg) for arg in sys.argv]
    info = {"job": job, "seed": getattr(config, "seed", None), "command": command, "versions": library_versions()}
    write_json(run_dir / "run_info.json", info)
    return run_dir


def run_job(run_dir: Path) -> str:
    """The job that wrote a run directory: run_info.json's, or for runs made before it was recorded, what
    the directory holds."""
    info = run_dir / "run_info.json"
    job = read_json(info).get("job") if info.exists() else None
    if job:
        return job
    if (run_dir / "models").is_dir() or (run_dir / "table_4_2.csv").exists():
        return "baselines"
    return "train" if (run_dir / "adapter").is_dir() else "unknown"


def redacted_config(config: Any) -> DictConfig:
    """A typed config as a resolved tree with the password of every URL in it replaced by ***."""
    return OmegaConf.create(redact_tree(as_tree(config)))


@dataclass(frozen=True)
class ResumeKeys:
    """What a resumed run must agree on with the run it continues: the config keys (and every key under
    them) that shape the model, the data and the training, less those that do not; and which files in a
    run directory mean there is something to continue."""

    keys: tuple[str, ...]
    ignored: tuple[str, ...]
    markers: tuple[str, ...]  # glob patterns in the run directory
    switch: str | None = None  # a config key that, false, starts afresh instead of continuing


_SHAPING = ("seed", "data", "prompt", "model", "lora", "trainer", "calibrate.holdout")  # holdout: which rows train
_NOT_SHAPING = (
    "data.display_name", "trainer.resume", "trainer.report_to", "trainer.eval_each_epoch",
    "model.attn_implementation", "model.gradient_checkpointing",
)  # fmt: skip
# train: more epochs continue a run (trainer.epochs); checkpoints are what a rerun continues from
TRAIN_RESUME = ResumeKeys(_SHAPING, (*_NOT_SHAPING, "trainer.epochs"), ("checkpoints/checkpoint-*",), "trainer.resume")
# hpo: every trial of one study must be comparable; hpo.n_trials may grow, workers and storage may change
HPO_RESUME = ResumeKeys(
    (*_SHAPING, "hpo.folds", "hpo.objective", "hpo.space", "hpo.prune_early_epochs", "hpo.schedule"),
    _NOT_SHAPING,
    ("config.yaml",),
)  # hpo.schedule: what its steps carry (raw or running mean), so that rungs and pruners compare like with like


def check_resume(wanted_config: DictConfig, run_dir: Path, resumes: ResumeKeys) -> None:
    """Refuse, in one line naming the differing keys, to continue a run made with another config
    (`wanted_config`: `redacted_config` of it)."""
    if not any(any(run_dir.glob(marker)) for marker in resumes.markers):
        return
    if resumes.switch is not None and not OmegaConf.select(wanted_config, resumes.switch):
        return
    differing = _differing_values(wanted_config, run_dir, resumes)
    if differing:
        shown = "; ".join(
            f"{key}: {_short(saved)} there, {_short(wanted)} here" for key, (saved, wanted) in differing.items()
        )
        raise FaultLLMError(
            f"hydra.run.dir={run_dir} holds a run of another config ({shown}); "
            "resume it with its own values or choose another run directory"
        )


def _differing_values(wanted_config: DictConfig, run_dir: Path, resumes: ResumeKeys) -> dict[str, tuple[Any, Any]]:
    """{key: (value in run_dir's config.yaml, value in `wanted_config`)} for the resume keys on which they differ."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return {}
    saved = _shaping_values(OmegaConf.load(saved_path), resumes)
    wanted = _shaping_values(wanted_config, resumes)
    return {key: (saved[key], wanted[key]) for key in sorted(saved.keys() & wanted.keys()) if saved[key] != wanted[key]}


def set_aside_other_run(config: Any, run_dir: Path, resumes: ResumeKeys) -> None:
    """Rename a run directory holding a run of another config to `<name>.<its date>`: a new run starts in its
    place and nothing already computed is lost."""
    if not _differing_values(redacted_config(config), run_dir, resumes):
        return
    made = datetime.fromtimestamp((run_dir / "config.yaml").stat().st_mtime)
    aside = run_dir.with_name(f"{run_dir.name}.{made:%Y%m%d-%H%M%S}")
    run_dir.rename(aside)
    log.info(f"{run_dir} held a run of another config; kept as {aside}")


def _shaping_values(cfg: DictConfig, resumes: ResumeKeys) -> dict[str, Any]:
    """{dotted key: value} for every leaf under the resume keys, less the ignored ones."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif not any(prefix == ignored or prefix.startswith(f"{ignored}.") for ignored in resumes.ignored):
            flat[prefix] = value

    for key in resumes.keys:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            walk(key, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
    return flat


_ABSENT = object()


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_split(run_dir: Path, split: Split, scaler: MinMaxScaler | None, seed: int) -> dict:
    """split.json, the rows of both sides and the scaler; returns split.json's content."""
    summary = split.summary(scaler, seed)
    write_json(run_dir / "split.json", summary)
    for name, frame in (("train", split.train), ("test", split.test)):
        write_parquet(frame[split.features + [LABEL]], run_dir / f"{name}.parquet")
    if scaler is not None:
        write_json(run_dir / "scaler.json", scaler.to_dict(split.features))
    return summary


PROMPT_FEATURES = "prompt_features.json"  # the features in the order the prompts wrote them (prompt.feature_order)


@dataclass(frozen=True)
class SavedRun:
    """A finished run reopened from its directory: the job that made it, its config and its split."""

    run_dir: Path
    job: str  # train | hpo (the refit in final/) | baselines | prepare
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
    summary = read_json(run_dir / "split.json")
    if (run_dir / "test.parquet").exists():
        split, scaler = _read_split(run_dir, summary)
    else:  # runs written before the rows were kept: rebuild them from the data files
        split, scaler = prepared_split(cfg.data, cfg.seed)
    if split.fingerprint() != summary["split_fingerprint"]:
        raise FaultLLMError(f"{run_dir}: the split's rows differ from the ones trained on (files changed?)")
    return SavedRun(run_dir, run_job(run_dir), cfg, split, scaler)


def open_train_run(run_dir: str | os.PathLike, command: str, instead: str) -> SavedRun:
    """`open_run` for the commands that load a train run's adapter (or its base model alone, for a run with
    trainer.epochs=0); anything else is refused in one line, a baselines run with what to use `instead`."""
    saved = open_run(run_dir)
    if saved.job == "baselines":
        raise FaultLLMError(f"run_dir={run_dir} is a `faultllm baselines` run; {command} needs a train run: {instead}")
    if not isinstance(saved.cfg, TrainJob):  # its config has no model: a `data prepare` run
        raise FaultLLMError(
            f"run_dir={run_dir} is a `faultllm data prepare` run (no model); "
            f"{command} needs a `faultllm train` run (or an hpo run, for its refit in final/)"
        )
    if not saved.has_llm:
        raise FaultLLMError(f"run_dir={run_dir}: no adapter found (adapter/); not a finished `faultllm train` run")
    return saved


def hpo_refit_dir(run_dir: Path) -> Path:
    """An hpo run's directory stands for its refit (final/): the best parameters trained on the whole
    training split and tested, the one model the search leaves. Any other directory is itself."""
    if run_job(run_dir) != "hpo" or (run_dir / "split.json").exists():
        return run_dir
    final = run_dir / "final"
    if not (final / "config.yaml").exists():
        raise FaultLLMError(
            f"{run_dir} is a `faultllm hpo` run without a refit model (no final/): let it finish, or rerun it "
            "with hpo.refit=true; or give a `faultllm train` run"
        )
    log.info(f"{run_dir} is an hpo run: using its refit, {final}")
    return final


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
            found.append(hpo_refit_dir(path))
    return found


def _job_number(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def read_config_tree(run_dir: Path) -> dict:
    """A run's config.yaml as plain nested dicts, as it was written (for comparing runs)."""
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)


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
        and read_json(candidate / "split.json")["split_fingerprint"] == split_fingerprint
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
