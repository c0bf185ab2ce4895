"""`faultllm predict` on new rows, unlabelled or labelled, with a train run and with a baselines run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.jobs.baselines import run as run_baselines
from faultllm.jobs.predict import run as predict
from faultllm.run.kind import RunKind
from faultllm.run.saved import open_run
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_frame


@pytest.fixture()
def new_rows(tmp_path):
    """Unlabelled rows with an id column, and the same rows labelled."""
    frame = easy_frame(rows=30, seed=9)
    unlabelled = frame.drop(columns="label").assign(sensor_id=[f"s{i}" for i in range(30)])
    unlabelled.to_csv(tmp_path / "new.csv", index=False)
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    return tmp_path / "new.csv", tmp_path / "labelled.csv", frame


def _check(table: pd.DataFrame, n: int, labels: list) -> None:
    probabilities = table[[f"prob_{label}" for label in labels]].to_numpy()
    assert len(table) == n and np.allclose(probabilities.sum(axis=1), 1.0)
    assert set(table["predicted"]) <= set(labels)


@pytest.mark.slow
def test_predict_with_a_trained_llm(trained_run, new_rows, tmp_path):
    run_dir, _ = trained_run
    unlabelled, labelled, _ = new_rows
    result = predict(load_config("predict", [f"run_dir={run_dir}", f"input={unlabelled}"]), tmp_path / "p")
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    _check(table, 30, [0, 1])
    assert list(table["sensor_id"]) == [f"s{i}" for i in range(30)] and result["metrics"] is None
    scored = predict(load_config("predict", [f"run_dir={run_dir}", f"input={labelled}"]), tmp_path / "q")
    assert scored["metrics"]["n"] == 30 and (tmp_path / "q" / "metrics.json").exists()
    assert (scored["predictions"]["predicted"] == result["predictions"]["predicted"]).all()


def test_predict_with_saved_baselines(compose_cfg, easy_csv, new_rows, tmp_path):
    unlabelled, labelled, frame = new_rows
    data = ["data=csv", f"data.path={easy_csv}", "data.train_size=160", "data.test_size=80", "data.normalize=false"]
    run_baselines(compose_cfg("baselines", [*data, "baselines.models=[lr,svm]", "baselines.importances_for=[]"]),
                  tmp_path / "b")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "b" / "models").iterdir()) == ["lr.joblib", "svm.joblib"]
    assert open_run(tmp_path / "b").kind is RunKind.BASELINES
    models = json.loads((tmp_path / "b" / "metrics.json").read_text())["models"]
    best = max(models.items(), key=lambda m: m[1]["test_accuracy"])
    result = predict(load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={unlabelled}"]), tmp_path / "p")
    _check(pd.read_csv(tmp_path / "p" / "predictions.csv"), 30, [0, 1])
    assert result["model"] == {"lr": "Logistic Regression", "svm": "Support Vector Machine"}[best[0]]
    svm = predict(load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={labelled}", "predict.model=svm"]),
                  tmp_path / "q")  # fmt: skip
    assert svm["metrics"]["accuracy"] > 0.8 and list(svm["predictions"]["label"]) == list(frame["label"])
    with pytest.raises(FaultLLMError, match=r"predict.model='rf': .* saved the models lr, svm"):
        predict(load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={unlabelled}", "predict.model=rf"]),
                tmp_path / "r")  # fmt: skip
    frame.drop(columns="a").to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(FaultLLMError, match="missing column\\(s\\) a; expected the run's features"):
        predict(
            load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={tmp_path / 'wrong.csv'}"]), tmp_path / "s"
        )


def test_rows_already_scaled_are_refused_or_taken_as_they_are(compose_cfg, tmp_path):
    """A run's own test.parquet holds scaled rows: scaling them again made k-NN score 0.000 on rows it gets 0.9 on."""
    from faultllm.data.splits import make_split

    cfg = compose_cfg("baselines", ["baselines.models=[knn]", "baselines.importances_for=[]"])  # the bundled TEP
    run_baselines(cfg, tmp_path / "b")
    accuracy = json.loads((tmp_path / "b" / "metrics.json").read_text())["models"]["knn"]["test_accuracy"]
    own = [f"run_dir={tmp_path / 'b'}", f"input={tmp_path / 'b' / 'test.parquet'}"]
    with pytest.raises(FaultLLMError, match=r"input=.*test.parquet: the rows look already scaled into the run's "
                       r"\[0, 1\] range \(100% of .*\); give raw rows .*, or predict.input_scaled=true"):  # fmt: skip
        predict(load_config("predict", own), tmp_path / "p")
    taken = predict(load_config("predict", [*own, "predict.input_scaled=true"]), tmp_path / "q")
    assert taken["metrics"]["accuracy"] == pytest.approx(accuracy)
    make_split(cfg.data, cfg.seed).test.to_csv(tmp_path / "raw.csv", index=False)  # the same rows, raw
    raw = predict(
        load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={tmp_path / 'raw.csv'}"]), tmp_path / "r"
    )
    assert raw["metrics"]["accuracy"] == pytest.approx(accuracy)


def test_a_baselines_run_with_held_out_rows_gives_predict_a_temperature_and_prediction_sets(compose_cfg, tmp_path):
    """calibrate.holdout: each model's temperature and conformal threshold come from training rows it was not
    fitted on; the answers stay, predict applies both, and its sets on the run's own test rows are exactly the
    sets calibration.json measured there."""
    from faultllm.data.splits import make_split

    models = ["baselines.models=[knn,lr]", "baselines.importances_for=[]"]
    cfg = compose_cfg("baselines", [*models, "calibrate.holdout=0.25", "calibrate.coverage=0.8"])  # the bundled TEP
    run_baselines(cfg, tmp_path / "b")
    split = json.loads((tmp_path / "b" / "split.json").read_text())
    plain = compose_cfg("baselines", models)
    assert sum(split["rows"]["train"].values()) < len(make_split(plain.data, plain.seed).train)  # rows held out
    saved = json.loads((tmp_path / "b" / "calibration.json").read_text())
    assert set(saved) == {"knn", "lr"}
    for fitted in saved.values():
        assert fitted["coverage"] == 0.8 and fitted["rows"] > 0 and 0.05 <= fitted["temperature"] <= 20
        test, held = fitted["test"], fitted["held_out"]
        assert test["after"]["accuracy"] == test["before"]["accuracy"]  # temperature keeps every answer
        assert held["after"]["nll"] <= held["before"]["nll"] + 1e-9  # T = 1 was a candidate
        assert held["sets"]["coverage"] >= 0.8  # in-sample: at least ceil((n+1) 0.8) of n rows
    make_split(cfg.data, cfg.seed).test.to_csv(tmp_path / "raw.csv", index=False)
    result = predict(load_config("predict", [f"run_dir={tmp_path / 'b'}", f"input={tmp_path / 'raw.csv'}",
                                             "predict.model=knn"]), tmp_path / "p")  # fmt: skip
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert table["prediction_set"].notna().all() and table["prediction_set"].str.startswith("one of {").any()
    assert result["calibration"]["sets"] == pytest.approx(saved["knn"]["test"]["sets"])
    _check(table, len(table), sorted(int(label) for label in split["labels"]))
