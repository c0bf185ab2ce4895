"""What every run directory holds, and when a run in it may be continued.

Every run writes `config.yaml` (resolved), `run_info.json` and `faultllm.log`. A run that
made a split also keeps it: `split.json` (counts, labels, features, fingerprint), the rows
each side saw (`train.parquet`, `test.parquet`, scaled as the model saw them) and
`scaler.json`, so `evaluate` and `explain` need nothing but the directory (`faultllm.run.saved`).
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

from omegaconf import DictConfig, OmegaConf

from faultllm.config.load import as_tree
from faultllm.data.splits import MinMaxScaler, Split
from faultllm.data.tables import LABEL
from faultllm.run.kind import RunKind
from faultllm.run.records import SplitSummary
from faultllm.runtime.credentials import redact, redact_tree
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_json, write_parquet, write_text

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "faultllm", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
    "optuna", "scikit-learn", "pandas", "numpy", "hydra-core", "flash-attn",
)  # fmt: skip


def start_run(config: Any, run_dir: str | os.PathLike, kind: RunKind, resumes: ResumeKeys | None = None) -> Path:
    """Create the run directory and write the resolved config (passwords redacted) and run_info.json: the kind
    of run (its `job`: what every command reads it as, `run_kind`), seed, command and
    versions. With `resumes`, a directory holding a run to continue must first agree with `config` on those
    keys (`check_resume`): a refused resume leaves its files as they were."""
    run_dir = Path(run_dir)
    wanted_config = redacted_config(config)
    if resumes is not None:
        check_resume(wanted_config, run_dir, resumes)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(wanted_config))
    command = [redact(arg) for arg in sys.argv]
    seed = getattr(config, "seed", None)
    write_json(
        run_dir / "run_info.json", {"job": kind.value, "seed": seed, "command": command, "versions": library_versions()}
    )
    return run_dir


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


def save_split(run_dir: Path, split: Split, scaler: MinMaxScaler | None, seed: int) -> SplitSummary:
    """split.json, the rows of both sides and the scaler; returns split.json's content."""
    summary = SplitSummary.of(split, scaler, seed)
    summary.write(run_dir / "split.json")
    for name, frame in (("train", split.train), ("test", split.test)):
        write_parquet(frame[split.features + [LABEL]], run_dir / f"{name}.parquet")
    if scaler is not None:
        write_json(run_dir / "scaler.json", scaler.to_dict(split.features))
    return summary


def read_config_tree(run_dir: Path) -> dict:
    """A run's config.yaml as plain nested dicts, as it was written (for comparing runs)."""
    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
