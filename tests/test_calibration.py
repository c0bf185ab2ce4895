"""Can the answers be trusted? ECE, Brier, NLL and risk-coverage by hand, and in `report` beside fine-tuned,
few-shot and baseline runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultllm.compare.calibration import (
    Forecast,
    Recalibration,
    brier_score,
    calibrated_ece,
    conformal_threshold,
    expected_calibration_error,
    negative_log_likelihood,
    prediction_sets,
    reliability,
    risk_coverage,
    selective_scores,
    set_text,
    with_temperature,
    zero_probability_rows,
)
from faultllm.compare.pooled_calibration import calibration_summary, selective_summary, zero_probability_table
from faultllm.compare.pooling import ModelRun
from faultllm.config.load import load_config
from faultllm.run.kind import RunKind
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
    assert calibration_summary([run])[0]["zero_p_true"].tolist() == [1]


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
        assert calibrated_ece(reliability(np.full(rows, 0.5), np.zeros(rows, bool), bins=1)) == pytest.approx(
            expected, rel=0.08
        )
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1, 2000)
    calibrated = Forecast(np.c_[confidence, 1 - confidence], np.where(rng.uniform(size=2000) < confidence, 0, 1),
                          np.zeros(2000, int))  # fmt: skip
    runs = [
        _run(Forecast(calibrated.probabilities[part], calibrated.truth[part], calibrated.answered[part]), seed)
        for seed, part in enumerate(np.array_split(np.arange(2000), 4))
    ]
    table, bins = calibration_summary(runs)
    summary = table.iloc[0]
    assert summary["Rows"] == 2000 and summary["Runs"] == 4 and summary["ece_sd"] > 0
    assert summary["ece_pooled"] == pytest.approx(expected_calibration_error(calibrated.confidence, calibrated.correct))
    pd.testing.assert_frame_equal(bins[("M", 40)], reliability(calibrated.confidence, calibrated.correct))
    assert summary["ece_pooled"] < 3 * summary["ece_calibrated"]  # a calibrated model is within its floor's reach
    assert summary["ece_mean"] > summary["ece_pooled"]  # 500 rows a seed: the per-seed mean is biased upward


def test_aurc_and_accuracy_at_coverage_come_with_their_spread_over_seeds():
    rng = np.random.default_rng(1)
    runs = []
    for seed in range(3):
        confidence = rng.uniform(0.5, 1, 50 + 10 * seed)
        correct = rng.uniform(size=len(confidence)) < confidence
        runs.append(
            _run(
                Forecast(np.c_[confidence, 1 - confidence], np.where(correct, 0, 1), np.zeros(len(confidence), int)),
                seed,
            )
        )
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
    assert risk_coverage(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]))[
        "accuracy"
    ].tolist() == pytest.approx([0.5, 0.5, 2 / 3])


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
        load_config(
            "baselines", [*data, "baselines.models=[lr,xgb]", "baselines.importances_for=[]", "progress=false"]
        ),
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


def _over_confident(rows: int, seed: int) -> Forecast:
    """Rows whose model is right 70% of the time but says 0.97: logits scaled 4x too sharp."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, rows)
    answered = np.where(rng.random(rows) < 0.7, truth, (truth + rng.integers(1, 4, rows)) % 4)
    logits = np.where(np.arange(4) == answered[:, None], 2.0, 0.0) + rng.normal(0, 0.3, (rows, 4))
    sharp = np.exp(4 * logits)
    probabilities = sharp / sharp.sum(axis=1, keepdims=True)
    return Forecast(probabilities, truth, probabilities.argmax(axis=1))


def test_temperature_scaling_keeps_every_answer_and_lowers_the_nll_of_an_over_confident_model():
    held_out, test = _over_confident(400, seed=0), _over_confident(400, seed=1)
    repair = Recalibration.fit(held_out, coverage=0.9)
    assert repair.temperature > 2  # the logits were 4x too sharp: it cools them
    scaled, _ = repair.apply(test.probabilities, test.answered)
    assert (scaled.argmax(axis=1) == test.probabilities.argmax(axis=1)).all()  # the same answers
    assert np.allclose(scaled.sum(axis=1), 1.0)
    numbers = repair.evaluate(test)
    assert numbers["after"]["accuracy"] == numbers["before"]["accuracy"]
    assert numbers["after"]["nll"] < numbers["before"]["nll"] - 0.2
    assert numbers["after"]["ece"] < numbers["before"]["ece"] and numbers["after"]["brier"] < numbers["before"]["brier"]
    assert numbers["sets"]["coverage"] >= 0.85 and 1 <= numbers["sets"]["mean_size"] <= 4
    assert Recalibration.from_json(repair.to_json()) == repair


def test_a_temperature_of_one_changes_nothing_and_a_zero_probability_stays_the_least_likely():
    probabilities = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    assert with_temperature(probabilities, 1.0) == pytest.approx(probabilities, abs=1e-11)
    hot = with_temperature(probabilities, 10.0)
    assert hot[0].argmin() == 2 and hot[0, 2] > 0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=60),
    st.integers(min_value=2, max_value=6),
    st.sampled_from([0.5, 0.8, 0.9, 0.95]),
    st.integers(min_value=0, max_value=2**31),
)
def test_conformal_sets_cover_held_out_rows_at_least_at_the_nominal_rate(rows, labels, coverage, seed):
    """Split conformal's guarantee, exactly: over the n+1 ways to hold one of n+1 exchangeable rows out as the new
    row (the others calibrate), the share whose true label is in its set is >= the nominal coverage, and without
    tied scores at most coverage + 1/(n+1) before the answered label is added. Any probabilities, any labels."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(labels, 0.5), rows + 1)
    truth = rng.integers(0, labels, rows + 1)
    answered = probabilities.argmax(axis=1)
    covered, covered_by_score = [], []
    for new in range(rows + 1):
        rest = np.arange(rows + 1) != new
        threshold = conformal_threshold(probabilities[rest], truth[rest], coverage)
        covered.append(prediction_sets(probabilities[[new]], threshold, answered[[new]])[0, truth[new]])
        covered_by_score.append(1 - probabilities[new, truth[new]] <= threshold)
    assert np.mean(covered) >= coverage - 1e-12
    scores = 1 - probabilities[np.arange(rows + 1), truth]
    if len(np.unique(scores)) == len(scores) and np.ceil((rows + 1) * coverage - 1e-9) <= rows:
        assert np.mean(covered_by_score) <= coverage + 1 / (rows + 1) + 1e-12


def test_too_few_held_out_rows_for_the_coverage_put_every_label_in_the_set():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    threshold = conformal_threshold(probabilities, np.array([0, 1]), coverage=0.9)  # ceil(3 * 0.9) = 3 > 2 rows
    assert threshold == float("inf")
    assert prediction_sets(probabilities, threshold, np.array([0, 1])).all()
    assert set_text([4, 11, 7], np.array([True, True, False])) == "one of {4, 11}"
    assert set_text([4, 11, 7], np.array([False, True, False])) == "11"


@pytest.mark.slow
def test_a_tiny_llm_run_with_held_out_rows_gets_a_temperature_that_keeps_its_answers(tiny_cache, easy_csv, tmp_path):
    """calibrate.holdout on a fine-tuned tiny model driven to over-confidence (a high learning rate, many epochs on
    60 rows): one temperature fitted on rows it never trained on lowers their NLL (T = 1 was a candidate), keeps
    the test accuracy, and `predict` applies it with prediction sets."""
    from faultllm.jobs.predict import run as predict
    from faultllm.jobs.train import run as train

    overrides = [*easy_overrides(tiny_cache, easy_csv), "data.train_size=80", "data.test_size=40",
                 "trainer.epochs=10", "trainer.learning_rate=1e-2", "calibrate.holdout=0.25"]  # fmt: skip
    metrics = train(load_config("train", overrides), tmp_path / "t")
    fitted = json.loads((tmp_path / "t" / "calibration.json").read_text())["llm"]
    assert fitted["rows"] == 20 and sum(metrics["split"]["rows"]["train"].values()) == 60
    held, test = fitted["held_out"], fitted["test"]
    assert held["after"]["nll"] <= held["before"]["nll"] + 1e-9 and fitted["temperature"] != 1.0
    assert test["after"]["accuracy"] == test["before"]["accuracy"] == metrics["test"]["accuracy"]
    assert held["sets"]["coverage"] >= 0.9
    rows = pd.read_parquet(tmp_path / "t" / "test.parquet")
    result = predict(load_config("predict", [f"run_dir={tmp_path / 't'}", f"input={tmp_path / 't' / 'test.parquet'}",
                                             "predict.input_scaled=true"]), tmp_path / "p")  # fmt: skip
    assert result["calibration"]["sets"] == pytest.approx(test["sets"]) and len(result["predictions"]) == len(rows)


def test_a_train_run_is_resumed_only_with_the_held_out_rows_it_trained_without(tmp_path):
    """calibrate.holdout decides which rows train; calibrate.coverage only the sets fitted after training."""
    from faultllm.run.directory import TRAIN_RESUME, check_resume, redacted_config, start_run
    from faultllm.runtime.errors import FaultLLMError

    common = [f"cache_dir={tmp_path / 'cache'}", "model=tiny"]
    start_run(load_config("train", [*common, "calibrate.holdout=0.25"]), tmp_path / "run", RunKind.TRAIN)
    (tmp_path / "run" / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    with pytest.raises(FaultLLMError, match=r"calibrate.holdout: 0.25 there, 0.0 here"):
        check_resume(redacted_config(load_config("train", common)), tmp_path / "run", TRAIN_RESUME)
    same_rows = load_config("train", [*common, "calibrate.holdout=0.25", "calibrate.coverage=0.8"])
    check_resume(redacted_config(same_rows), tmp_path / "run", TRAIN_RESUME)


def test_report_shows_each_runs_temperature_and_set_coverage_from_its_held_out_rows(compose_cfg, tmp_path):
    from faultllm.jobs.baselines import run as baselines
    from faultllm.jobs.report import run as report

    models = ["baselines.models=[knn,lr]", "baselines.importances_for=[]", "calibrate.holdout=0.25"]
    baselines(compose_cfg("baselines", models), tmp_path / "b")  # the bundled TEP
    report(load_config("report", [f"run_dirs=[{tmp_path / 'b'}]"]), tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "recalibration.csv").set_index("Model")
    saved = json.loads((tmp_path / "b" / "calibration.json").read_text())
    for key, name in (("knn", "K-Nearest Neighbors"), ("lr", "Logistic Regression")):
        assert table.loc[name, "Set coverage"] == round(saved[key]["test"]["sets"]["coverage"], 3)
        assert table.loc[name, "Temperature"] == round(saved[key]["temperature"], 3)
        assert table.loc[name, "Target coverage"] == 0.9 and table.loc[name, "Held-out rows"] == saved[key]["rows"]
    assert (
        "| Model | Seed | Held-out rows | Temperature | ECE before / after |"
        in (tmp_path / "report" / "recalibration.md").read_text()
    )
