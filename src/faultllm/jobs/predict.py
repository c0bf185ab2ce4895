"""`faultllm predict run_dir=DIR input=TABLE` (configs/predict.yaml): diagnose new rows with a train run's
fine-tuned LLM or a baselines run's saved model. Writes predictions.csv (the input's non-feature
columns, the row index, the predicted label, per-class probabilities) and, when the rows carry
labels, metrics.json."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare.calibration import LLM
from faultllm.compare.tables import print_summary
from faultllm.config.jobs import PredictJob
from faultllm.llm.predict import (
    chosen_baseline,
    metrics_if_labelled,
    predict_baseline,
    predict_llm,
    prediction_table,
    recalibrated,
)
from faultllm.preflight import predict_inputs
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind
from faultllm.run.records import PredictMetrics
from faultllm.runtime.files import write_csv


def run(cfg: PredictJob, out_dir: Path) -> dict:
    saved, rows = predict_inputs(cfg)
    if saved.kind.fine_tunes:
        key, model = LLM, f"LLM ({Path(str(saved.cfg.model.path or 'tiny')).name})"
        predictions = predict_llm(saved, rows, cfg.eval.batch_size)
    else:
        key = chosen_baseline(saved, cfg.predict.model)
        model, predictions = predict_baseline(saved, rows, key)
    predictions, applied = recalibrated(saved, key, rows, predictions)
    out_dir = start_run(cfg, out_dir, RunKind.PREDICT)
    table = prediction_table(rows, saved.split.features, predictions)
    write_csv(table, out_dir / "predictions.csv")
    metrics = metrics_if_labelled(rows, predictions["predicted"], saved.split.labels)
    summary = {"model": model, "rows": len(table), "input": str(cfg.input)}
    if metrics:
        PredictMetrics.from_json(metrics | {"model": model, "input": str(cfg.input)}).write(out_dir / "metrics.json")
        summary["accuracy / macro-F1"] = f"{metrics['accuracy']:.3f} / {metrics['macro_f1']:.3f}"
    summary |= _sets_summary(applied)
    print_summary(f"predicted: {saved.run_dir}", summary | {"written to": str(out_dir / "predictions.csv")})
    return {"model": model, "predictions": table, "metrics": metrics, "calibration": applied}


def _sets_summary(applied: dict) -> dict:
    """What the run's calibration.json changed: the temperature, and the sets' coverage (target, and measured)."""
    if not applied:
        return {}
    lines = {
        "temperature": f"{applied['temperature']:.3g} (fitted on {applied['rows']} held-out training rows)",
        "prediction sets": f"contain the true label with probability >= {applied['coverage']:.0%} (split conformal)",
    }
    if "sets" in applied:
        measured = applied["sets"]
        lines["set coverage / mean size"] = f"{measured['coverage']:.3f} / {measured['mean_size']:.2f} on these rows"
    return lines
