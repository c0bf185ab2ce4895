"""Can the answers be trusted? ECE, Brier, NLL and risk-coverage by hand, and in `report` beside fine-tuned,
few-shot and baseline runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from faultllm.calibration import (
    Forecast,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    risk_coverage,
    selective_scores,
)
from faultllm.config import load_config
from tests.conftest import easy_overrides

# p(label 0), p(label 1), true label: answered (argmax) 0, 0, 1, 1, 1, 1 with confidence .95 .85 .7 .6 .55 .8
TABLE = [(0.95, 0.05, 0), (0.85, 0.15, 1), (0.30, 0.70, 1), (0.40, 0.60, 0), (0.45, 0.55, 1), (0.20, 0.80, 1)]


def _forecast() -> Forecast:
    probabilities = np.array([row[:2] for row in TABLE])
    return Forecast(probabilities, np.array([row[2] for row in TABLE]), probabilities.argmax(axis=1))


def test_ece_brier_and_nll_equal_the_hand_computed_values():
    forecast = _forecast()
    # confidence ascending: .55 (right) .60 (wrong) | .70 (right) .80 (right) | .85 (wrong) .95 (right)
    by_hand = (abs(0.5 - 0.575) + abs(1.0 - 0.75) + abs(0.5 - 0.90)) / 3  # three equal-mass bins of two rows
    assert expected_calibration_error(forecast.confidence, forecast.correct, bins=3) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.2416667, abs=1e-7)
    # the default 15 bins over 6 rows: a bin per row, |correct - confidence| averaged
    per_row = (0.05 + 0.85 + 0.30 + 0.60 + 0.45 + 0.20) / 6
    assert expected_calibration_error(forecast.confidence, forecast.correct) == pytest.approx(per_row)
    brier = (0.005 + 1.445 + 0.18 + 0.72 + 0.405 + 0.08) / 6  # sum over both labels of (p - 1[true])^2
    assert brier_score(forecast) == pytest.approx(brier) and brier == pytest.approx(0.4725)
    nll = -(math.log(0.95) + math.log(0.15) + math.log(0.70) + math.log(0.40) + math.log(0.55) + math.log(0.80)) / 6
    assert negative_log_likelihood(forecast) == pytest.approx(nll) and nll == pytest.approx(0.673727, abs=1e-6)
    certain = Forecast(np.array([[1.0, 0.0]]), np.array([1]), np.array([0]))
    assert negative_log_likelihood(certain) == pytest.approx(-math.log(1e-12))  # clipped, not infinite


def test_the_risk_coverage_area_equals_the_hand_computed_value():
    forecast = _forecast()
    # most confident first: .95 right, .85 wrong, .80 right, .70 right, .60 wrong, .55 right
    accuracy = [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 4 / 6]
    curve = risk_coverage(forecast.confidence, forecast.correct)
    assert curve["accuracy"].tolist() == pytest.approx(accuracy)
    assert curve["coverage"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    numbers = selective_scores(forecast.confidence, forecast.correct)
    assert numbers["area"] == pytest.approx(sum(accuracy) / 6) and numbers["area"] == pytest.approx(0.697222, abs=1e-6)
    assert numbers["aurc"] == pytest.approx(1 - sum(accuracy) / 6)
    assert (numbers["accuracy_at_50"], numbers["accuracy_at_80"], numbers["accuracy_at_100"]) == pytest.approx(
        (2 / 3, 3 / 5, 4 / 6)  # 50%: 3 of 6 rows answered; 80%: ceil(4.8) = 5 rows
    )
    # rows of equal confidence are answered together: the curve takes their mean inside the tie
    tied = risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([False, True, True]))
    assert tied["accuracy"].tolist() == pytest.approx([0.5, 0.5, 2 / 3])
    assert risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]))["accuracy"].tolist() == pytest.approx(
        [0.5, 0.5, 2 / 3]
    )


@pytest.mark.slow
def test_report_gives_fine_tuned_few_shot_and_baselines_their_own_calibrated_rows(
    trained_run, tiny_cache, easy_csv, tmp_path
):
    from faultllm.jobs.baselines import run as baselines
    from faultllm.jobs.report import run as report
    from faultllm.jobs.train import run as train

    fine_tuned, _ = trained_run
    overrides = easy_overrides(tiny_cache, easy_csv)
    train(load_config("train", [*overrides, "trainer.epochs=0", "prompt.shots=4"]), tmp_path / "four_shot")
    data = [o for o in overrides if o.startswith(("data", "cache_dir"))]
    baselines(
        load_config("baselines", [*data, "baselines.models=[lr,xgb]", "baselines.importances_for=[]", "progress=false"]),
        tmp_path / "baselines",
    )
    dirs = [str(fine_tuned), str(tmp_path / "four_shot"), str(tmp_path / "baselines")]
    summary = report(load_config("report", [f"run_dirs={dirs}"]), tmp_path / "report")
    llms = {"LLM (tiny, shots=0, epochs=8)", "LLM (tiny, shots=4, epochs=0)"}
    assert llms <= set(summary["Model"]) and "Logistic Regression" in set(summary["Model"])
    calibration = pd.read_csv(tmp_path / "report" / "calibration.csv")
    models = llms | {"Logistic Regression"} | ({"XGBoost"} if "XGBoost" in set(summary["Model"]) else set())
    assert set(calibration["Model"]) == models and len(calibration) == len(models)
    for key in ("ece", "brier", "nll"):
        assert calibration[f"{key}_mean"].notna().all() and (calibration[f"{key}_mean"] >= 0).all()
    assert (calibration["ece_mean"] <= 1).all() and (calibration["brier_mean"] <= 2).all()
    shown = (tmp_path / "report" / "calibration.md").read_text()
    assert "| Model | Train rows | Runs | ECE (15 bins) | Brier | NLL |" in shown
    selective = pd.read_csv(tmp_path / "report" / "selective.csv")
    assert set(selective["Model"]) == models and (selective["Rows"] == 80).all()
    assert ((selective["area"] >= 0) & (selective["area"] <= 1)).all()
    for name in ("calibration.png", "selective.png", "comparison.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    tests = pd.read_csv(tmp_path / "report" / "paired_tests.csv")
    assert {"LLM (tiny, shots=0, epochs=8)"} == set(tests.loc[tests["B"].isin(llms), "A"])  # fine-tuned vs few-shot
