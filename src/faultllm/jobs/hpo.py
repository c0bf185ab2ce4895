"""`faultllm hpo` (configs/hpo.yaml): Optuna TPE over stratified K folds of the training split, with
pruning; then the best parameters refitted on the whole training split and tested (Table 4.1).

Rerun with hydra.run.dir=DIR (or the same hpo.storage) to resume an interrupted study.
"""

from __future__ import annotations

import time
from pathlib import Path

from faultllm.errors import FaultLLMError
from faultllm.hpo import (
    DIRECTIONS,
    ask_after_failing_stale,
    best_trial,
    check_space,
    claim_within_budget,
    finished_count,
    heartbeat,
    open_study,
    plot_study,
    run_trial,
    search_summary,
    table_4_1,
    with_params,
)
from faultllm.jobs.train import train_on_split
from faultllm.modeling import forget_reused_base
from faultllm.reporting import print_summary, write_table
from faultllm.rundir import start_run, write_json
from faultllm.splits import Split, cv_folds, make_split, scale_split


def run(cfg, run_dir) -> dict:
    import optuna

    check_space(cfg.hpo.space)
    if cfg.hpo.objective not in DIRECTIONS:
        raise FaultLLMError(f"hpo.objective={cfg.hpo.objective!r}; expected one of {sorted(DIRECTIONS)}")
    run_dir = start_run(cfg, run_dir)
    raw = make_split(cfg.data, cfg.seed)
    folds = cv_folds(raw.train, cfg.hpo.folds, cfg.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg.hpo, cfg.seed, run_dir)
    started = time.perf_counter()
    run_trials(study, cfg, raw, folds, run_dir)

    best = best_trial(study)
    if best is None:
        raise FaultLLMError("no trial finished without being pruned; widen hpo.space or lower the pruning")
    trials = study.trials_dataframe()
    trials.to_csv(run_dir / "trials.csv", index=False)
    plot_study(study, run_dir)
    final = _refit(cfg, best, raw, run_dir / "final") if cfg.hpo.refit else None
    summary = search_summary(trials, best, final, cfg.hpo, cfg.trainer.epochs, time.perf_counter() - started)
    write_table(table_4_1(best, final), run_dir / "table_4_1")
    write_json(run_dir / "table_4_1.json", summary)
    _print_summary(cfg, best, summary, run_dir)
    return summary


def run_trials(study, cfg, raw: Split, folds: list, run_dir: Path) -> None:
    """Ask, run and tell trials until the study holds hpo.n_trials finished ones (across all workers)."""
    import optuna

    while finished_count(study) < cfg.hpo.n_trials:
        trial = ask_after_failing_stale(study)
        if not claim_within_budget(study, trial, cfg.hpo.n_trials):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # another worker took the last slot
            break
        trial_start = time.perf_counter()
        try:
            with heartbeat(study, trial):
                value = run_trial(trial, cfg, raw, folds, run_dir)
            study.tell(trial, value)
            status = f"value {value:.4f}"
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            status = f"pruned ({pruned})"
        best = best_trial(study)
        line = f"trial {trial.number}: {status}, {time.perf_counter() - trial_start:.1f} s"
        print(f"{line}; best {best.value:.4f} (trial {best.number})" if best else line, flush=True)


def _refit(cfg, best, raw: Split, run_dir: Path) -> dict:
    """The train job with the best parameters, on the split the search already made."""
    forget_reused_base()  # the refit loads its own
    refit_cfg = with_params(cfg, {spec.key: best.params[name] for name, spec in cfg.hpo.space.items()})
    split, scaler = scale_split(raw, refit_cfg.data.normalize, refit_cfg.data.scale_range)
    return train_on_split(refit_cfg, split, scaler, start_run(refit_cfg, run_dir))


def _print_summary(cfg, best, summary: dict, run_dir: Path) -> None:
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
