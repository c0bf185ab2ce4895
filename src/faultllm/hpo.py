"""`faultllm hpo`: Optuna TPE over stratified (run-grouped) K folds, with pruning, resumable, multi-worker.

Each trial trains one LoRA per fold on the fold's training part (scaler fitted there
only) and scores the fold's validation part after every epoch. Intermediate values go to
the pruner at step fold * epochs + epoch. The study lives in SQLite in the run directory
by default, or in any Optuna storage (`hpo.storage=...`) shared by several workers; the
same command resumes it. After the search the best parameters are refitted on the whole
training split and evaluated on the test split (the study's Table 4.1).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from faultllm.errors import FaultLLMError
from faultllm.prepare import Split, cv_folds, make_split, scale_split

DIRECTIONS = {"val_loss": "minimize", "val_accuracy": "maximize", "val_macro_f1": "maximize"}
FINISHED = ("COMPLETE", "PRUNED")


def check_space(space) -> None:
    for name, spec in space.items():
        kind = spec.get("type")
        if kind == "categorical":
            if not spec.get("choices"):
                raise FaultLLMError(f"hpo.space.{name}: categorical with no choices")
        elif kind in ("int", "float"):
            low, high = spec.get("low"), spec.get("high")
            if low is None or high is None or not low < high:
                raise FaultLLMError(f"hpo.space.{name}: empty or inverted range [{low}, {high}]; expected low < high")
            if spec.get("log") and low <= 0:
                raise FaultLLMError(f"hpo.space.{name}: a log range needs low > 0, got {low}")
        else:
            raise FaultLLMError(f"hpo.space.{name}: type {kind!r}; expected int, float or categorical")


def suggest(trial, space) -> dict:
    """Parameters of one trial, keyed by the config key each one sets (e.g. lora.r)."""
    params = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            value = trial.suggest_categorical(name, list(spec.choices))
        elif spec.type == "int":
            value = trial.suggest_int(name, spec.low, spec.high, step=spec.get("step") or 1, log=bool(spec.get("log")))
        else:
            value = trial.suggest_float(name, spec.low, spec.high, step=spec.get("step"), log=bool(spec.get("log")))
        params[spec.key] = value
    return params


def with_params(cfg, params: dict):
    trial_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in params.items():
        OmegaConf.update(trial_cfg, key, value, merge=False)
    return trial_cfg


def fold_split(raw: Split, fit_rows: np.ndarray, val_rows: np.ndarray, normalize: bool, feature_range) -> Split:
    """One fold as a train/val split, min-max scaled with a scaler fitted on the fold's training rows only."""
    fold = replace(
        raw, train=raw.train.iloc[fit_rows].reset_index(drop=True), test=raw.train.iloc[val_rows].reset_index(drop=True)
    )
    return scale_split(fold, normalize, feature_range)[0]


def study_rule(row: dict, hpo_cfg) -> str | None:
    """The study's pruning rule: a NaN loss, or accuracy 0 in the early epochs, never recovers."""
    if not math.isfinite(row.get("val_loss", 0.0)) or not math.isfinite(row.get("train_loss", 0.0)):
        return "loss is NaN"
    if row["epoch"] <= hpo_cfg.prune_early_epochs and row.get("val_accuracy", 1.0) == 0.0:
        return f"validation accuracy 0 at epoch {row['epoch']}"
    return None


def make_pruner(name: str):
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    if name not in pruners:
        raise FaultLLMError(f"hpo.pruner={name!r}; expected one of {sorted(pruners)}")
    return pruners[name]()


def open_study(cfg, run_dir: Path, attempts: int = 5):
    """Create or load the study. Workers starting together may race to create the schema: retry."""
    import optuna

    url = cfg.hpo.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    for attempt in range(attempts):
        try:
            study = optuna.create_study(
                study_name=cfg.hpo.study_name,
                storage=_storage(url, cfg.hpo),
                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                pruner=make_pruner(cfg.hpo.pruner),
                direction=DIRECTIONS[cfg.hpo.objective],
                load_if_exists=True,
            )
            break
        except FaultLLMError:
            raise
        except Exception as err:  # ValueError for bad URLs, SQLAlchemy errors for unreachable databases
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            racing = ("already exists", "locked", "UNIQUE constraint")  # schema creation by another worker
            if attempt + 1 < attempts and any(text in message for text in racing):
                time.sleep(0.5 + attempt)
                continue
            raise FaultLLMError(f"hpo.storage={url}: cannot open ({type(err).__name__}: {message})") from None
    if not cfg.hpo.storage:
        fail_interrupted(study)  # our own database: no other worker can own a RUNNING trial
    return study


def _storage(url: str, hpo_cfg):
    if "://" not in url and url.endswith((".log", ".jsonl")):  # a journal file, for workers sharing NFS
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    return RDBStorage(
        url,
        heartbeat_interval=hpo_cfg.heartbeat_interval,
        grace_period=hpo_cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def fail_interrupted(study) -> None:
    """Mark trials left RUNNING by a killed process as failed and queue their parameters again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        print(f"trial {trial.number} was interrupted: marked failed, queued again", flush=True)


def claim_within_budget(study, trial, n_trials: int) -> bool:
    """True if this trial is among the first n_trials not failed: workers never run more than the budget."""
    from optuna.trial import TrialState

    earlier = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
    return sum(t.number < trial.number for t in earlier) < n_trials


def ask_after_failing_stale(study):
    """study.ask(), first failing (and re-queuing) trials of workers whose heartbeat stopped, as optimize() does."""
    import warnings

    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we run it ourselves
        if is_heartbeat_enabled(study._storage):
            optuna.storages.fail_stale_trials(study)
        return study.ask()


def heartbeat(study, trial):
    """Record this trial's heartbeat while it runs (the helper optimize() uses; ask/tell has none)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_trial(trial, cfg, plan, raw: Split, folds, run_dir: Path) -> float:
    """Train and validate every fold; report per-epoch values to the pruner; free each fold's model."""
    import optuna

    from faultllm.prompts import PromptFormat
    from faultllm.training import NonFiniteLoss, eval_set, fit

    params = suggest(trial, cfg.hpo.space)
    trial_cfg = with_params(cfg, params)
    epochs = trial_cfg.trainer.epochs
    fold_results, trained_epochs = [], 0
    for fold_index, (fit_rows, val_rows) in enumerate(folds):
        fold = fold_split(raw, fit_rows, val_rows, trial_cfg.data.normalize, trial_cfg.data.scale_range)
        fmt = PromptFormat.from_config(trial_cfg.prompt, trial_cfg.data)
        sets = {
            "train": eval_set(fold.train, fold.features, fold.labels, fmt),
            "val": eval_set(fold.test, fold.features, fold.labels, fmt),
        }

        def on_epoch(row: dict, fold_index: int = fold_index) -> None:
            nonlocal trained_epochs
            trained_epochs += 1
            trial.set_user_attr("fold_epochs_trained", trained_epochs)
            reason = study_rule(row, cfg.hpo)
            if reason:
                trial.set_user_attr("pruned_because", reason)
                raise optuna.TrialPruned(reason)
            trial.report(row[cfg.hpo.objective], step=fold_index * epochs + row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("pruned_because", "pruner")
                raise optuna.TrialPruned(f"pruned at fold {fold_index} epoch {row['epoch']}")

        out_dir = run_dir / "trials" / f"{trial.number:04d}" / f"fold{fold_index}"
        result = None
        try:
            result = fit(
                trial_cfg,
                plan,
                fold.train,
                fold.features,
                fold.labels,
                fmt,
                sets,
                out_dir,
                on_epoch=on_epoch,
                checkpoints=False,
            )
            fold_results.append(result.history[-1])
        except NonFiniteLoss as err:
            trial.set_user_attr("pruned_because", "loss is NaN")
            raise optuna.TrialPruned(str(err)) from None
        finally:
            del result
            free_memory()
    means = {
        key: float(np.mean([r[key] for r in fold_results]))
        for key in fold_results[0]
        if key.startswith(("train_", "val_"))
    }
    for key, value in means.items():
        trial.set_user_attr(key, value)
    return means[cfg.hpo.objective]


def free_memory() -> None:
    """The model of one fold is gone before the next is built: memory does not grow with trials."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def search(cfg, run_dir) -> dict:
    import optuna

    from faultllm.config import start_run, write_json
    from faultllm.modeling import hardware_plan
    from faultllm.reporting import print_summary, write_table

    check_space(cfg.hpo.space)
    if cfg.hpo.objective not in DIRECTIONS:
        raise FaultLLMError(f"hpo.objective={cfg.hpo.objective!r}; expected one of {sorted(DIRECTIONS)}")
    run_dir = start_run(cfg, run_dir)
    raw = make_split(cfg.data, cfg.seed)
    folds = cv_folds(raw.train, cfg.hpo.folds, cfg.seed)
    plan = hardware_plan(cfg.model)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, run_dir)
    started = time.perf_counter()

    while finished_count(study) < cfg.hpo.n_trials:
        trial = ask_after_failing_stale(study)
        if not claim_within_budget(study, trial, cfg.hpo.n_trials):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # another worker took the last slot
            break
        trial_start = time.perf_counter()
        try:
            with heartbeat(study, trial):
                value = run_trial(trial, cfg, plan, raw, folds, run_dir)
            study.tell(trial, value)
            status = f"value {value:.4f}"
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            status = f"pruned ({pruned})"
        best = _best(study)
        elapsed = f"{time.perf_counter() - trial_start:.1f} s"
        print(
            f"trial {trial.number}: {status}, {elapsed}; best {best.value:.4f} (trial {best.number})"
            if best
            else f"trial {trial.number}: {status}, {elapsed}",
            flush=True,
        )

    best = _best(study)
    if best is None:
        raise FaultLLMError("no trial finished without being pruned; widen hpo.space or lower the pruning")
    trials = study.trials_dataframe()
    trials.to_csv(run_dir / "trials.csv", index=False)
    _plots(study, run_dir)
    max_fold_epochs = cfg.hpo.folds * cfg.trainer.epochs
    trained = trials.get("user_attrs_fold_epochs_trained", trials["number"] * 0).fillna(0)
    finished = trials["state"].isin(FINISHED)
    fraction = float(trained[finished].sum() / (finished.sum() * max_fold_epochs))

    final = _refit(cfg, best, run_dir / "final") if cfg.hpo.refit else None
    table = table_4_1(best, final)
    write_table(table, run_dir / "table_4_1")
    summary = {
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "hpo": {
            key: best.user_attrs.get(key)
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1")
        },
        "final": {
            split: {k: final[split][k] for k in ("loss", "accuracy", "macro_f1") if k in final[split]}
            for split in ("train", "test")
        }
        if final
        else None,
        "trials_finished": int(finished.sum()),
        "trials_pruned": int((trials["state"] == "PRUNED").sum()),
        "fold_epochs_trained_fraction": fraction,
        "search_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run_dir / "table_4_1.json", summary)
    print_summary(
        f"hpo: {cfg.data.display_name} ({cfg.hpo.objective}, {cfg.hpo.folds} folds)",
        {
            "trials finished / pruned": f"{summary['trials_finished']} / {summary['trials_pruned']}",
            "fold-epochs trained": f"{fraction:.0%} of the unpruned protocol",
            "best trial / value": f"{best.number} / {best.value:.4f}",
            "best params": ", ".join(f"{k}={v}" for k, v in best.params.items()),
            "final test accuracy": f"{final['test']['accuracy']:.3f}" if final else "(hpo.refit=false)",
            "written to": str(run_dir),
        },
    )
    return summary


def _best(study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _refit(cfg, best, run_dir: Path) -> dict:
    from faultllm.training import train

    params = {spec.key: best.params[name] for name, spec in cfg.hpo.space.items()}
    return train(with_params(cfg, params), run_dir)


def table_4_1(best, final: dict | None):
    import pandas as pd

    rows = [(f"{name}", value) for name, value in best.params.items()]
    attrs = best.user_attrs
    rows += [
        ("Loss Train HPO", attrs.get("train_loss")),
        ("Accuracy Train HPO", attrs.get("train_accuracy")),
        ("Loss Validation", attrs.get("val_loss")),
        ("Accuracy Validation", attrs.get("val_accuracy")),
    ]
    if final:
        rows += [
            ("Loss Train", final["train"].get("loss")),
            ("Accuracy Train", final["train"]["accuracy"]),
            ("Loss Test", final["test"].get("loss")),
            ("Accuracy Test", final["test"]["accuracy"]),
        ]
    return pd.DataFrame(rows, columns=["", "value"])


def _plots(study, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plot_optimization_history(study)
    plt.gcf().set_size_inches(7, 4)
    plt.tight_layout()
    plt.savefig(run_dir / "optimization_history.png", dpi=120)
    plt.close("all")
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(completed) >= 2 and len({str(t.params) for t in completed}) >= 2:
        try:
            plot_param_importances(study)
            plt.gcf().set_size_inches(7, 4)
            plt.tight_layout()
            plt.savefig(run_dir / "param_importances.png", dpi=120)
        except (RuntimeError, ValueError):  # importances need variation in the values
            pass
        plt.close("all")
