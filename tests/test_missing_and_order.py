"""Missing values (data.missing_rate, prompt.missing, imputing baselines) and prompt.feature_order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from faultllm.data.splits import make_split, prepared_split
from faultllm.data.tables import LABEL
from faultllm.jobs.baselines import run as run_baselines
from faultllm.prompts.serialize import PromptFormat, question
from faultllm.runtime.errors import FaultLLMError

QUICK = ["baselines.importances_for=[]"]


def test_missing_rate_blanks_that_fraction_of_test_values_reproducibly_never_the_label(compose_cfg):
    cfg = compose_cfg("prepare", ["data.missing_rate=0.2"])
    clean = make_split(compose_cfg("prepare").data, 3)
    split = make_split(cfg.data, 3)
    blanked = split.test[split.features].isna().to_numpy()
    assert blanked.sum() == round(0.2 * blanked.size) and not split.test[LABEL].isna().any()
    assert not split.train[split.features].isna().any().any()  # training rows stay whole by default
    kept = ~blanked
    assert np.array_equal(split.test[split.features].to_numpy()[kept], clean.test[split.features].to_numpy()[kept])
    assert split.test[LABEL].equals(clean.test[LABEL]) and split.train.equals(clean.train)
    again = make_split(cfg.data, 3)
    assert np.array_equal(again.test[split.features].isna().to_numpy(), blanked)
    other_seed = make_split(cfg.data, 4)
    assert not np.array_equal(other_seed.test[split.features].isna().to_numpy(), blanked)
    both = make_split(compose_cfg("prepare", ["data.missing_rate=0.2", "data.missing_in_train=true"]).data, 3)
    assert both.train[split.features].isna().to_numpy().mean() == pytest.approx(0.2, abs=1e-3)
    scaled, _ = prepared_split(cfg.data, 3)
    assert scaled.test[split.features].isna().to_numpy().sum() == blanked.sum()  # the scaler keeps them missing


def test_both_renderings_of_a_missing_value():
    values, features = [0.25, float("nan"), 1.0], ["a", "b", "c"]
    unknown = PromptFormat(system="", name_features=True, decimals=2, missing="unknown")
    omit = PromptFormat(system="", name_features=True, decimals=2, missing="omit")
    assert question(values, features, [0, 1], unknown) == (
        "Tell me if the value of Y is 0 or 1. If feature a = 0.25, feature b = unknown, feature c = 1.00. "
        "What should be Y?"
    )
    assert question(values, features, [0, 1], omit) == (
        "Tell me if the value of Y is 0 or 1. If feature a = 0.25, feature c = 1.00. What should be Y?"
    )
    unnamed = PromptFormat(system="", name_features=False, decimals=1, missing="unknown")
    assert question(values, features, [0, 1], unnamed) == (
        "Tell me if the value of Y is 0 or 1. If the features are: 0.2, unknown, 1.0. What should be Y?"
    )


def test_baselines_run_on_the_same_blanked_rows(compose_cfg, tmp_path):
    overrides = ["data.missing_rate=0.2", "baselines.models=[lr,hgb,rf]", "baselines.importances_for=[rf]",
                 "baselines.permutation_repeats=1"]  # fmt: skip
    results = run_baselines(compose_cfg("baselines", overrides), tmp_path)
    assert all(0.25 < r["test_accuracy"] <= 1.0 for r in results.values())
    test_rows = pd.read_parquet(tmp_path / "test.parquet")
    assert test_rows.drop(columns=LABEL).isna().to_numpy().mean() == pytest.approx(0.2, abs=1e-3)
    llm_split, _ = prepared_split(compose_cfg("train", ["model=tiny", *overrides[:1]]).data, 42)
    assert json.loads((tmp_path / "split.json").read_text())["split_fingerprint"] == llm_split.fingerprint()
    assert pd.read_csv(tmp_path / "feature_importances.csv")["impurity"].notna().all()  # rf behind its imputer


def test_empty_cells_in_an_input_file_are_an_error_unless_allowed(compose_cfg, tmp_path):
    frame = pd.DataFrame({"a": np.arange(20) / 20, "b": np.ones(20), "label": [0, 1] * 10})
    frame.loc[5, "b"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = ["data=csv", f"data.path={tmp_path / 't.csv'}", "data.train_size=10", "data.test_size=4"]
    with pytest.raises(FaultLLMError, match=r"column 'b' row 5 holds nan; expected a finite number \(data.allow"):
        make_split(compose_cfg("prepare", data).data, 0)
    allowed = make_split(compose_cfg("prepare", [*data, "data.allow_missing=true"]).data, 0)
    assert len(allowed.train) == 10


@pytest.fixture()
def rf_run(compose_cfg, tmp_path):
    run_baselines(compose_cfg("baselines", ["baselines.models=[rf,lr]", "baselines.importances_for=[rf,lr]",
                                            "baselines.permutation_repeats=1"]), tmp_path / "rf")  # fmt: skip
    return tmp_path / "rf"


def test_feature_order_importance_follows_the_given_runs_impurity_importances(compose_cfg, rf_run):
    from faultllm.llm.finetune import prompt_features

    split, _ = prepared_split(compose_cfg("prepare").data, 42)
    importances = pd.read_csv(rf_run / "feature_importances.csv").query("model == 'rf'")
    expected = importances.sort_values("impurity", ascending=False, kind="stable")["feature"].tolist()
    prompt = compose_cfg("train", ["model=tiny", "prompt.feature_order=importance", f"prompt.importance_from={rf_run}"])
    order = prompt_features(prompt.prompt, split.features, 42, split.fingerprint())
    assert order == expected and sorted(order) == sorted(split.features) and order != split.features
    with pytest.raises(FaultLLMError, match="no baselines run there was made on this split"):
        prompt_features(prompt.prompt, split.features, 42, "0" * 16)
    prompt.prompt.importance_model = "lr"
    with pytest.raises(FaultLLMError, match="has impurity importances for: rf"):
        prompt_features(prompt.prompt, split.features, 42, split.fingerprint())


def test_feature_order_random_is_a_seeded_permutation(compose_cfg):
    from faultllm.prompts.serialize import ordered_features

    prompt = compose_cfg("train", ["model=tiny", "prompt.feature_order=random"]).prompt
    features = [f"f{i}" for i in range(20)]
    first = ordered_features(prompt.feature_order, features, 1)
    assert (
        first
        == ordered_features(prompt.feature_order, features, 1)
        != ordered_features(prompt.feature_order, features, 2)
    )
    assert sorted(first) == sorted(features) and first != features
