"""Hyperparameter search: Optuna TPE over stratified (run-grouped) K folds, with pruning, resumable, multi-worker.

Each trial trains one LoRA per fold on the fold's training part (scaler fitted there
only) and scores the fold's validation part after every epoch. Intermediate values go to
the pruner at step fold * epochs + epoch. The study lives in SQLite in the run directory
by default, or in any Optuna storage (`hpo.storage=...`) shared by several workers; the
same command resumes it. After the search the best parameters are refitted on the whole
training split and evaluated on the test split (the study's Table 4.1).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm import plots
from faultllm.config import with_values
from faultllm.errors import FaultLLMError
from faultllm.finetune import prompt_features
from faultllm.modeling import BaseModelCache, ModelSpec
from faultllm.paths import install_hint
from faultllm.prompts import Serializer
from faultllm.schema import (
    ACCURACY,
    EPOCH_METRICS,
    LOSS,
    OBJECTIVES,
    VALID_MASS,
    HpoConfig,
    HpoJob,
    SearchParam,
    trackers,
)
from faultllm.splits import Split, fold_splits, scale_split
from faultllm.training import NonFiniteLoss, TrainOptions, fit

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED")


def suggest(trial, space: dict[str, SearchParam]) -> dict:
    """Parameters of one trial, keyed by the config key each one sets (e.g. lora.r)."""
    params = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            value = trial.suggest_categorical(name, list(spec.choices))
        elif spec.type == "int":
            value = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            value = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        params[spec.key] = value
    return params


def with_params(cfg: HpoJob, params: dict) -> HpoJob:
    """The job's config with a trial's parameters set (checked like any config)."""
    return with_values(cfg, params)


def study_rule(row: dict, prune_early_epochs: int, min_valid_mass: float) -> str | None:
    """The study's pruning rule, as it meant it: a NaN loss never recovers, nor a model that cannot produce a
    valid answer in its first epochs. The study saw that as validation accuracy 0 of parsed generations;
    restricted scoring always answers with a label (accuracy >= 1/K by chance), so the rule looks at the
    probability mass the model puts on the valid answers instead."""
    losses = [row[key] for key in (f"val_{LOSS}", f"train_{LOSS}") if key in row]
    if not all(math.isfinite(loss) for loss in losses):
        return "loss is NaN"
    mass = row.get(f"val_{VALID_MASS}")
    if row["epoch"] <= prune_early_epochs and mass is not None and mass < min_valid_mass:
        return f"valid answers get {mass:.1%} of the probability at epoch {row['epoch']} (hpo.prune_valid_mass)"
    return None


def make_pruner(name: str):
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return pruners[name]()


def open_study(hpo_cfg: HpoConfig, seed: int, run_dir: Path, worker_index: int = 0, attempts: int = 5):
    """Create or load the study, its sampler seeded per worker. Workers starting together may race
    to create the schema: retry."""
    import optuna

    url = study_url(hpo_cfg, run_dir)
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=hpo_cfg.study_name,
                storage=_storage(url, hpo_cfg),
                # seed + worker index: reproducible, and no two workers draw the same start-up trials
                sampler=optuna.samplers.TPESampler(seed=seed + worker_index),
                pruner=make_pruner(hpo_cfg.pruner),
                direction=OBJECTIVES[hpo_cfg.objective],
                load_if_exists=True,
            )
        except FaultLLMError:
            raise
        except Exception as err:  # SQLAlchemy: unreachable server, bad credentials, racing schema creation
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            racing = ("already exists", "locked", "UNIQUE constraint")  # schema creation by another worker
            if attempt + 1 < attempts and any(text in message for text in racing):
                time.sleep(0.5 + attempt)
                continue
            raise FaultLLMError(f"hpo.storage={url}: cannot open ({type(err).__name__}: {message})") from None
    raise AssertionError("unreachable")


def study_url(hpo_cfg: HpoConfig, run_dir: Path) -> str:
    """hpo.storage, or SQLite in the run directory."""
    return hpo_cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def _storage(url: str, hpo_cfg: HpoConfig):
    if "://" not in url:
        if url.endswith((".log", ".jsonl")):  # a journal file, for workers sharing NFS
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url))
        raise FaultLLMError(
            f"hpo.storage={url}: expected sqlite:///PATH, postgresql://..., mysql://... or a journal file PATH.log"
        )
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    return RDBStorage(
        _with_driver(url),
        heartbeat_interval=hpo_cfg.heartbeat_interval,
        grace_period=hpo_cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def _with_driver(url: str) -> str:
    """postgresql:// through psycopg 3 (the `postgres` extra) unless psycopg2 is installed."""
    import importlib.util

    scheme = url.split("://", 1)[0]
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise FaultLLMError(f"hpo.storage={url}: unknown scheme {scheme!r}; expected sqlite, postgresql or mysql")
    if scheme != "postgresql" or importlib.util.find_spec("psycopg2"):
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise FaultLLMError(f"hpo.storage={url}: no PostgreSQL driver; {install_hint('postgres')}")
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def fail_interrupted(study) -> None:
    """Mark trials left RUNNING by a killed process as failed and queue their parameters again;
    free a refit claim it held.

    Only for a study no live worker can share (its own database, before any worker starts):
    shared storages find dead workers by their heartbeats instead.
    """
    for trial in _fail_running(study):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.info(f"trial {trial.number} was interrupted: marked failed, queued again")
    _fail_running(_claims(study))


def _fail_running(study) -> list:
    from optuna.trial import TrialState

    storage = study._storage  # the storage the study was opened with: Optuna has no public getter
    study_id = storage.get_study_id_from_name(study.study_name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return running


class OverBudget(Exception):
    """Another worker took the study's last trial slot: this trial is failed without running."""


def claim_within_budget(study, trial, n_trials: int) -> bool:
    """True if this trial is among the first n_trials not failed: workers never run more than the budget."""
    from optuna.trial import TrialState

    earlier = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
    return sum(t.number < trial.number for t in earlier) < n_trials


def slots_taken(study) -> tuple[int, int]:
    """(finished trials, running trials) across all workers."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def finished_count(study) -> int:
    return slots_taken(study)[0]


@contextlib.contextmanager
def refit_claim(study):
    """Yields True in exactly one worker: the first claim not failed in a side study of the same
    storage (every Optuna storage numbers trials atomically). The claim completes when the block
    does; a block that fails (or a killed process, see `fail_interrupted`) frees it for a rerun."""
    import warnings

    from optuna.trial import TrialState

    claims = _claims(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": a claim is not a trial
        claim = claims.ask()
    held = claims.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    if any(other.number < claim.number for other in held):
        claims.tell(claim, state=TrialState.FAIL)
        yield False
        return
    try:
        yield True
    except BaseException:
        claims.tell(claim, state=TrialState.FAIL)
        raise
    claims.tell(claim, 0.0)


def _claims(study):
    import optuna

    storage = study._storage  # the storage the study was opened with: Optuna has no public getter
    return optuna.create_study(study_name=f"{study.study_name}:refit", storage=storage, load_if_exists=True)


class _PruningReporter:
    """Per epoch: the study's rule, then the pruner, at step fold * epochs + epoch; counts fold-epochs trained."""

    def __init__(self, trial, hpo_cfg: HpoConfig, epochs: int) -> None:
        self.trial, self.hpo_cfg, self.epochs, self.trained = trial, hpo_cfg, epochs, 0

    def for_fold(self, fold_index: int):
        import optuna

        def on_epoch(row: dict) -> None:
            self.trained += 1
            self.trial.set_user_attr("fold_epochs_trained", self.trained)
            reason = study_rule(row, self.hpo_cfg.prune_early_epochs, self.hpo_cfg.prune_valid_mass)
            if reason:
                self.trial.set_user_attr("pruned_because", reason)
                raise optuna.TrialPruned(reason)
            self.trial.report(row[self.hpo_cfg.objective], step=fold_index * self.epochs + row["epoch"])
            if self.trial.should_prune():
                self.trial.set_user_attr("pruned_because", "pruner")
                raise optuna.TrialPruned(f"pruned at fold {fold_index} epoch {row['epoch']}")

        return on_epoch


def run_trial(
    trial, cfg: HpoJob, raw: Split, folds: list, run_dir: Path, base_cache: BaseModelCache | None = None
) -> float:
    """Train and validate every fold; report per-epoch values to the pruner; free each fold's model.

    `cfg` is the whole config: a trial's parameters may set any key (lora.r, data.normalize, ...).
    `base_cache`: the worker's base model, reused by every fold (`hpo.reuse_model`).
    """
    import optuna

    trial_cfg = with_params(cfg, suggest(trial, cfg.hpo.space))
    spec = fold_model_spec(trial_cfg, base_cache)
    options = TrainOptions.from_config(trial_cfg.trainer, trial_cfg.seed, trial_cfg.eval.batch_size, trial_cfg.progress)
    options = replace(options, report_to=())  # trials are tracked whole (`mlflow_trial_logger`), not per fold
    serializer = _trial_serializer(cfg, trial_cfg, raw, spec)
    reporter = _PruningReporter(trial, cfg.hpo, options.epochs)
    fold_results = []
    try:
        for index, fold in enumerate(fold_splits(raw, folds, trial_cfg.data.normalize, trial_cfg.data.scale_range)):
            out_dir = run_dir / "trials" / f"{trial.number:04d}" / f"fold{index}"
            fold_results.append(_fit_fold(spec, serializer, fold, options, out_dir, reporter.for_fold(index)))
    except NonFiniteLoss as err:
        trial.set_user_attr("pruned_because", "loss is NaN")
        raise optuna.TrialPruned(str(err)) from None
    means = {
        key: float(np.mean([r[key] for r in fold_results]))
        for key in fold_results[0]
        if key.startswith(("train_", "val_"))
    }
    for key, value in means.items():
        trial.set_user_attr(key, value)
    return means[cfg.hpo.objective]


def mlflow_trial_logger(report_to: str | list) -> list:
    """With `trainer.report_to` naming mlflow: an Optuna callback logging each finished trial as one MLflow
    run (parameters, value, fold means). The folds' own training is not tracked: one run per trial."""
    if "mlflow" not in trackers(report_to):
        return []
    import mlflow
    from optuna.trial import TrialState

    def log_trial(study, trial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        numbers = {k: v for k, v in trial.user_attrs.items() if isinstance(v, int | float) and math.isfinite(v)}
        with mlflow.start_run(run_name=f"{study.study_name}-trial-{trial.number}"):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"optuna_study": study.study_name, "state": trial.state.name})
            mlflow.log_metrics(numbers | ({"value": trial.value} if trial.value is not None else {}))

    return [log_trial]


def search_features(cfg: HpoJob, raw: Split) -> list[str]:
    """The prompt's feature order for every trial and the refit: from the split as the job's own data config
    scales it (what a baselines run on the same data saw), whatever data.normalize a trial draws."""
    whole_split = scale_split(raw, cfg.data.normalize, cfg.data.scale_range)[0]
    return prompt_features(cfg.prompt, raw.features, cfg.seed, whole_split.fingerprint())


def _trial_serializer(cfg: HpoJob, trial_cfg: HpoJob, raw: Split, spec: ModelSpec) -> Serializer:
    features = search_features(cfg, raw)
    system = trial_cfg.data.system_prompt
    return Serializer.from_config(trial_cfg.prompt, system, features, raw.labels, spec.tokenizer())


def fold_model_spec(trial_cfg: HpoJob, base_cache: BaseModelCache | None = None) -> ModelSpec:
    """One base model per worker (`hpo.reuse_model`), fresh adapters per fold; never a paged optimizer,
    whose state bitsandbytes keeps for the life of the process (every fold would leak it)."""
    spec = ModelSpec.from_config(trial_cfg.model, trial_cfg.lora, trial_cfg.cache_dir, trial_cfg.prompt)
    plan = spec.plan
    if plan.optimizer.startswith("paged_"):
        log.warning("hpo: %s never frees its state between folds; using adamw_torch_fused", plan.optimizer)
        plan = replace(plan, optimizer="adamw_torch_fused")
    return replace(spec, plan=plan, base_cache=base_cache)


def _fit_fold(spec: ModelSpec, serializer: Serializer, fold: Split, options: TrainOptions, out_dir: Path, on_epoch):
    """The last epoch's metrics of one fold (no checkpoints: a killed trial is rerun whole)."""
    train = serializer.render(fold.train)
    eval_sets = {"train": train, "val": serializer.render(fold.test)}
    result = None
    try:
        result = fit(spec, train, eval_sets, options, out_dir, on_epoch=on_epoch, checkpoints=False)
        return result.history[-1]
    finally:
        del result
        free_memory()


def free_memory() -> None:
    """The model of one fold is gone before the next is built: memory does not grow with trials."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def best_trial(study):
    """The best finished trial so far, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def table_4_1(best, final: dict | None) -> pd.DataFrame:
    rows = [(f"{name}", value) for name, value in best.params.items()]
    attrs = best.user_attrs
    rows += [
        ("Loss Train HPO", attrs.get(f"train_{LOSS}")),
        ("Accuracy Train HPO", attrs.get(f"train_{ACCURACY}")),
        ("Loss Validation", attrs.get(f"val_{LOSS}")),
        ("Accuracy Validation", attrs.get(f"val_{ACCURACY}")),
    ]
    if final:
        rows += [
            ("Loss Train", final["train"].get("loss")),
            ("Accuracy Train", final["train"]["accuracy"]),
            ("Loss Test", final["test"].get("loss")),
            ("Accuracy Test", final["test"]["accuracy"]),
        ]
    return pd.DataFrame(rows, columns=["", "value"])


def search_summary(
    trials: pd.DataFrame, best, final: dict | None, hpo_cfg: HpoConfig, epochs: int, seconds: float
) -> dict:
    """table_4_1.json: the best trial, the refit's metrics, and how much of the protocol pruning saved."""
    trained = trials.get("user_attrs_fold_epochs_trained", trials["number"] * 0).fillna(0)
    finished = trials["state"].isin(FINISHED)
    fraction = float(trained[finished].sum() / (finished.sum() * hpo_cfg.folds * epochs))
    final_metrics = final and {
        split: {k: final[split][k] for k in ("loss", "accuracy", "macro_f1") if k in final[split]}
        for split in ("train", "test")
    }
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "hpo": {
            key: best.user_attrs.get(key)
            for key in (*(f"train_{m}" for m in EPOCH_METRICS), *(f"val_{m}" for m in EPOCH_METRICS))
        },
        "final": final_metrics or None,
        "trials_finished": int(finished.sum()),
        "trials_pruned": int((trials["state"] == "PRUNED").sum()),
        "fold_epochs_trained_fraction": fraction,
        "search_seconds": round(seconds, 1),
    }


def plot_study(study, run_dir: Path) -> None:
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plots.optuna_plot(lambda: plot_optimization_history(study), run_dir / "optimization_history.png")
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(completed) >= 2 and len({str(t.params) for t in completed}) >= 2:
        with contextlib.suppress(RuntimeError, ValueError):  # importances need variation in the values
            plots.optuna_plot(lambda: plot_param_importances(study), run_dir / "param_importances.png")
