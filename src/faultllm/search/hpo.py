"""Hyperparameter search: Optuna TPE over stratified (run-grouped) K folds, with pruning, resumable, multi-worker.

Each trial trains one LoRA per fold on the fold's training part (scaler fitted there
only) and scores the fold's validation part after every epoch. Intermediate values go to
the pruner at step fold * epochs + epoch. The study itself (storage, heartbeats, how
workers share it) is `studies.py`. After the search the best parameters are refitted on the
whole training split and evaluated on the test split (the study's Table 4.1: `summary.py`).
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from faultllm.compare.calibration import wilson_interval
from faultllm.config.choices import ACCURACY, LOSS, VALID_MASS, trackers
from faultllm.config.hpo import HpoConfig, SearchParam
from faultllm.config.jobs import HpoJob
from faultllm.config.load import with_values
from faultllm.data.splits import Split, fold_splits, scale_split
from faultllm.llm.build import BaseModelCache, ModelSpec
from faultllm.llm.finetune import prompt_features
from faultllm.llm.trainer import NonFiniteLoss, fit
from faultllm.prompts.serialize import Serializer
from faultllm.runtime.errors import FaultLLMError, first_line
from faultllm.search.schedules import FOLD_VALUES, incumbent_folds, may_stop, race_verdict, running_mean
from faultllm.search.studies import EPOCHS_PER_FOLD, FINISHED

log = logging.getLogger(__name__)


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


def study_rule(row: dict, prune_early_epochs: int, min_valid_mass: float, best: tuple[float, int] | None) -> str | None:
    """The study's pruning rule, as it meant it: a NaN loss never recovers, nor a model that cannot produce a
    valid answer in its first epochs. The study saw that as validation accuracy 0 of parsed generations;
    restricted scoring always answers with a label (accuracy >= 1/K by chance), so the rule looks at the
    probability mass the model puts on the valid answers instead. Valid mass says nothing of accuracy, so a
    low mass prunes only a trial whose validation accuracy is already out of the race: the upper end of its
    95% Wilson interval below the best finished trial's accuracy. `best`: (that accuracy, this fold's
    validation rows), None while no trial has finished."""
    losses = [row[key] for key in (f"val_{LOSS}", f"train_{LOSS}") if key in row]
    if not all(math.isfinite(loss) for loss in losses):
        return "loss is NaN"
    mass, accuracy = row.get(f"val_{VALID_MASS}"), row.get(f"val_{ACCURACY}")
    if row["epoch"] > prune_early_epochs or mass is None or mass >= min_valid_mass or best is None:
        return None
    bound = float(wilson_interval(accuracy, best[1])[1])
    if bound >= best[0]:
        return None
    return (
        f"valid answers get {mass:.1%} of the probability at epoch {row['epoch']} (hpo.prune_valid_mass) and "
        f"its accuracy's 95% upper bound {bound:.3f} is below the best finished trial's {best[0]:.3f}"
    )


def best_accuracy(study) -> float | None:
    """The highest fold-mean validation accuracy of the finished (not pruned) trials, or None."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [t.user_attrs.get(f"val_{ACCURACY}", math.nan) for t in done]
    return max((value for value in values if math.isfinite(value)), default=None)


class _PruningReporter:
    """Per epoch: the study's rule, then the pruner, at step fold * epochs + epoch; counts fold-epochs trained.
    Under hpo.schedule race/asha the step carries the running mean over folds, and a fold's end may stop
    the race (`faultllm.search.schedules`)."""

    def __init__(self, trial, hpo_cfg: HpoConfig, epochs: int) -> None:
        self.trial, self.hpo_cfg, self.epochs, self.trained = trial, hpo_cfg, epochs, 0
        trial.set_user_attr(EPOCHS_PER_FOLD, epochs)  # the same-fold pruner maps other trials' steps with it
        self.fold_values: list[float] = []

    def for_fold(self, fold_index: int, val_rows: int):
        import optuna

        def on_epoch(row: dict) -> None:
            self.trained += 1
            self.trial.set_user_attr("fold_epochs_trained", self.trained)
            best = best_accuracy(self.trial.study)
            against = None if best is None else (best, val_rows)
            reason = study_rule(row, self.hpo_cfg.prune_early_epochs, self.hpo_cfg.prune_valid_mass, against)
            if reason:
                self.trial.set_user_attr("pruned_because", reason)
                raise optuna.TrialPruned(reason)
            step = fold_index * self.epochs + row["epoch"]
            self.trial.report(self._reported(row), step=step)
            if may_stop(self.hpo_cfg, step, self.epochs) and self.trial.should_prune():
                self.trial.set_user_attr("pruned_because", "pruner")
                raise optuna.TrialPruned(f"pruned at fold {fold_index} epoch {row['epoch']}")
            if row["epoch"] == self.epochs:
                self._fold_done(row[self.hpo_cfg.objective])

        return on_epoch

    def _reported(self, row: dict) -> float:
        value = row[self.hpo_cfg.objective]
        return value if self.hpo_cfg.schedule == "full" else running_mean(self.fold_values, value)

    def _fold_done(self, value: float) -> None:
        import optuna

        self.fold_values.append(value)
        self.trial.set_user_attr(FOLD_VALUES, self.fold_values)
        if self.hpo_cfg.schedule != "race":
            return
        best = incumbent_folds(self.trial.study)
        reason = race_verdict(self.fold_values, best, self.hpo_cfg.race_margin, self.hpo_cfg.objective)
        if reason:
            self.trial.set_user_attr("pruned_because", reason)
            raise optuna.TrialPruned(reason)


def run_trial(
    trial, cfg: HpoJob, raw: Split, folds: list, run_dir: Path, base_cache: BaseModelCache | None = None
) -> float:
    """Train and validate every fold; report per-epoch values to the pruner; free each fold's model.

    `cfg` is the whole config: a trial's parameters may set any key (lora.r, data.normalize, ...). A GPU
    out-of-memory error fails this trial alone (`TrialOutOfMemory`), after its memory is freed.
    `base_cache`: the worker's base model, reused by every fold (`hpo.reuse_model`).
    """
    trial_cfg = with_params(cfg, suggest(trial, cfg.hpo.space) | trial.user_attrs.get(OOM_RETRY, {}))
    reset_peak_memory()
    try:
        return _train_folds(trial, cfg, trial_cfg, raw, folds, run_dir, base_cache)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        message = first_line(err)
    free_memory()  # here, outside the handler: no traceback holds the fold's model, optimizer and activations
    raise out_of_memory(trial, trial_cfg, message)


def _train_folds(
    trial, cfg: HpoJob, trial_cfg: HpoJob, raw: Split, folds: list, run_dir: Path, base_cache: BaseModelCache | None
) -> float:
    import optuna

    spec = fold_model_spec(trial_cfg, base_cache)
    # trials are tracked whole (`mlflow_trial_logger`), not per fold
    trial_cfg = replace(trial_cfg, trainer=replace(trial_cfg.trainer, report_to="none"))
    serializer = _trial_serializer(cfg, trial_cfg, raw, spec)
    reporter = _PruningReporter(trial, cfg.hpo, trial_cfg.trainer.epochs)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    log.info(f"trial {trial.number} starts: {shown}")
    fold_results = []
    try:
        for index, fold in enumerate(fold_splits(raw, folds, trial_cfg.data.normalize, trial_cfg.data.scale_range)):
            out_dir = run_dir / "trials" / f"{trial.number:04d}" / f"fold{index}"
            title = f"trial {trial.number} fold {index + 1}/{len(folds)}"
            on_epoch = reporter.for_fold(index, len(fold.test))
            fold_results.append(_fit_fold(spec, serializer, fold, trial_cfg, title, out_dir, on_epoch))
    except NonFiniteLoss as err:
        trial.set_user_attr("pruned_because", "loss is NaN")
        raise optuna.TrialPruned(str(err)) from err
    means = {
        key: float(np.mean([r[key] for r in fold_results]))
        for key in fold_results[0]
        if key.startswith(("train_", "val_"))
    }
    for key, value in means.items():
        trial.set_user_attr(key, value)
    return means[cfg.hpo.objective]


class TrialOutOfMemory(Exception):
    """A trial ran out of GPU memory: it is failed (with `failed_because`) and the worker goes on."""


OOM_RETRY = "oom_retry"  # user attribute of a trial queued again after running out of memory: its trainer keys
OOM_REASON = "out of GPU memory"
# What CUDA, cuBLAS, cuDNN and bitsandbytes' kernels say when an allocation fails, besides torch.OutOfMemoryError
_OOM_MESSAGES = (
    "out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate",  # cuBLAS could not allocate its workspace
)  # fmt: skip


def is_out_of_memory(err: BaseException | None) -> bool:
    """A GPU allocation failure, also when raised as the cause of another error."""
    import torch

    while err is not None:
        if isinstance(err, torch.OutOfMemoryError):
            return True
        if isinstance(err, RuntimeError) and any(text in str(err) for text in _OOM_MESSAGES):
            return True
        err = err.__cause__ or err.__context__
    return False


def out_of_memory(trial, trial_cfg, message: str) -> TrialOutOfMemory:
    """Record why the trial failed (message, its parameters, peak memory); with hpo.on_oom=halve_batch queue
    its parameters once more at half the batch and twice the accumulation (the same effective batch)."""
    batch, accumulation = trial_cfg.trainer.batch_size, trial_cfg.trainer.grad_accum
    peak = peak_memory_gib()
    params = ", ".join(f"{name}={value}" for name, value in trial.params.items())
    reason = f"{OOM_REASON} at batch {batch} x accumulation {accumulation}: {message}"
    reason += f"; peak {peak:.2f} GiB allocated" if peak is not None else ""
    reason += f"; parameters {params}"
    if trial_cfg.hpo.on_oom == "halve_batch" and OOM_RETRY not in trial.user_attrs and batch > 1:
        retry = {"trainer.batch_size": batch // 2, "trainer.grad_accum": accumulation * 2}
        trial.study.enqueue_trial(
            trial.params, user_attrs={OOM_RETRY: retry, "retry_of": trial.number}, skip_if_exists=False
        )
        reason += f"; queued again at batch {batch // 2} x accumulation {accumulation * 2}"
    trial.set_user_attr("failed_because", reason)
    if peak is not None:
        trial.set_user_attr("peak_memory_gib", round(peak, 3))
    return TrialOutOfMemory(reason)


class OutOfMemoryStreak:
    """An Optuna callback: a worker whose last `limit` trials all ran out of GPU memory stops (the model
    itself does not fit, or the space is far too large) instead of failing trials forever."""

    def __init__(self, limit: int = 10) -> None:
        self.limit, self.count = limit, 0

    def __call__(self, study, trial) -> None:
        if trial.state.name in FINISHED:
            self.count = 0
        elif str(trial.user_attrs.get("failed_because", "")).startswith(OOM_REASON):
            self.count += 1
            if self.count >= self.limit:
                raise FaultLLMError(
                    f"hpo: the last {self.count} trials all ran out of GPU memory (the last: "
                    f"{trial.user_attrs['failed_because']}); lower trainer.batch_size or the space's ranges"
                )


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    """The most GPU memory torch allocated since the trial began, or None without CUDA."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


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
    return Serializer.from_config(trial_cfg.prompt, system, features, raw.labels, spec.tokenizer(), trial_cfg.seed)


def fold_model_spec(trial_cfg: HpoJob, base_cache: BaseModelCache | None = None) -> ModelSpec:
    """One base model per worker (`hpo.reuse_model`), fresh adapters per fold; never a paged optimizer,
    whose state bitsandbytes keeps for the life of the process (every fold would leak it)."""
    spec = ModelSpec.from_config(trial_cfg.model, trial_cfg.lora, trial_cfg.cache_dir, trial_cfg.prompt)
    plan = spec.plan
    if plan.optimizer.startswith("paged_"):
        log.warning("hpo: %s never frees its state between folds; using adamw_torch_fused", plan.optimizer)
        plan = replace(plan, optimizer="adamw_torch_fused")
    return replace(spec, plan=plan, base_cache=base_cache)


def _fit_fold(
    spec: ModelSpec, serializer: Serializer, fold: Split, cfg: HpoJob, title: str, out_dir: Path, on_epoch
):  # fmt: skip
    """The last epoch's metrics of one fold (no checkpoints: a killed trial is rerun whole). In-context
    examples (prompt.shots) come from the fold's own training rows. The pruner and the objective read the
    validation rows after every epoch; the training rows (Table 4.1's train columns) are scored after the
    fold's last epoch only, which a pruned fold never reaches."""
    train, val = serializer.render_pair(fold.train, fold.test)
    eval_sets = {"train": train, "val": val}
    result = None
    try:
        result = fit(
            spec, train, eval_sets, cfg.trainer, out_dir, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
            progress=cfg.progress, title=title, on_epoch=on_epoch, checkpoints=False,
            last_epoch_only=frozenset({"train"}),
        )  # fmt: skip
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
