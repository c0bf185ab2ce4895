"""Classical models on exactly the rows and preprocessing an LLM run sees.

The study's settings by default (Table 4.2: RF 100 trees, LR max_iter 1000, RBF SVC, k=5,
GBM 100 stages) plus HistGradientBoosting, and the gradient-boosting libraries tabular benchmarks
compare against (XGBoost, LightGBM, CatBoost: 100 trees each, seeded, deterministic, one thread;
the optional `boosting` extra: a missing library skips its model). `baselines.tune=true` tunes each
model with Optuna over the same stratified (run-grouped) folds as the LLM search, scaler fitted per fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.compare.calibration import Forecast, Recalibration, forecast_of
from faultllm.compare.metrics import classification_metrics
from faultllm.config.choices import BOOSTING_PACKAGES
from faultllm.data.splits import Split
from faultllm.data.tables import LABEL
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import atomic_path
from faultllm.runtime.progress import Progress

NAMES = {
    "rf": "Random Forest",
    "lr": "Logistic Regression",
    "svm": "Support Vector Machine",
    "knn": "K-Nearest Neighbors",
    "gbm": "Gradient Boosting",
    "hgb": "HistGradientBoosting",
    "xgb": "XGBoost",
    "lgbm": "LightGBM",
    "catboost": "CatBoost",
}
NATIVE_NAN = ("hgb", *BOOSTING_PACKAGES)  # models that take missing values as they are (no imputer)


def missing_packages(names: list[str]) -> dict[str, str]:
    """model -> its library, for the boosting models whose library is not installed."""
    import importlib.util

    return {
        name: BOOSTING_PACKAGES[name]
        for name in names
        if name in BOOSTING_PACKAGES and importlib.util.find_spec(BOOSTING_PACKAGES[name]) is None
    }


class Encoded:
    """A boosting library's classifier on label codes 0..K-1 (XGBoost needs them; CatBoost's multiclass
    `predict` returns a column): `fit` encodes the labels, `predict` answers the most probable label.
    Has what `predict`, the importances and joblib need: classes_, predict_proba, score, feature_importances_."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def fit(self, x: np.ndarray, y: np.ndarray) -> Encoded:
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.estimator.fit(x, codes)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(x), dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))

    @property
    def feature_importances_(self) -> np.ndarray:
        return np.asarray(self.estimator.feature_importances_, dtype=np.float64)


def make_model(name: str, seed: int, impute: bool = False, n_jobs: int = 1, **params):
    """The model, behind a median imputer fitted on its training rows when values are missing
    (HistGradientBoosting handles NaN natively). `n_jobs`: the random forest's threads (faultllm.runtime.threads);
    the other models' OpenMP/BLAS threads are whatever the caller's pools are limited to."""
    model = _boosting(name, seed, **params) if name in BOOSTING_PACKAGES else _estimator(name, seed, n_jobs, **params)
    if not impute or name in NATIVE_NAN:
        return model
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), model)


def has_missing(split: Split) -> bool:
    return bool(split.train[split.features].isna().any().any() or split.test[split.features].isna().any().any())


def _estimator(name: str, seed: int, n_jobs: int, **params):
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    factories: dict[str, Callable] = {
        "rf": lambda: RandomForestClassifier(**({"n_estimators": 100} | params), random_state=seed, n_jobs=n_jobs),
        "lr": lambda: LogisticRegression(**({"max_iter": 1000} | params)),
        # probability=True: `predict` gives per-class probabilities (SVC.predict itself is unchanged by it)
        "svm": lambda: SVC(**({"kernel": "rbf"} | params), probability=True, random_state=seed),
        "knn": lambda: KNeighborsClassifier(**({"n_neighbors": 5} | params)),
        "gbm": lambda: GradientBoostingClassifier(**({"n_estimators": 100} | params), random_state=seed),
        "hgb": lambda: HistGradientBoostingClassifier(**params, random_state=seed),
    }
    return factories[name]()


def _boosting(name: str, seed: int, **params) -> Encoded:
    """XGBoost and LightGBM at their library defaults (100 trees), CatBoost at 100 trees (its default 1,000
    cost ~25 s of CPU on 400 rows of 4 labels); seeded, quiet, one thread each: deterministic, and
    OpenMP's waiting threads made them 20-100x slower on a busy 2-core machine."""
    if name == "xgb":
        from xgboost import XGBClassifier

        return Encoded(XGBClassifier(**({"tree_method": "hist"} | params), random_state=seed, n_jobs=1, verbosity=0))
    if name == "lgbm":
        from lightgbm import LGBMClassifier

        return Encoded(LGBMClassifier(
            **params, random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1
        ))  # fmt: skip
    from catboost import CatBoostClassifier

    return Encoded(CatBoostClassifier(
        **({"n_estimators": 100} | params), random_seed=seed, thread_count=1, verbose=0, allow_writing_files=False
    ))  # fmt: skip


def search_space(name: str, trial, n_train: int) -> dict:
    """Each model's tuned hyperparameters (tuned mode)."""
    if name == "rf":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 500, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 32, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 10),
        }
    if name == "lr":
        return {"C": trial.suggest_float("C", 1e-3, 1e3, log=True)}
    if name == "svm":
        return {
            "C": trial.suggest_float("C", 1e-2, 1e3, log=True),
            "gamma": trial.suggest_float("gamma", 1e-4, 10, log=True),
        }
    if name == "knn":
        return {
            "n_neighbors": trial.suggest_int("n_neighbors", 1, max(1, min(30, n_train - 1))),
            "weights": trial.suggest_categorical("weights", ["uniform", "distance"]),
        }
    if name in ("gbm", "xgb"):
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 300, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 5 if name == "gbm" else 8),
        }
    if name in BOOSTING_PACKAGES:  # lgbm, catboost
        size = ("num_leaves", 8, 64) if name == "lgbm" else ("depth", 3, 8)
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 1000, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            size[0]: trial.suggest_int(*size),
        }
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 64, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 1.0, log=True),
    }


def check_models(names: list[str], n_train: int) -> None:
    """What the split allows (the names themselves are checked with the config)."""
    if "knn" in names and n_train < 5:
        raise FaultLLMError(f"knn: n_neighbors=5 needs at least 5 training rows; the split has {n_train}")


def xy(frame: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return frame[features].to_numpy(np.float64), frame[LABEL].astype(str).to_numpy()


def tune(name: str, folds: list[Split], seed: int, n_trials: int, n_jobs: int = 1) -> dict:
    """Best params by mean accuracy over the (already scaled) folds, and that accuracy as `cv_accuracy`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        params = search_space(name, trial, min(len(fold.train) for fold in folds))
        scores = []
        for fold in folds:
            model = make_model(name, seed, has_missing(fold), n_jobs, **params).fit(*xy(fold.train, fold.features))
            scores.append(model.score(*xy(fold.test, fold.features)))
        return float(np.mean(scores))

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    progress = Progress(f"{name}: tuning over {len(folds)} folds, trial", n_trials)
    try:
        study.optimize(objective, n_trials=n_trials, callbacks=[lambda *_: progress.advance()])
    finally:
        progress.close()
    return study.best_params | {"cv_accuracy": study.best_value}


def fit_and_score(
    name: str, split: Split, seed: int, params: dict, n_jobs: int = 1
) -> tuple[object, np.ndarray, pd.DataFrame, dict]:
    """The fitted model, its test predictions, its test probabilities (a column per label, named by it)
    and its metrics."""
    x_train, y_train = xy(split.train, split.features)
    x_test, y_test = xy(split.test, split.features)
    start = time.perf_counter()
    model = make_model(name, seed, has_missing(split), n_jobs, **params).fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(x_test)
    predict_seconds = time.perf_counter() - start
    probabilities = pd.DataFrame(model.predict_proba(x_test), columns=[str(c) for c in model.classes_])
    test = classification_metrics(y_test, predicted, split.labels)  # the same metrics as the LLM's
    return (
        model,
        predicted,
        probabilities,
        {
            "train_accuracy": classification_metrics(y_train, model.predict(x_train), split.labels)["accuracy"],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "per_class_recall": test["per_class_recall"],
            "fit_seconds": round(fit_seconds, 4),
            "predict_seconds": round(predict_seconds, 4),
        },
    )


def recalibrate(model, split: Split, held_out: pd.DataFrame, coverage: float) -> dict:
    """A temperature and prediction sets fitted on the held-out training rows (calibration.json), with their
    effect on the test rows."""
    held, test = _forecast(model, held_out, split), _forecast(model, split.test, split)
    return Recalibration.fitted_and_checked(held, test, coverage)


def _forecast(model, rows: pd.DataFrame, split: Split) -> Forecast:
    x, y = xy(rows, split.features)
    probabilities = pd.DataFrame(model.predict_proba(x), columns=[f"prob_{label}" for label in model.classes_])
    return forecast_of(probabilities.assign(label=y, predicted=model.predict(x)), split.labels)


@dataclass(frozen=True)
class ModelTask:
    """One model's whole share of a baselines run (tuning, fit, scores, importances): what a worker
    process of `faultllm.runtime.threads.parallel_map` receives."""

    name: str
    split: Split
    seed: int
    folds: list[Split] | None = None  # tuning folds; None: the study's settings
    n_trials: int = 0
    permutation_repeats: int | None = None  # None: no importances
    n_jobs: int = 1  # the model's own threads (a random forest's n_jobs)


@dataclass(frozen=True)
class ModelOutcome:
    model: object
    predicted: np.ndarray
    probabilities: pd.DataFrame  # a column per label, named by it
    metrics: dict
    importances: pd.DataFrame | None


def fit_model(task: ModelTask) -> ModelOutcome:
    """Tune (with folds), fit and score one model, and measure its importances (with repeats)."""
    params = tune(task.name, task.folds, task.seed, task.n_trials, task.n_jobs) if task.folds else {}
    cv_accuracy = params.pop("cv_accuracy", None)
    model, predicted, probabilities, metrics = fit_and_score(task.name, task.split, task.seed, params, task.n_jobs)
    if task.folds:
        metrics |= {"params": params, "cv_accuracy": cv_accuracy}
    repeats = task.permutation_repeats
    table = None if repeats is None else importances(task.name, model, task.split, task.seed, repeats)
    return ModelOutcome(model, predicted, probabilities, metrics, table)


def importances(name: str, model, split: Split, seed: int, repeats: int) -> pd.DataFrame:
    """Impurity importances (where the model has them) and permutation importances on the test rows."""
    from sklearn.inspection import permutation_importance

    permuted = permutation_importance(model, *xy(split.test, split.features), n_repeats=repeats, random_state=seed)
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model  # behind an imputer
    impurity = getattr(estimator, "feature_importances_", np.full(len(split.features), np.nan))
    return pd.DataFrame(
        {
            "model": name,
            "feature": split.features,
            "impurity": impurity,
            "permutation_mean": permuted.importances_mean,
            "permutation_std": permuted.importances_std,
        }
    )


def table_4_2(results: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Model": NAMES[name],
                "Train Accuracy": round(r["train_accuracy"], 3),
                "Test Accuracy": round(r["test_accuracy"], 3),
                "Test macro-F1": round(r["test_macro_f1"], 3),
                "Fit seconds": round(r["fit_seconds"], 3),
            }
            for name, r in results.items()
        ]
    )


def save_model(model, run_dir: Path, name: str) -> None:
    """models/<name>.joblib: what `faultllm predict` loads (joblib: load only files you trust)."""
    import joblib

    (run_dir / "models").mkdir(exist_ok=True)
    with atomic_path(run_dir / "models" / f"{name}.joblib") as temporary:
        joblib.dump(model, temporary)


def load_model(run_dir: Path, name: str):
    import joblib

    path = Path(run_dir) / "models" / f"{name}.joblib"
    if not path.exists():
        saved = sorted(p.stem for p in (Path(run_dir) / "models").glob("*.joblib"))
        raise FaultLLMError(f"predict.model={name!r}: {run_dir} saved the models {', '.join(saved)}")
    return joblib.load(path)
