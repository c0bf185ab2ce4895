"""The allowed values of config keys that other modules share (loaders, baselines, trackers, metrics, GPUs)."""

from __future__ import annotations

LOADERS = ("hst", "tep", "table")
BASELINE_MODELS = ("rf", "lr", "svm", "knn", "gbm", "hgb", "xgb", "lgbm", "catboost")
BOOSTING_PACKAGES = {"xgb": "xgboost", "lgbm": "lightgbm", "catboost": "catboost"}  # the `boosting` extra
SHOT_SELECTIONS = ("fixed", "random", "nearest")
SCHEDULES = ("full", "race", "asha")  # hpo.schedule: how much of folds x epochs each trial gets
ON_OOM = ("fail", "halve_batch")  # hpo.on_oom: what a trial that ran out of GPU memory does
EVAL_MODES = ("restricted", "generate")
TEMPLATES = ("llama2", "chat")
MISSING_STYLES = ("unknown", "omit")
PROMPT_FORMATS = ("study", "compact")  # prompt.format (templates.py)
FEATURE_ORDERS = ("original", "importance", "random")
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "clearml", "dvclive", "neptune", "swanlab")
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tracking"),
    "mlflow": ("mlflow", "tracking"),
    "wandb": ("wandb", None),
}
# transformers.SchedulerType's values (tests/test_configs.py checks they still match)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
    "greedy",
)  # fmt: skip
# Per-epoch metrics: the epoch callback writes `{split}_{metric}`; HPO objectives and `report` read them.
# loss: the study's, mean NLL per answer token (`Y = k</s>`: mostly the fixed format); class_loss:
# -log p(true label | allowed labels); valid_mass: the probability the model puts on any valid answer.
LOSS, CLASS_LOSS, ACCURACY, MACRO_F1, VALID_MASS = "loss", "class_loss", "accuracy", "macro_f1", "valid_mass"
EPOCH_METRICS = (LOSS, CLASS_LOSS, ACCURACY, MACRO_F1, VALID_MASS)
OBJECTIVES = {
    f"val_{LOSS}": "minimize", f"val_{CLASS_LOSS}": "minimize",
    f"val_{ACCURACY}": "maximize", f"val_{MACRO_F1}": "maximize",
}  # fmt: skip
GPU_NAMES = ("h100", "h200", "a100", "l40s", "a10", "t4")  # `plan.gpu`: cost.flops.GPUS holds their datasheet numbers


def trackers(report_to: str | list) -> tuple[str, ...]:
    """`trainer.report_to` as a tuple of tracker names ("none" dropped)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return tuple(str(name) for name in names if str(name) != "none")
