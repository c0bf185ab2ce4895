"""`report` on a mixed set of runs writes every table and plot, and the plots can be read: intervals drawn as
given, one reliability panel per model, a colour and a label of its own for every risk-coverage line."""

from __future__ import annotations

import logging

import matplotlib
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from faultllm.compare import plots
from faultllm.compare.calibration import reliability
from faultllm.config.load import load_config
from tests.conftest import easy_overrides

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@pytest.fixture()
def kept_figure(monkeypatch):
    """The figure a plot function drew, kept open for the test to look at (plots.figure closes it)."""
    monkeypatch.setattr(plt, "close", lambda *args: None)
    yield lambda: plt.gcf()
    monkeypatch.undo()
    plt.close("all")


def _summary(mean: float, low: float, high: float) -> pd.DataFrame:
    row = {"Model": "LLM (tiny)", "Train rows": 40, "Runs": 2}
    for key in ("test_accuracy", "test_macro_f1"):
        row |= {f"{key}_mean": mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
    return pd.DataFrame([row, row | {"Model": "Logistic Regression"} | _no_interval()])


def _no_interval() -> dict:
    nan = float("nan")  # one run: no interval
    return {
        "test_accuracy_ci_low": nan,
        "test_accuracy_ci_high": nan,
        "test_macro_f1_ci_low": nan,
        "test_macro_f1_ci_high": nan,
    }


def test_an_interval_that_excludes_its_mean_is_drawn_end_to_end(tmp_path, kept_figure):
    """The issue's numbers: mean 0.1007, interval [0.1076, 0.1133]; yerr from the mean was negative and crashed."""
    plots.comparison(_summary(0.1007, 0.1076, 0.1133), tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 0
    (ax,) = kept_figure().axes
    segments = [segment for collection in ax.collections for segment in collection.get_segments()]
    assert len(segments) == 2  # accuracy and macro-F1 of the model with an interval; none for one run
    for segment in segments:
        assert sorted(segment[:, 1]) == pytest.approx([0.1076, 0.1133])


def test_reliability_is_one_panel_per_model_with_its_bins_interval(tmp_path, kept_figure):
    rng = np.random.default_rng(0)
    models = [f"model {i}" for i in range(5)]
    curves = {model: reliability(rng.uniform(0.5, 1, 300), rng.uniform(size=300) < 0.8) for model in models}
    plots.reliability(curves, tmp_path / "calibration.png", "reliability")
    shown = [ax for ax in kept_figure().axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[0] for ax in shown] == models
    assert all(len(ax.collections) == 1 for ax in shown)  # the shaded interval
    assert all(len(ax.get_lines()) == 2 for ax in shown)  # the diagonal and the model's curve


def test_every_risk_coverage_line_has_its_own_colour_and_label(tmp_path, kept_figure):
    rng = np.random.default_rng(1)
    curves = {
        f"LLM (tiny, seed {i})" if i < 6 else f"baseline {i}": pd.DataFrame(
            {"coverage": np.linspace(0.1, 1, 10), "accuracy": np.sort(rng.uniform(size=10))[::-1]}
        )
        for i in range(12)
    }
    plots.risk_coverage(curves, tmp_path / "selective.png", "selective")
    lines = kept_figure().axes[0].get_lines()
    assert len(lines) == 12
    assert len({matplotlib.colors.to_hex(line.get_color()) for line in lines}) == 12
    labels = [line.get_label() for line in lines]
    assert len(set(labels)) == 12 and all(label.startswith(model) for label, model in zip(labels, curves, strict=True))


def test_the_risk_coverage_spread_over_seeds_is_shaded_from_the_lowest_to_the_highest_seed(tmp_path, kept_figure):
    coverage = np.linspace(0.01, 1, 100)
    curve = pd.DataFrame({"coverage": coverage, "accuracy": 1 - 0.2 * coverage})
    curves = {"LLM (tiny)": curve.assign(accuracy_low=curve["accuracy"] - 0.1, accuracy_high=curve["accuracy"] + 0.05)}
    plots.risk_coverage(curves | {"one seed": curve}, tmp_path / "selective.png", "selective")
    ax = kept_figure().axes[0]
    (band,) = ax.collections  # the curve without a spread has none
    (low, high) = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert (low, high) == pytest.approx((0.8 - 0.1, 1 - 0.2 * 0.01 + 0.05))


def test_the_reliability_bins_interval_is_wilsons():
    confidence = np.linspace(0.5, 1, 40)
    correct = np.arange(40) % 3 != 0
    bins = reliability(confidence, correct, bins=4)
    right = (bins["accuracy"] * bins["rows"]).round().astype(int)
    low, high = proportion_confint(right, bins["rows"], method="wilson")
    assert bins["accuracy_low"].to_numpy() == pytest.approx(np.asarray(low))
    assert bins["accuracy_high"].to_numpy() == pytest.approx(np.asarray(high))


def test_a_missing_param_importances_plot_is_said(tmp_path, caplog):
    import optuna

    from faultllm.search.summary import plot_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with caplog.at_level(logging.INFO, logger="faultllm"):
        plot_study(study, tmp_path)
    assert (tmp_path / "optimization_history.png").exists() and not (tmp_path / "param_importances.png").exists()
    assert (
        "param_importances.png not written: 1 trial(s) completed unpruned; importances need at least 2" in caplog.text
    )


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def mixed_runs(tiny_cache, easy_csv, tmp_path_factory):
    """A train multirun over 2 seeds (zero-shot), a baselines multirun over 2 seeds, a single fine-tuned
    run and a single baselines run on fewer training rows; and the lines the fine-tuned run logged."""
    from faultllm.jobs.baselines import run as baselines
    from faultllm.jobs.train import run as train

    root = tmp_path_factory.mktemp("mixed")
    overrides = [*easy_overrides(tiny_cache, easy_csv), "data.train_size=40", "data.test_size=40"]
    data = [o for o in overrides if o.startswith(("data", "cache_dir"))]
    quick = [*data, "baselines.models=[lr,knn]", "baselines.importances_for=[]", "progress=false"]
    for sweep, job, config in (("train_sweep", train, "train"), ("baselines_sweep", baselines, "baselines")):
        (root / sweep).mkdir()
        (root / sweep / "multirun.yaml").write_text("{}\n")  # what makes Hydra's sweep directory a multirun
        for job_number, seed in enumerate((1, 2)):
            settings = [*overrides, "trainer.epochs=0"] if config == "train" else quick
            job(load_config(config, [*settings, f"seed={seed}"]), root / sweep / str(job_number))
    baselines(load_config("baselines", [*quick, "seed=3", "data.train_size=20"]), root / "fewer_rows")
    lines, logger = _Lines(), logging.getLogger("faultllm")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)  # as the CLI's logging config sets it
    try:
        train(load_config("train", [*overrides, "trainer.epochs=1", "seed=1"]), root / "fine_tuned")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return root, lines.lines


@pytest.mark.slow
def test_report_on_a_mixed_set_writes_every_table_and_plot(mixed_runs, tmp_path):
    from faultllm.jobs.report import run as report

    root, _ = mixed_runs
    dirs = [str(root / name) for name in ("train_sweep", "baselines_sweep", "fine_tuned", "fewer_rows")]
    summary = report(load_config("report", [f"run_dirs={dirs}"]), tmp_path)
    models = {"LLM (tiny, epochs=0)", "LLM (tiny, epochs=1)", "Logistic Regression", "K-Nearest Neighbors"}
    assert set(summary["Model"]) == models
    runs = dict(zip(summary["Model"] + " " + summary["Train rows"].astype(str), summary["Runs"], strict=True))
    assert (
        runs["LLM (tiny, epochs=0) 40"] == 2
        and runs["Logistic Regression 40"] == 2
        and runs["K-Nearest Neighbors 20"] == 1
    )
    for name in ("comparison", "paired_tests", "within_split_tests", "calibration", "selective"):
        assert (tmp_path / f"{name}.md").stat().st_size > 0 and (tmp_path / f"{name}.csv").stat().st_size > 0
    tests = pd.read_csv(tmp_path / "paired_tests.csv")  # two seeds shared: the zero-shot LLM against each baseline
    assert (tests["n"] == 2).all() and (tests["CI low"] < tests["Accuracy A - B"]).all()
    assert (tests["Accuracy A - B"] < tests["CI high"]).all()
    for name in ("comparison", "calibration", "selective", "train_size_curve"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert (tmp_path / "runs.csv").exists() and (tmp_path / "selective_curves.csv").exists()


@pytest.mark.slow
def test_training_says_each_stage_and_its_steps(mixed_runs):
    _, lines = mixed_runs
    expected = [
        "and drawing the split (seed 1)", "writing 40 train and 40 test rows as prompts", "training: loading tiny",
        "training: tokenizing 40 rows", "training: optimizer steps (1 epochs) 0/5", "epoch 1/1",
        "scoring the 40 train rows", "scoring the 40 test rows",
    ]  # fmt: skip
    found = [next((i for i, line in enumerate(lines) if stage in line), None) for stage in expected]
    assert None not in found and found == sorted(found), lines
