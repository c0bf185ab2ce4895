"""Diagnose new rows with a finished run: a fine-tuned LLM (train run) or a saved classical model
(baselines run). Labels are optional; where present, the usual metrics come with the predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from faultllm.compare.baselines import NAMES, load_model
from faultllm.compare.calibration import CALIBRATION_FILE, Recalibration, forecast_of, set_scores, set_text
from faultllm.compare.metrics import classification_metrics
from faultllm.data.tables import LABEL
from faultllm.llm.evaluation import evaluate_restricted
from faultllm.llm.scoring import answer_space
from faultllm.llm.trained import TrainedLLM
from faultllm.run.directory import read_json
from faultllm.run.kind import RunKind
from faultllm.run.records import BaselinesMetrics
from faultllm.run.saved import SavedRun
from faultllm.runtime.errors import FaultLLMError


def check_predictable(run: SavedRun) -> None:
    """A run to predict with: a train run (or an HPO refit) with its model, or a baselines run with saved models."""
    if run.kind.fine_tunes and run.has_llm:
        return
    if run.kind is RunKind.BASELINES and (run.run_dir / "models").is_dir():
        return
    raise FaultLLMError(
        f"run_dir={run.run_dir}: neither a train run (adapter/) nor a baselines run with saved models (models/)"
    )


def predict_llm(run: SavedRun, rows: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Restricted-label predictions and per-label probabilities of the run's fine-tuned model."""
    llm = TrainedLLM.from_run(run)
    placeholder = rows if LABEL in rows else rows.assign(**{LABEL: run.split.labels[0]})  # scoring needs a label
    prompts = llm.serializer.render(placeholder)
    _, predictions = evaluate_restricted(
        llm.model, llm.tokenizer, prompts, answer_space(llm.tokenizer, prompts), batch_size
    )
    return predictions.drop(columns=["row", "label", "loss"])


def chosen_baseline(run: SavedRun, name: str | None) -> str:
    """`predict.model`, or by default the saved baseline most accurate on the run's own test split."""
    if name is None:
        metrics = BaselinesMetrics.read(run.run_dir / "metrics.json").models
        name = max(metrics, key=lambda key: metrics[key].test_accuracy)
    return name


def predict_baseline(run: SavedRun, rows: pd.DataFrame, name: str) -> tuple[str, pd.DataFrame]:
    """(model name, predictions and per-label probabilities) of one saved baseline."""
    model = load_model(run.run_dir, name)
    features = rows[run.split.features].to_numpy(np.float64)
    probabilities = model.predict_proba(features)
    label_of = {str(label): label for label in run.split.labels}
    predictions = pd.DataFrame({"predicted": [label_of[str(p)] for p in model.predict(features)]})
    for i, label in enumerate(model.classes_):
        predictions[f"prob_{label}"] = probabilities[:, i]
    return NAMES.get(name, name), predictions


def prediction_table(rows: pd.DataFrame, features: list[str], predictions: pd.DataFrame) -> pd.DataFrame:
    """The input's own columns that are not features (ids, timestamps, the label), the row index, then
    the predictions."""
    kept = rows[[c for c in rows.columns if c not in features]].reset_index(drop=True)
    return pd.concat([pd.DataFrame({"row": np.arange(len(rows))}), kept, predictions.reset_index(drop=True)], axis=1)


def metrics_if_labelled(rows: pd.DataFrame, predicted: pd.Series, labels: list) -> dict | None:
    return classification_metrics(rows[LABEL].tolist(), predicted.tolist(), labels) if LABEL in rows else None


def recalibrated(run: SavedRun, key: str, rows: pd.DataFrame, predictions: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """With the model's temperature and threshold in the run's calibration.json (`calibrate.holdout`): the
    temperature-scaled probabilities and each row's prediction set (`prediction_set`, e.g. `one of {4, 11}`),
    and what was applied (with the sets' empirical coverage and mean size when the rows carry labels);
    the predictions as they are, and {}, otherwise."""
    path = run.run_dir / CALIBRATION_FILE
    saved = read_json(path).get(key) if path.exists() else None
    if saved is None:
        return predictions, {}
    repair, labels = Recalibration.from_json(saved), run.split.labels
    truth = rows[LABEL].to_numpy() if LABEL in rows else predictions["predicted"].to_numpy()  # a placeholder
    forecast = forecast_of(predictions.assign(label=truth), labels)
    scaled, sets = repair.apply(forecast.probabilities, forecast.answered)
    columns = {f"prob_{label}": scaled[:, i] for i, label in enumerate(labels)}
    texts = [set_text(labels, inside) for inside in sets]
    applied = repair.to_json() | ({"sets": set_scores(sets, forecast.truth)} if LABEL in rows else {})
    return predictions.assign(**columns, prediction_set=texts), applied
