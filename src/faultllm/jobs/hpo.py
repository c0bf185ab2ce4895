"""`faultllm hpo` (configs/hpo.yaml): Optuna TPE over stratified K folds of the training split, with
pruning; then the best parameters refitted on the whole training split and tested (Table 4.1).

Rerun with hydra.run.dir=DIR (or the same hpo.storage) to resume an interrupted study.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import fail_stale_trials
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from faultllm.compare.tables import print_summary, write_table
from faultllm.config.jobs import HpoJob
from faultllm.data.splits import Split, cv_folds, make_split, scale_split
from faultllm.llm.build import BaseModelCache
from faultllm.llm.finetune import train_on_split
from faultllm.llm.sources import resolve_model_path
from faultllm.run.directory import HPO_RESUME, TRAIN_RESUME, read_json, set_aside_other_run, start_run
from faultllm.run.kind import RunKind
from faultllm.run.slurm import submit_array, wait_for
from faultllm.runtime.credentials import redact, worker_environment
from faultllm.runtime.distributed import visible_gpus
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_csv, write_json
from faultllm.runtime.threads import available_cores
from faultllm.search.hpo import (
    OutOfMemoryStreak,
    TrialOutOfMemory,
    mlflow_trial_logger,
    run_trial,
    search_features,
    with_params,
)
from faultllm.search.studies import (
    OverBudget,
    best_trial,
    claim_within_budget,
    fail_interrupted,
    open_study,
    refit_claim,
    slots_taken,
    sole_user,
    study_url,
)
from faultllm.search.summary import plot_study, search_summary, table_4_1

log = logging.getLogger(__name__)


def run(cfg: HpoJob, run_dir: Path) -> dict:
    resolve_model_path(cfg.model, cfg.cache_dir)  # a hub model off the hub fails here, not in the first trial
    run_dir = start_run(cfg, run_dir, RunKind.HPO, HPO_RESUME)
    raw = make_split(cfg.data, cfg.seed)
    folds = cv_folds(raw.train, cfg.hpo.folds, cfg.seed)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets our own line (`_report`)
    study = open_study(cfg.hpo, cfg.seed, run_dir, epochs=cfg.trainer.epochs)
    if sole_user(cfg.hpo):  # no worker started yet: a RUNNING trial was killed
        fail_interrupted(study, cfg.hpo.n_trials)
    if cfg.hpo.launcher == "slurm":
        return submit_workers(cfg, run_dir)
    if cfg.hpo.workers > 1:
        return launch_workers(cfg, run_dir)
    started = time.perf_counter()
    base_cache = BaseModelCache() if cfg.hpo.reuse_model else None  # this worker's base model, for every fold
    run_trials(study, cfg, raw, folds, run_dir, base_cache)
    if base_cache is not None:
        base_cache.clear()  # not held while waiting on another worker's refit; the refit loads its own
    if slots_taken(study) == (cfg.hpo.n_trials, 0):
        with refit_claim(study, cfg.hpo.n_trials, _patience(cfg.hpo), cfg.hpo.heartbeat_interval) as mine:
            if mine:
                log.info(f"worker {cfg.hpo.worker_index}: the refit and Table 4.1 are this worker's")
                return finish_study(study, cfg, raw, run_dir, time.perf_counter() - started)
    summary = read_json(run_dir / "table_4_1.json") if (run_dir / "table_4_1.json").exists() else {}
    if summary.get("trials_finished") == cfg.hpo.n_trials:
        log.info(f"the study already holds its {cfg.hpo.n_trials} trials and Table 4.1: {run_dir / 'table_4_1.json'}")
        return summary
    log.info(f"worker {cfg.hpo.worker_index}: trials done; the refit and Table 4.1 are another worker's")
    return {}


def run_trials(study, cfg: HpoJob, raw: Split, folds: list, run_dir: Path, base_cache: BaseModelCache | None) -> None:
    """Optuna's optimize loop until the study holds hpo.n_trials finished trials across all workers.

    While every remaining slot is held by another worker's running trial, wait: it finishes, or
    its heartbeat stops and the storage fails it and queues it again (`optimize` checks first).
    """
    n_trials = cfg.hpo.n_trials

    def objective(trial) -> float:
        # MaxTrialsCallback stops a worker only after its trial: a second worker could start one
        # more than the budget, so each trial first claims a slot among the first n_trials.
        if not claim_within_budget(study, trial, n_trials):
            study.stop()
            raise OverBudget
        return run_trial(trial, cfg, raw, folds, run_dir, base_cache)

    callbacks = [
        MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
        functools.partial(_report, n_trials=n_trials),
        *mlflow_trial_logger(cfg.trainer.report_to),
        OutOfMemoryStreak(),
    ]
    patience, waited = _patience(cfg.hpo), 0
    while (taken := slots_taken(study))[0] < n_trials:
        if sum(taken) < n_trials:
            catch = (OverBudget, TrialOutOfMemory)  # an out-of-memory trial is failed and recorded; the worker goes on
            study.optimize(objective, callbacks=callbacks, catch=catch, gc_after_trial=True)
            waited = 0
        elif waited > patience:  # the running trials are alive (or were never heartbeaten): theirs to finish
            log.info(f"worker {cfg.hpo.worker_index}: the last trials run in other workers")
            return
        else:
            time.sleep(cfg.hpo.heartbeat_interval)
            waited += cfg.hpo.heartbeat_interval
            fail_stale_trials(study)


def _patience(hpo_cfg) -> float:
    """How long a worker waits for another worker's running trial or refit claim to finish or go stale."""
    return hpo_cfg.grace_period + 2 * hpo_cfg.heartbeat_interval


def _report(study, trial, n_trials: int) -> None:
    """One line per trial this worker ran."""
    if trial.state == TrialState.FAIL:
        if "failed_because" in trial.user_attrs:
            log.warning(f"trial {trial.number} (of {n_trials}) failed: {trial.user_attrs['failed_because']}")
        return
    status = (
        f"value {trial.value:.4f}"
        if trial.state == TrialState.COMPLETE
        else f"pruned ({trial.user_attrs.get('pruned_because')})"
    )
    best = best_trial(study)
    line = f"trial {trial.number} (of {n_trials}): {status}, {trial.duration.total_seconds():.1f} s"
    log.info(f"{line}; best {best.value:.4f} (trial {best.number})" if best else line)


def finish_study(study, cfg: HpoJob, raw: Split, run_dir: Path, seconds: float) -> dict:
    """Once per study, after its last trial: trials.csv, plots, the refit and Table 4.1."""
    best = best_trial(study)
    if best is None:
        raise FaultLLMError("no trial finished without being pruned; widen hpo.space or lower the pruning")
    trials = study.trials_dataframe()
    write_csv(trials, run_dir / "trials.csv")
    plot_study(study, run_dir)
    final = _refit(cfg, best, raw, run_dir / "final") if cfg.hpo.refit else None
    summary = search_summary(trials, best, final, cfg.hpo, cfg.trainer.epochs, seconds)
    write_table(table_4_1(best, final), run_dir / "table_4_1")
    write_json(run_dir / "table_4_1.json", summary)
    _print_summary(cfg, best, summary, run_dir)
    return summary


def worker_command(cfg: HpoJob, run_dir: Path, url: str, index: int, threads: int | None = None) -> list[str]:
    """This same command as one worker of the study: worker `index` of those this command starts, with `threads`
    (None: its own budget, e.g. a SLURM task's CPUs)."""
    from hydra.core.hydra_config import HydraConfig

    keep = [o for o in HydraConfig.get().overrides.task if not o.startswith(WORKER_KEYS)]
    worker_index = cfg.hpo.worker_index + index  # another machine's workers start from its own hpo.worker_index
    worker = [
        "hpo.workers=1", "hpo.launcher=local", f"hpo.worker_index={worker_index}", f"hpo.storage={redact(url)}",
        f"hydra.run.dir={run_dir}", *([f"threads={threads}"] if threads else []),
    ]  # fmt: skip
    return [sys.executable, "-m", "faultllm", "hpo", *keep, *worker]


def launch_workers(cfg: HpoJob, run_dir: Path) -> dict:
    """hpo.workers processes of this same command over one storage, each on its own GPU when there are GPUs."""
    url = study_url(cfg.hpo, run_dir)
    secret = worker_environment(url)  # the workers get the storage's password in their environment, not argv
    gpus = visible_gpus()
    threads = max(1, available_cores(cfg.threads).count // cfg.hpo.workers)  # the workers share this budget
    workers = []
    for index in range(cfg.hpo.workers):
        env = os.environ | secret | ({"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if gpus else {})
        workers.append(subprocess.Popen(worker_command(cfg, run_dir, url, index, threads), env=env))
    codes = [worker.wait() for worker in workers]
    if any(codes):
        raise FaultLLMError(f"hpo: worker exit codes {codes}; rerun the same command to resume the study")
    return _written_summary(run_dir)


def _written_summary(run_dir: Path) -> dict:
    """Table 4.1's summary as the worker that made it wrote it ({} before that)."""
    summary_path = run_dir / "table_4_1.json"
    return read_json(summary_path) if summary_path.exists() else {}


WORKER_KEYS = (
    "hpo.workers=",
    "hpo.worker_index=",
    "hpo.storage=",
    "hydra.run.dir=",
    "hpo.launcher=",
    "hpo.wait=",
    "threads=",
)


def submit_workers(cfg: HpoJob, run_dir: Path) -> dict:
    """hpo.workers tasks of one SLURM array, each one worker on the shared study; returns at once, or waits
    for them with hpo.wait=true. The last task to finish makes the refit and Table 4.1, as local workers do."""
    url = study_url(cfg.hpo, run_dir)
    os.environ.update(worker_environment(url))  # sbatch exports it to the tasks: no password in their files
    commands = [worker_command(cfg, run_dir, url, index) for index in range(cfg.hpo.workers)]
    jobs = submit_array(commands, cfg.slurm, run_dir / "slurm", f"faultllm-hpo-{cfg.hpo.study_name}")
    array_id = jobs[0].job_id.split("_")[0]
    log.info(f"hpo: SLURM array job {array_id} ({cfg.hpo.workers} workers); logs in {run_dir / 'slurm'}")
    log.info(f"watch it: squeue -j {array_id}; the study: optuna-dashboard {redact(url)}")
    if not cfg.hpo.wait:
        return {}
    failures = wait_for(jobs, "hpo workers")
    if failures:
        raise FaultLLMError(f"hpo: {'; '.join(failures)}; rerun the same command to resume the study")
    return _written_summary(run_dir)


def _refit(cfg: HpoJob, best, raw: Split, run_dir: Path) -> dict:
    """The train job with the best parameters, on the split the search already made."""
    refit_cfg = with_params(cfg, {spec.key: best.params[name] for name, spec in cfg.hpo.space.items()})
    split, scaler = scale_split(raw, refit_cfg.data.normalize, refit_cfg.data.scale_range)
    set_aside_other_run(refit_cfg, run_dir, TRAIN_RESUME)  # an earlier refit, of a best trial since beaten
    refit_dir = start_run(refit_cfg, run_dir, RunKind.HPO, TRAIN_RESUME)
    return train_on_split(refit_cfg, split, scaler, refit_dir, search_features(cfg, raw))


def _print_summary(cfg: HpoJob, best, summary: dict, run_dir: Path) -> None:
    final = summary["final"]
    print_summary(
        f"hpo: {cfg.data.display_name} ({cfg.hpo.objective}, {cfg.hpo.folds} folds)",
        {
            "trials finished / pruned": f"{summary['trials_finished']} / {summary['trials_pruned']}",
            "fold-epochs trained": f"{summary['fold_epochs_trained_fraction']:.0%} of the unpruned protocol",
            "best trial / value": f"{best.number} / {best.value:.4f}",
            "best params": ", ".join(f"{k}={v}" for k, v in best.params.items()),
            "final test accuracy": f"{final['test']['accuracy']:.3f}" if final else "(hpo.refit=false)",
            "written to": str(run_dir),
        },
    )
