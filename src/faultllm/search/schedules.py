"""How much of the protocol (folds x epochs) each HPO trial gets: `hpo.schedule`.

A trial's budget is its fold-epochs, trained in order: fold 0's epochs, then fold 1's, ... Step
`fold * epochs + epoch` carries the running mean of the objective: the finished folds' last epochs
and the current fold's current epoch, so trials are compared on the same folds and epochs.
- full: every fold of every trial (the study's protocol); `hpo.pruner` prunes on the raw values.
- race: after each fold a trial stops when its running mean is worse than the best complete trial's
  over the same folds (by more than hpo.race_margin of it); `hpo.pruner` still prunes within folds.
- asha: successive halving over the fold-epochs (Optuna's SuccessiveHalvingPruner): rungs at
  hpo.min_epochs x hpo.reduction_factor^k fold-epochs; at each, a trial goes on only while among the
  best 1/reduction_factor of the trials that reached that rung. `hpo.pruner` is not used.
A pruned trial never becomes the best: the refit's trial ran every fold, under every schedule.
"""

from __future__ import annotations

import numpy as np

from faultllm.config.choices import OBJECTIVES
from faultllm.config.hpo import HpoConfig

FOLD_VALUES = "fold_values"  # user attribute: the objective of each fold the trial finished (its last epoch)


def running_mean(finished: list[float], current: float) -> float:
    """The objective over the folds seen so far: finished folds' last epochs and the current fold's value."""
    return float(np.mean([*finished, current]))


def may_stop(hpo_cfg: HpoConfig, step: int, epochs: int) -> bool:
    """Whether the pruner is asked at this step: under asha not at a trial's last fold-epoch (a rung there
    would only throw away a whole trial's work)."""
    return hpo_cfg.schedule != "asha" or step < hpo_cfg.folds * epochs


def race_verdict(running: list[float], best: list[float], margin: float, objective: str) -> str | None:
    """Why a trial with per-fold values `running` stops racing the best complete trial (`best`, every fold),
    or None while it is still competitive: its mean over these folds is worse than the best's over the same
    folds by more than `margin` of the best's."""
    folds = len(running)
    if not best or folds >= len(best):
        return None
    mine, theirs = float(np.mean(running)), float(np.mean(best[:folds]))
    slack = margin * abs(theirs)
    worse = mine > theirs + slack if OBJECTIVES[objective] == "minimize" else mine < theirs - slack
    if not worse:
        return None
    return f"race: {objective} {mine:.4f} over {folds} fold(s), the best complete trial's {theirs:.4f}"


def incumbent_folds(study) -> list[float]:
    """The per-fold values of the best complete trial so far (any worker's), or [] before one completes."""
    try:
        best = study.best_trial
    except ValueError:
        return []
    return list(best.user_attrs.get(FOLD_VALUES, []))


# ---------------------------------------------------------------- what a schedule is expected to train

SPREAD, FOLD_NOISE = 0.1, 0.05  # simulated trials: objective 1 + N(0, SPREAD) per trial, + N(0, FOLD_NOISE) per fold


def simulated_share(hpo_cfg: HpoConfig, epochs: int, pruner, seed: int = 0) -> float:
    """The share of full's fold-epochs that hpo.n_trials trials train under hpo.schedule, by running the
    schedule's own rules (`pruner`: the study's, e.g. Optuna's SuccessiveHalvingPruner; the race) on simulated
    trials: exchangeable (the sampler learns nothing), each with its own objective (1 + N(0, SPREAD),
    minimized) plus N(0, FOLD_NOISE) per fold, flat over epochs (only the ranks at the rungs matter)."""
    import optuna

    rng = np.random.default_rng(seed)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per simulated study
    try:
        study = optuna.create_study(pruner=pruner)
    finally:
        optuna.logging.set_verbosity(verbosity)
    trained = 0
    for _ in range(hpo_cfg.n_trials):
        values = 1.0 + SPREAD * rng.normal() + FOLD_NOISE * rng.normal(size=hpo_cfg.folds)
        trial = study.ask()
        steps = _simulated_trial(study, trial, hpo_cfg, list(values), epochs)
        trained += steps
        if steps < hpo_cfg.folds * epochs:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(np.mean(values)))
    return trained / (hpo_cfg.n_trials * hpo_cfg.folds * epochs)


def _simulated_trial(study, trial, hpo_cfg: HpoConfig, values: list[float], epochs: int) -> int:
    """The fold-epochs one simulated trial trains before its schedule stops it (all of them if none does)."""
    for fold, value in enumerate(values):
        for epoch in range(1, epochs + 1):
            step = fold * epochs + epoch
            trial.report(running_mean(values[:fold], value), step=step)
            if may_stop(hpo_cfg, step, epochs) and trial.should_prune():
                return fold * epochs + epoch
        trial.set_user_attr(FOLD_VALUES, values[: fold + 1])
        best = incumbent_folds(study) if hpo_cfg.schedule == "race" else []
        if race_verdict(values[: fold + 1], best, hpo_cfg.race_margin, "val_loss"):
            return (fold + 1) * epochs
    return len(values) * epochs
