"""Can the answers be trusted? ECE, Brier, NLL and risk-coverage by hand, and in `report` beside fine-tuned,
few-shot and baseline runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faultllm.calibration import (
    Forecast,
    brier_score,
    calibrated_ece,
    expected_calibration_error,
    negative_log_likelihood,
    reliability,
    risk_coverage,
    selective_scores,
    zero_probability_rows,
)
from faultllm.comparison import ModelRun, calibration_summary, selective_summary, zero_probability_table
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



def test_a_true_label_given_probability_0_makes_the_nll_infinite_and_says_where():
    """No silent clipping (it gave such a row 27.6 nats, as if 1e-12 had been said)."""
    certain = Forecast(np.array([[0.5, 0.5], [1.0, 0.0], [0.3, 0.7]]), np.array([0, 1, 1]), np.array([0, 0, 1]))
    assert negative_log_likelihood(certain) == math.inf
    assert zero_probability_rows(certain).tolist() == [1]
    run = _run(certain, seed=7)
    assert zero_probability_table([run]).to_dict("records") == [
        {"Model": "M", "Train rows": 40, "Seed": 7, "Run": str(run.run_dir), "Row": 1}
    ]
    assert calibration_summary([run])["zero_p_true"].tolist() == [1]


def _run(forecast: Forecast, seed: int, model: str = "M") -> ModelRun:
    accuracy = float(forecast.correct.mean())
    return ModelRun(model, "baseline", Path(f"run{seed}"), seed, train_rows=40, test_rows=len(forecast.truth),
                    fingerprint=str(seed), train_accuracy=1.0, test_accuracy=accuracy, test_macro_f1=accuracy,
                    seconds=None, correct=forecast.correct, forecast=forecast)  # fmt: skip


def test_tied_confidences_are_binned_the_same_whatever_the_row_order():
    """Four rows at 0.7 cut by a bin edge: two right, two wrong; the first bin's accuracy was 1 or 0 by row order."""
    confidence = np.array([0.6, 0.7, 0.7, 0.7, 0.7, 0.9])
    orders = ([True, True, True, False, False, True], [True, False, False, True, True, True])
    tables = [reliability(confidence, np.array(correct), bins=2) for correct in orders]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert tables[0]["accuracy"].tolist() == pytest.approx([(1 + 0.5 + 0.5) / 3, (0.5 + 0.5 + 1) / 3])
    eces = {expected_calibration_error(confidence, np.array(correct), bins=2) for correct in orders}
    assert len(eces) == 1


def test_a_calibrated_models_ece_at_that_size_is_the_floor_beside_the_pooled_ece():
    """One bin of n rows at confidence 0.5: E|Binomial(n, 1/2) - n/2| / n, about sqrt(1 / (2 pi n))."""
    for rows in (100, 400):
        expected = math.sqrt(1 / (2 * math.pi * rows))
        assert calibrated_ece(np.full(rows, 0.5), bins=1) == pytest.approx(expected, rel=0.08)
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1, 2000)
    calibrated = Forecast(np.c_[confidence, 1 - confidence], np.where(rng.uniform(size=2000) < confidence, 0, 1),
                          np.zeros(2000, int))  # fmt: skip
    runs = [
        _run(Forecast(calibrated.probabilities[part], calibrated.truth[part], calibrated.answered[part]), seed)
        for seed, part in enumerate(np.array_split(np.arange(2000), 4))
    ]
    summary = calibration_summary(runs).iloc[0]
    assert summary["Rows"] == 2000 and summary["Runs"] == 4 and summary["ece_sd"] > 0
    assert summary["ece_pooled"] == pytest.approx(expected_calibration_error(calibrated.confidence, calibrated.correct))
    assert summary["ece_pooled"] < 3 * summary["ece_calibrated"]  # a calibrated model is within its floor's reach
    assert summary["ece_mean"] > summary["ece_pooled"]  # 500 rows a seed: the per-seed mean is biased upward


def test_aurc_and_accuracy_at_coverage_come_with_their_spread_over_seeds():
    rng = np.random.default_rng(1)
    runs = []
    for seed in range(3):
        confidence = rng.uniform(0.5, 1, 50 + 10 * seed)
        correct = rng.uniform(size=len(confidence)) < confidence
        runs.append(_run(Forecast(np.c_[confidence, 1 - confidence], np.where(correct, 0, 1), np.zeros(len(confidence), int)), seed))
    table, curves = selective_summary(runs)
    per_seed = pd.DataFrame([selective_scores(r.forecast.confidence, r.forecast.correct) for r in runs])
    row = table.iloc[0]
    assert row["Rows"] == 50 + 60 + 70
    for key in ("aurc", "area", "accuracy_at_50", "accuracy_at_80", "accuracy_at_100"):
        assert (row[f"{key}_mean"], row[f"{key}_sd"]) == pytest.approx((per_seed[key].mean(), per_seed[key].std()))
    curve = curves[("M", 40)]
    assert len(curve) == 100 and curve["coverage"].iloc[-1] == 1.0
    assert (curve["accuracy_low"] <= curve["accuracy"]).all() and (curve["accuracy"] <= curve["accuracy_high"]).all()
    assert curve["accuracy"].iloc[-1] == pytest.approx(per_seed["accuracy_at_100"].mean())


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
    for key in ("ece", "brier", "nll", "ece_pooled", "ece_calibrated"):
        key = key if key.startswith("ece_") else f"{key}_mean"
        assert calibration[key].notna().all() and (calibration[key] >= 0).all()
    assert (calibration["ece_mean"] <= 1).all() and (calibration["brier_mean"] <= 2).all()
    shown = (tmp_path / "report" / "calibration.md").read_text()
    assert "| Model | Train rows | Runs | Rows | ECE pooled | ECE if calibrated | ECE per seed | Brier | NLL |" in shown
    selective = pd.read_csv(tmp_path / "report" / "selective.csv")
    assert set(selective["Model"]) == models and (selective["Rows"] == 80).all()
    assert ((selective["area_mean"] >= 0) & (selective["area_mean"] <= 1)).all()
    for name in ("calibration.png", "selective.png", "comparison.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    tests = pd.read_csv(tmp_path / "report" / "within_split_tests.csv")  # one seed: within-split evidence only
    assert {"LLM (tiny, shots=0, epochs=8)"} == set(tests.loc[tests["B"].isin(llms), "A"])  # fine-tuned vs few-shot
