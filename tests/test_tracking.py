"""trainer.report_to: the per-epoch restricted metrics reach TensorBoard and MLflow through the Trainer."""

from __future__ import annotations

import json

import pytest

from faultllm.config.choices import trackers
from faultllm.config.load import load_config
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_overrides

pytestmark = pytest.mark.slow  # trains the tiny model


def test_tensorboard_and_mlflow_get_the_per_epoch_test_accuracy(tiny_cache, easy_csv, tmp_path, monkeypatch):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from faultllm.jobs.train import run as train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store (MLflow 3 prefers a database)
    overrides = [
        *easy_overrides(tiny_cache, easy_csv), "trainer.epochs=2", "data.train_size=40", "data.test_size=20",
        "trainer.report_to=[tensorboard,mlflow]",
    ]  # fmt: skip
    train(load_config("train", overrides), tmp_path / "run")
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    expected = [row["test_accuracy"] for row in epochs]
    assert len(expected) == 2

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [event.value for event in events.Scalars("eval/test_accuracy")] == pytest.approx(expected)

    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval_test_accuracy")
    assert [metric.value for metric in history] == pytest.approx(expected)


def test_report_to_accepts_none_one_or_a_list():
    assert trackers("none") == () and trackers("tensorboard") == ("tensorboard",)
    assert trackers(["tensorboard", "mlflow"]) == ("tensorboard", "mlflow")
    with pytest.raises(FaultLLMError, match=r"trainer.report_to: unknown 'tensorbord'.*did you mean tensorboard"):
        load_config("train", ["model=tiny", "trainer.report_to=[tensorbord]"])


def test_hpo_logs_each_trial_as_one_mlflow_run(tiny_cache, easy_csv, tmp_path, monkeypatch):
    import mlflow

    from faultllm.jobs.hpo import run as search
    from tests.test_hpo import hpo_overrides

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    search(load_config("hpo", [*hpo_overrides(tiny_cache, easy_csv, 2), "trainer.report_to=mlflow", "hpo.refit=false"]),
           tmp_path / "hpo")  # fmt: skip
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    trials = sorted((r for r in runs if "-trial-" in r.info.run_name), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in trials] == ["faultllm-trial-0", "faultllm-trial-1"]
    assert all("learning_rate" in r.data.params for r in trials)
    assert all("value" in r.data.metrics for r in trials if r.data.tags["state"] == "COMPLETE")
    assert len(runs) == 2  # the folds' own training is not tracked
