"""Every check of a command's inputs that needs no model, run by the CLI before the job's module is imported
(torch, transformers and peft with it) and before Hydra creates the run directory: a refusal costs a second
and leaves nothing behind.

The data jobs make their split here (`splits.keep_last_split` hands the job a copy); the jobs that reopen
a run (evaluate, explain, predict) open it and read their rows through the functions below, so the job and
its check are one code path. Nothing here imports torch (tests/test_refusals.py checks it).
"""

from __future__ import annotations

import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from faultllm.compare.baselines import check_models
from faultllm.compare.pooling import load_runs
from faultllm.config.groups import SlurmConfig
from faultllm.config.jobs import (
    BaselinesJob,
    BenchJob,
    EvaluateJob,
    ExplainJob,
    HpoJob,
    PlanJob,
    PredictJob,
    PrepareJob,
    ReportJob,
    RunSettings,
    TrainJob,
)
from faultllm.data.splits import Split, cv_folds, keep_last_split, make_split, scale_split
from faultllm.llm.explain import check_same_split, choose_rows
from faultllm.llm.predict import check_predictable
from faultllm.llm.sources import resolve_model_path
from faultllm.run.directory import HPO_RESUME, TRAIN_RESUME, ResumeKeys, check_resume, redacted_config
from faultllm.run.saved import SavedRun, baseline_importances, load_importances, open_run, open_train_run
from faultllm.runtime.errors import FaultLLMError
from faultllm.search.studies import open_study

BASELINES_INSTEAD = (
    "its models' test metrics are in its metrics.json and table_4_2.md, and "
    "`faultllm predict run_dir=DIR input=TABLE` scores other rows with them"
)


def check(config: Any, run_dir: Path | None = None) -> None:
    """Raise FaultLLMError, in one line, for the first input of `config`'s command that cannot work;
    `run_dir`: the run directory given on the command line (hydra.run.dir), if any."""
    keep_last_split()
    _CHECKS[type(config)](config, run_dir)


def check_writable(key: str, value: str) -> None:
    """An output directory that cannot be created or written is refused before anything runs; `value` may end
    in Hydra interpolations (`runs/${now:...}`): the directories before them are checked."""
    path = Path(value.split("${")[0] or ".").expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FaultLLMError(f"{key}={value}: {existing} is a file, not a directory; choose another directory")
    try:
        with tempfile.TemporaryDirectory(dir=existing, prefix=".faultllm-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise FaultLLMError(
            f"{key}={value}: cannot write into {existing} ({reason}); choose another directory"
        ) from err


def check_shared(key: str, value: str | Path, node_local: Sequence[str]) -> None:
    """Refuse, in one line, a path the compute nodes may not see: one under a node-local directory."""
    path = Path(str(value).split("${")[0] or ".").expanduser().absolute()
    for local in node_local:
        if path == Path(local) or Path(local) in path.parents:
            raise FaultLLMError(
                f"{key}={value}: {local} is node-local; SLURM jobs run on other machines. Put it on storage every "
                "node mounts (a home or project directory), or set slurm.node_local=[] on a one-node cluster"
            )


def check_storage(url: str | None, node_local: Sequence[str]) -> None:
    """The study's storage must be a database server every node reaches: not SQLite, not a local journal."""
    if not url or url.startswith("sqlite"):
        raise FaultLLMError(
            f"hpo.storage={url or 'null (SQLite in the run directory)'}: hpo.launcher=slurm needs a database every "
            "node reaches, e.g. hpo.storage=postgresql://user@host/db (SQLite's locking fails on network disks)"
        )
    if "://" not in url:
        check_shared("hpo.storage", url, node_local)


def check_submission(cfg: RunSettings, key: str, run_dir: str | Path) -> None:
    """What SLURM jobs of `cfg` need before anything is queued: a run directory and a cache every node sees,
    and a partition that has the time and GPUs asked for."""
    check_shared(key, run_dir, cfg.slurm.node_local)
    check_shared("cache_dir", cfg.cache_dir, cfg.slurm.node_local)
    check_partition(cfg.slurm, _partitions())


def _partitions() -> dict[str, tuple[float, str]]:
    """Each partition of the cluster (the default one also as ""): its time limit in minutes and its GRES;
    {} where sinfo is missing or does not answer (sbatch then says why)."""
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", "%P|%l|%G"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    partitions = {}
    for line in listed.stdout.split() if listed.returncode == 0 else []:
        name, limit, gres = line.split("|", 2)
        partitions[name.rstrip("*")] = partitions.get(name.rstrip("*"), (_minutes(limit), gres))
        if name.endswith("*"):
            partitions[""] = partitions[name.rstrip("*")]
    return partitions


def _minutes(limit: str) -> float:
    """sinfo's time limit (`infinite`, `30:00`, `4:00:00`, `2-00:00:00`) in minutes."""
    if limit in ("infinite", "n/a"):
        return float("inf")
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = [0] * (3 - len(parts)) + parts
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def check_partition(slurm: SlurmConfig, partitions: dict[str, tuple[float, str]]) -> None:
    """slurm.partition exists, its time limit holds slurm.time_min, and it has GPUs when slurm.gpus > 0."""
    if not partitions:
        return
    name = slurm.partition or ""
    if name not in partitions:
        known = sorted(p for p in partitions if p)
        raise FaultLLMError(f"slurm.partition={name or 'null'}: no such partition; expected one of {', '.join(known)}")
    limit, gres = partitions[name]
    shown = slurm.partition or "the default partition"
    if slurm.time_min > limit:
        raise FaultLLMError(f"slurm.time_min={slurm.time_min}: {shown} allows {limit:g} minutes at most")
    if slurm.gpus > 0 and "gpu" not in gres:
        raise FaultLLMError(f"slurm.gpus={slurm.gpus}: {shown} has no GPUs (GRES {gres}); slurm.gpus=0 on CPU nodes")


def evaluate_inputs(cfg: EvaluateJob) -> tuple[SavedRun, pd.DataFrame, str]:
    """The train run to score, and its rows: eval.split_path's, or the run's own test split."""
    saved = open_train_run(cfg.run_dir, "evaluate", BASELINES_INSTEAD)
    if cfg.eval.split_path:
        return saved, saved.read_rows(Path(cfg.eval.split_path), "eval.split_path"), str(cfg.eval.split_path)
    return saved, saved.split.test, "the run's test split"


def explain_inputs(cfg: ExplainJob) -> tuple[SavedRun, list[int], list[int]]:
    """The train run to explain (with the baselines run to compare with checked), and its probe and
    attribution rows."""
    saved = open_train_run(cfg.run_dir, "explain", "give it as explain.baselines_dir=DIR, with run_dir=A_TRAIN_RUN")
    if cfg.explain.baselines_dir:
        check_same_split(saved, Path(cfg.explain.baselines_dir))
        load_importances(Path(cfg.explain.baselines_dir))
    n_test, explain = len(saved.split.test), cfg.explain
    probe_rows = choose_rows(explain.rows, explain.n_probe_rows, n_test, cfg.seed)
    return saved, probe_rows, choose_rows(explain.rows, explain.n_attribution_rows, n_test, cfg.seed)


def predict_inputs(cfg: PredictJob) -> tuple[SavedRun, pd.DataFrame]:
    """The run to predict with (a fine-tuned LLM or a baselines run's models) and the rows to diagnose, checked
    against it."""
    saved = open_run(cfg.run_dir, "faultllm train` or `faultllm baselines")
    check_predictable(saved)
    rows = saved.read_rows(Path(cfg.input), "input", False, "predict.input_scaled", cfg.predict.input_scaled)
    return saved, rows


def _resume(cfg: Any, run_dir: Path | None, resumes: ResumeKeys) -> None:
    if run_dir is not None and run_dir.is_dir():
        check_resume(redacted_config(cfg), run_dir, resumes)


def _importance_order(cfg: TrainJob, raw: Split) -> None:
    """prompt.importance_from must be a baselines run on this very split (as `finetune.prompt_features` needs)."""
    if cfg.prompt.feature_order == "importance":
        scaled = scale_split(raw, cfg.data.normalize, cfg.data.scale_range)[0]
        baseline_importances(cfg.prompt.importance_from, cfg.prompt.importance_model, scaled.fingerprint())


def _model(cfg: TrainJob) -> None:
    """A model.path that is no directory, or a hub model neither cached nor reachable (the tiny model and
    random weights are built by the job)."""
    if cfg.model.init != "random" and cfg.model.build is None:
        resolve_model_path(cfg.model, cfg.cache_dir)


def _train(cfg: TrainJob, run_dir: Path | None) -> None:
    _resume(cfg, run_dir, TRAIN_RESUME)
    _model(cfg)
    _importance_order(cfg, make_split(cfg.data, cfg.seed))


def _hpo(cfg: HpoJob, run_dir: Path | None) -> None:
    _resume(cfg, run_dir, HPO_RESUME)
    _model(cfg)
    raw = make_split(cfg.data, cfg.seed)
    cv_folds(raw.train, cfg.hpo.folds, cfg.seed)
    _importance_order(cfg, raw)
    if cfg.hpo.launcher == "slurm":
        check_submission(cfg, "hydra.run.dir", run_dir or "runs")
        check_storage(cfg.hpo.storage, cfg.slurm.node_local)
    if cfg.hpo.storage:  # a bad URL or a server that cannot be reached (the default SQLite file is the run's)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".* is (experimental|an experimental feature)")  # Optuna
            open_study(cfg.hpo, cfg.seed, Path("."))


def _baselines(cfg: BaselinesJob, run_dir: Path | None) -> None:
    raw = make_split(cfg.data, cfg.seed)
    check_models(list(cfg.baselines.models), len(raw.train))
    if cfg.baselines.tune:
        cv_folds(raw.train, cfg.baselines.folds, cfg.seed)


def _plan(cfg: PlanJob, run_dir: Path | None) -> None:
    if cfg.data.path:  # without one, plan counts on stand-in rows
        raw = make_split(cfg.data, cfg.seed)
        if cfg.job == "hpo":
            cv_folds(raw.train, cfg.hpo.folds, cfg.seed)


def _bench(cfg: BenchJob, run_dir: Path | None) -> None:
    _model(cfg)
    if cfg.data.path:  # without one, bench times stand-in rows
        make_split(cfg.data, cfg.seed)


_CHECKS: dict[type, Callable[[Any, Path | None], None]] = {
    PrepareJob: lambda cfg, _: make_split(cfg.data, cfg.seed),
    TrainJob: _train,
    HpoJob: _hpo,
    BaselinesJob: _baselines,
    PlanJob: _plan,
    BenchJob: _bench,
    EvaluateJob: lambda cfg, _: evaluate_inputs(cfg),
    ExplainJob: lambda cfg, _: explain_inputs(cfg),
    PredictJob: lambda cfg, _: predict_inputs(cfg),
    ReportJob: lambda cfg, _: load_runs(list(cfg.run_dirs)),
}
