from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.data.splits import cv_folds, make_split
from faultllm.jobs.baselines import run as run_baselines
from faultllm.jobs.report import run as report_job
from faultllm.runtime.errors import FaultLLMError

FAST = ["baselines.models=[rf,lr,knn]", "baselines.importances_for=[rf]", "baselines.permutation_repeats=2"]


def test_same_seed_same_numbers_and_the_llm_sees_the_same_rows(compose_cfg, tmp_path):
    cfg = compose_cfg("baselines", FAST)
    first = run_baselines(cfg, tmp_path / "a")
    again = run_baselines(cfg, tmp_path / "b")
    assert first == {
        k: v | {"fit_seconds": first[k]["fit_seconds"], "predict_seconds": first[k]["predict_seconds"]}
        for k, v in again.items()
    }
    assert set(first) == {"rf", "lr", "knn"} and first["rf"]["test_accuracy"] > 0.6
    assert {"train_accuracy", "test_accuracy", "test_macro_f1", "fit_seconds"} <= set(first["lr"])
    # the LLM pipeline with the same data config and seed makes the very same split
    llm_split = make_split(compose_cfg("train", ["model=tiny"]).data, cfg.seed)
    from faultllm.data.splits import scale_split

    scaled, _ = scale_split(llm_split, True, [0, 1])
    assert json.loads((tmp_path / "a" / "split.json").read_text())["split_fingerprint"] == scaled.fingerprint()
    table = pd.read_csv(tmp_path / "a" / "table_4_2.csv")
    assert list(table.columns[:3]) == ["Model", "Train Accuracy", "Test Accuracy"]
    assert (tmp_path / "a" / "table_4_2.md").read_text().startswith("| Model | Train Accuracy | Test Accuracy |")
    importances = pd.read_csv(tmp_path / "a" / "feature_importances.csv")
    assert set(importances["model"]) == {"rf"} and len(importances) == 52


def test_tuned_mode_reports_cv_accuracy(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "baselines",
        [
            "baselines.models=[lr,knn]",
            "baselines.importances_for=[]",
            "baselines.tune=true",
            "baselines.n_trials=3",
            "baselines.folds=3",
        ],
    )
    results = run_baselines(cfg, tmp_path)
    assert 0 < results["knn"]["cv_accuracy"] <= 1 and "n_neighbors" in results["knn"]["params"]


def test_folds_are_grouped_by_run_and_stratified(compose_cfg):
    split = make_split(compose_cfg("prepare").data, 0)
    for fit_rows, val_rows in cv_folds(split.train, 5, 0):
        assert not set(split.train["group"].iloc[fit_rows]) & set(split.train["group"].iloc[val_rows])
        assert split.train["label"].iloc[val_rows].nunique() == 4
    with pytest.raises(FaultLLMError, match="the rarest label has 100"):
        cv_folds(split.train, 101, 0)


def test_bad_model_name_and_too_small_split(compose_cfg, tmp_path):
    with pytest.raises(FaultLLMError, match=r"baselines\.models: unknown 'xgboost'"):
        compose_cfg("baselines", ["baselines.models=[rf,xgboost]"])
    with pytest.raises(FaultLLMError, match="knn: n_neighbors=5 needs at least 5 training rows; the split has 4"):
        run_baselines(
            compose_cfg("baselines", ["data.train_size=4", "data.test_size=4", "baselines.models=[knn]"]), tmp_path
        )


@pytest.mark.slow  # three baselines runs and a report in a fresh interpreter
def test_report_puts_runs_on_one_split_side_by_side_and_pools_seeds(compose_cfg, tmp_path):
    run_baselines(compose_cfg("baselines", ["baselines.models=[lr]", "baselines.importances_for=[]"]), tmp_path / "a")
    run_baselines(compose_cfg("baselines", ["baselines.models=[knn]", "baselines.importances_for=[]"]), tmp_path / "b")
    report = lambda dirs, out: report_job(load_config("report", [f"run_dirs={[str(d) for d in dirs]}"]), out)  # noqa: E731
    table = report([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    assert list(table["Model"]) == ["Logistic Regression", "K-Nearest Neighbors"] and set(table["Runs"]) == {1}
    assert (tmp_path / "report" / "comparison.md").exists() and (tmp_path / "report" / "comparison.png").exists()
    run_baselines(
        compose_cfg("baselines", ["seed=7", "baselines.models=[lr]", "baselines.importances_for=[]"]), tmp_path / "c"
    )
    cli = subprocess.run(
        [sys.executable, "-m", "faultllm.cli", "report", str(tmp_path / "a"), str(tmp_path / "c"),
         "--out", str(tmp_path / "r3")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    pooled = pd.read_csv(tmp_path / "r3" / "comparison.csv")
    assert list(pooled["Runs"]) == [2] and "comparison over 2 seeds" in cli.stdout
    assert "][faultllm.runtime.threads][INFO] threads: " in (tmp_path / "r3" / "faultllm.log").read_text()  # the budget


BOOSTING = ["baselines.models=[rf,xgb,lgbm,catboost]", "baselines.importances_for=[xgb,lgbm,catboost]",
            "baselines.permutation_repeats=2", "data.train_size=80", "data.test_size=40"]  # fmt: skip


@pytest.mark.slow  # four libraries, twice
def test_the_boosting_libraries_on_the_bundled_data_identical_on_rerun(compose_cfg, tmp_path):
    """`faultllm baselines baselines.models=[rf,xgb,lgbm,catboost]` with the `boosting` extra installed."""
    from faultllm.compare.baselines import load_model, xy

    for package in ("xgboost", "lightgbm", "catboost"):
        pytest.importorskip(package)
    cfg = compose_cfg("baselines", BOOSTING)
    first, again = run_baselines(cfg, tmp_path / "a"), run_baselines(cfg, tmp_path / "b")
    timeless = lambda r: {k: {m: v for m, v in r[k].items() if not m.endswith("_seconds")} for k in r}  # noqa: E731
    assert timeless(first) == timeless(again) and set(first) == {"rf", "xgb", "lgbm", "catboost"}
    predictions = pd.read_csv(tmp_path / "a" / "predictions.csv")
    pd.testing.assert_frame_equal(predictions, pd.read_csv(tmp_path / "b" / "predictions.csv"))
    assert all(first[name]["test_accuracy"] > 0.5 for name in first)  # chance is 0.25
    for name in first:
        probabilities = predictions[[f"{name}_prob_{label}" for label in (0, 1, 4, 5)]]
        assert probabilities.sum(axis=1).to_numpy() == pytest.approx(1.0)
        assert (probabilities.to_numpy().argmax(axis=1) == predictions[name].map({0: 0, 1: 1, 4: 2, 5: 3})).all()
    importances = pd.read_csv(tmp_path / "a" / "feature_importances.csv")
    assert set(importances["model"]) == {"xgb", "lgbm", "catboost"} and importances["impurity"].notna().all()
    assert {"XGBoost", "LightGBM", "CatBoost"} <= set(pd.read_csv(tmp_path / "a" / "table_4_2.csv")["Model"])
    test = pd.read_parquet(tmp_path / "a" / "test.parquet")
    features = [c for c in test.columns if c != "label"]
    saved = load_model(tmp_path / "a", "xgb")  # what `faultllm predict` loads
    assert saved.predict(xy(test, features)[0]).tolist() == predictions["xgb"].astype(str).tolist()


def test_a_missing_boosting_library_is_a_one_line_notice_and_the_others_run(compose_cfg, tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xgboost" else real(name, *a))
    cfg = compose_cfg("baselines", ["baselines.models=[lr,xgb]", "baselines.importances_for=[]"])
    with caplog.at_level(logging.WARNING, logger="faultllm"):
        results = run_baselines(cfg, tmp_path / "a")
    assert set(results) == {"lr"}
    (notice,) = [r.getMessage() for r in caplog.records if "xgb" in r.getMessage()]
    assert notice == "baselines: xgb skipped: xgboost is not installed (pip install 'faultllm[boosting]')"
    with pytest.raises(FaultLLMError, match=r"baselines.models=\['xgb'\]: none of their libraries is installed"):
        run_baselines(compose_cfg("baselines", ["baselines.models=[xgb]"]), tmp_path / "b")
