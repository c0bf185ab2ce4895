from __future__ import annotations

import json

import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.jobs.baselines import run as run_baselines
from faultllm.jobs.explain import run as explain
from faultllm.llm.explain import attribution_table, choose_rows
from faultllm.runtime.errors import FaultLLMError


@pytest.fixture(scope="module")
def easy_baselines(trained_run, tiny_cache, easy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("easy_baselines")
    data = [
        f"cache_dir={tiny_cache}",
        "data=csv",
        f"data.path={easy_csv}",
        "data.train_size=160",
        "data.test_size=80",
        "data.normalize=false",
    ]
    run_baselines(
        load_config(
            "baselines",
            [
                *data,
                "baselines.models=[rf,gbm]",
                "baselines.importances_for=[rf,gbm]",
                "baselines.permutation_repeats=3",
            ],
        ),
        out,
    )
    run_dir, _ = trained_run
    assert (
        json.loads((out / "split.json").read_text())["split_fingerprint"]
        == json.loads((run_dir / "split.json").read_text())["split_fingerprint"]
    )
    return out


@pytest.mark.slow  # reads the session's trained run
def test_the_deciding_feature_is_ranked_first(trained_run, easy_baselines, tmp_path):
    run_dir, _ = trained_run
    cfg = load_config(
        "explain",
        [
            f"run_dir={run_dir}",
            f"explain.baselines_dir={easy_baselines}",
            "explain.n_probe_rows=2",
            "explain.n_attribution_rows=30",
            "explain.top_k=1",
        ],
    )
    summary = explain(cfg, tmp_path)
    attribution = pd.read_csv(tmp_path / "attribution.csv")
    assert attribution["feature"].iloc[0] == "a" and summary["top_features"] == ["a"]  # only `a` decides the label
    assert (
        attribution.set_index("feature").loc["a", "mean_abs_effect"] > 3 * attribution["mean_abs_effect"].iloc[1:].max()
    )
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    assert set(comparison["model"]) == {"rf", "gbm"} and (comparison["top1_overlap"] == 1.0).all()
    transcripts = pd.read_csv(tmp_path / "transcripts.csv")
    assert list(transcripts["new_tokens"]) == [5, 50, 5, 50]
    assert transcripts["user"].str.endswith("What is the reasoning behind your decision?").all()
    for name in ("attribution.png", "report.md", "attribution_rows.csv", "explain.json"):
        assert (tmp_path / name).exists()
    assert "## Occlusion attribution" in (tmp_path / "report.md").read_text()


@pytest.mark.slow  # reads the session's trained run
def test_bad_rows_and_missing_adapter(trained_run, tmp_path):
    run_dir, _ = trained_run
    with pytest.raises(
        FaultLLMError, match=r"explain.rows: row 80 is out of range; the test split has 80 rows \(0..79\)"
    ):
        explain(load_config("explain", [f"run_dir={run_dir}", "explain.rows=[3,80]"]), tmp_path / "x")
    (tmp_path / "copy").mkdir()
    for name in ("config.yaml", "split.json"):
        (tmp_path / "copy" / name).write_text((run_dir / name).read_text())
    with pytest.raises(FaultLLMError, match="no adapter found"):
        explain(load_config("explain", [f"run_dir={tmp_path / 'copy'}"]), tmp_path / "y")


@pytest.mark.slow  # reads the session's trained run
def test_baselines_runs_of_another_split_or_as_run_dir_are_refused(trained_run, tiny_cache, easy_csv, tmp_path):
    from faultllm.jobs.evaluate import run as evaluate

    run_dir, _ = trained_run
    data = [f"cache_dir={tiny_cache}", "data=csv", f"data.path={easy_csv}", "data.train_size=160", "data.test_size=80"]
    other = [*data, "data.normalize=false", "seed=7", "baselines.models=[lr]", "baselines.importances_for=[]"]
    run_baselines(load_config("baselines", other), tmp_path / "b")  # the same data, another seed: other rows
    with pytest.raises(FaultLLMError, match=r"explain.baselines_dir=.*: a baselines run on another split \(other rows; "
                       r"fingerprint \w+ vs this run's \w+\); run `faultllm baselines` with this run's data config"):  # fmt: skip
        explain(
            load_config("explain", [f"run_dir={run_dir}", f"explain.baselines_dir={tmp_path / 'b'}"]), tmp_path / "x"
        )
    with pytest.raises(FaultLLMError, match=r"is a `faultllm baselines` run; explain needs a train run: give it as "
                       r"explain.baselines_dir=DIR"):  # fmt: skip
        explain(load_config("explain", [f"run_dir={tmp_path / 'b'}"]), tmp_path / "y")
    with pytest.raises(
        FaultLLMError, match=r"evaluate needs a train run: .* `faultllm predict run_dir=DIR input=TABLE`"
    ):
        evaluate(load_config("evaluate", [f"run_dir={tmp_path / 'b'}"]), tmp_path / "z")
    (tmp_path / "header.csv").write_text("a,b,c,label\n")
    with pytest.raises(FaultLLMError, match=r"eval.split_path=.*header.csv: the table has no rows"):
        evaluate(
            load_config("evaluate", [f"run_dir={run_dir}", f"eval.split_path={tmp_path / 'header.csv'}"]),
            tmp_path / "h",
        )


def test_a_baselines_run_is_refused_before_any_model_loads(easy_csv, tmp_path):
    data = ["data=csv", f"data.path={easy_csv}", "data.train_size=40", "data.test_size=20"]
    run_baselines(load_config("baselines", [*data, "baselines.models=[lr]", "baselines.importances_for=[]"]), tmp_path)
    with pytest.raises(FaultLLMError, match=r"is a `faultllm baselines` run; explain needs a train run"):
        explain(load_config("explain", [f"run_dir={tmp_path}"]), tmp_path / "x")


def test_features_are_ranked_by_their_mean_absolute_effect_overall_and_per_class():
    effects = pd.DataFrame(
        {"row": [0, 0, 1, 1], "label": [0, 0, 1, 1], "feature": ["a", "b", "a", "b"], "effect": [-0.4, 0.1, 0.2, -0.3]}
    )
    table = attribution_table(effects, ["a", "b"]).set_index("feature")
    assert table["rank"].to_dict() == {"a": 1, "b": 2} and table.loc["a", "mean_abs_effect"] == pytest.approx(0.3)
    assert table.loc["b", "mean_abs_effect_class_1"] == pytest.approx(0.3)
    drawn = choose_rows(None, 3, 10, seed=0)  # a sample of distinct rows, in order
    assert len(drawn) == 3 and drawn == sorted(set(drawn)) and set(drawn) <= set(range(10))
    with pytest.raises(FaultLLMError, match=r"explain.rows: row 10 is out of range; the test split has 10 rows"):
        choose_rows([1, 10], 2, 10, seed=0)
