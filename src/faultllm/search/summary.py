"""What a finished search reports: Table 4.1 (the best trial's parameters and scores, and its refit's),
table_4_1.json, and the study's plots."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm.compare import plots
from faultllm.config.choices import ACCURACY, EPOCH_METRICS, LOSS
from faultllm.config.hpo import HpoConfig
from faultllm.runtime.errors import first_line
from faultllm.search.studies import FINISHED

log = logging.getLogger(__name__)


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
    why = no_importances_reason([t for t in study.trials if t.state.name == "COMPLETE"])
    if why is None:
        try:
            plots.optuna_plot(lambda: plot_param_importances(study), run_dir / "param_importances.png")
        except (RuntimeError, ValueError) as err:  # e.g. every trial scored the same
            why = f"Optuna could not rank the parameters ({first_line(err)})"
    if why is not None:
        log.info(f"param_importances.png not written: {why}")


def no_importances_reason(completed: list) -> str | None:
    """Why parameter importances cannot be computed from these completed trials, or None."""
    if len(completed) < 2:
        return f"{len(completed)} trial(s) completed unpruned; importances need at least 2"
    if len({str(t.params) for t in completed}) < 2:
        return "every completed trial had the same parameters"
    if len({t.value for t in completed}) < 2:
        return f"every completed trial scored the same ({completed[0].value:.4f})"
    return None
