"""`faultllm report` across seeds and models: intervals that cover, tests over seeds, refusals."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from faultllm.compare.pooling import ModelRun
from faultllm.compare.statistics import aggregate, gap_interval, interval, mcnemar, paired_tests, seed_test
from faultllm.compare.tables import summary_display
from faultllm.config.load import load_config
from faultllm.jobs.baselines import run as run_baselines
from faultllm.jobs.report import run as report_job
from faultllm.run.records import SplitMetrics, TrainMetrics
from faultllm.runtime.errors import FaultLLMError

QUICK = ["baselines.models=[lr,knn]", "baselines.importances_for=[]"]


def report(dirs, out):
    return report_job(load_config("report", [f"run_dirs={[str(d) for d in dirs]}"]), out)


def faultllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faultllm", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """`faultllm baselines -m seed=1,2,3 data.train_size=40,400` through the CLI: six jobs."""
    sweep = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("cache")
    done = faultllm(
        "baselines", "-m", "seed=1,2,3", "data.train_size=40,400", *QUICK, f"cache_dir={cache}",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return sweep


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_a_multirun_is_reported_as_mean_sd_and_interval_over_seeds(multirun, tmp_path):
    assert sorted(p.name for p in multirun.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4", "5"]
    summary = report([multirun], tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 12 and set(runs["Seed"]) == {1, 2, 3} and set(runs["Train rows"]) == {40, 400}
    row = summary[(summary["Model"] == "Logistic Regression") & (summary["Train rows"] == 400)].iloc[0]
    lr = runs[(runs["Model"] == "Logistic Regression") & (runs["Train rows"] == 400)]
    accuracies = lr["Test Accuracy"]
    low, high = _hull_by_hand(accuracies.to_numpy(), lr["Test rows"].to_numpy())
    assert row["Runs"] == 3 and row["test_accuracy_mean"] == pytest.approx(accuracies.mean())
    assert row["test_accuracy_sd"] == pytest.approx(accuracies.std(ddof=1))
    assert (row["test_accuracy_ci_low"], row["test_accuracy_ci_high"]) == pytest.approx((low, high))
    table = (tmp_path / "comparison.md").read_text()
    assert f"{row['test_accuracy_mean']:.3f} ± {row['test_accuracy_sd']:.3f}" in table and "95% CI" in table
    assert set(pd.read_csv(tmp_path / "comparison.csv")["Train rows"]) == {40, 400}
    assert (tmp_path / "train_size_curve.png").stat().st_size > 0 and (tmp_path / "comparison.png").exists()
    assert not (tmp_path / "paired_tests.csv").exists()  # no LLM among the runs
    calibration = pd.read_csv(tmp_path / "calibration.csv")  # baselines keep their probabilities
    assert (
        set(calibration["Model"]) == {"Logistic Regression", "K-Nearest Neighbors"} and (calibration["Runs"] == 3).all()
    )


def _hull_by_hand(accuracies: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """The documented interval from scipy and statsmodels: the t-interval over seeds with its variance floored at
    the shrunk pooled accuracy's binomial variance, hulled with the pooled Clopper-Pearson interval."""
    right, total = round(float(accuracies @ rows)), rows.sum()
    shrunk = (right + 2) / (total + 4)
    scale = np.sqrt(max(accuracies.var(ddof=1), shrunk * (1 - shrunk) / rows.mean()) / len(accuracies))
    t_low, t_high = stats.t.interval(0.95, len(accuracies) - 1, loc=accuracies.mean(), scale=scale)
    exact_low, exact_high = proportion_confint(right, total, alpha=0.05, method="beta")
    return max(0.0, min(t_low, exact_low)), min(1.0, max(t_high, exact_high))


def test_every_accuracy_interval_lies_within_0_and_1_and_contains_its_mean(tmp_path):
    """Two seeds: the plain t-interval (t = 12.7) of [0.2, 0.9] is [-4.2, 5.3]; clipped, it stays inside."""
    runs = pd.DataFrame({
        "Model": ["A", "A", "B", "B", "C", "C", "D", "D"], "Train rows": 40, "Test rows": 20,
        "Test Accuracy": [0.2, 0.9, 0.95, 1.0, 0.0, 0.05, 1.0, 1.0], "Test macro-F1": [0.1, 0.9, 0.9, 1.0, 0.0, 0.1, 1, 1],
        "Train Accuracy": 1.0, "Seconds": 1.0,
    })  # fmt: skip
    summary = aggregate(runs)
    for key in ("test_accuracy", "test_macro_f1"):
        low, high, mean = summary[f"{key}_ci_low"], summary[f"{key}_ci_high"], summary[f"{key}_mean"]
        assert ((low >= 0) & (high <= 1) & (low <= mean) & (mean <= high) & (low < high)).all()
    a = summary.iloc[0]
    assert (a["test_accuracy_ci_low"], a["test_accuracy_ci_high"]) == pytest.approx((0.0, 1.0), abs=0.01)  # honest
    d = summary.iloc[3]  # 1.0 on both seeds: 40 of 40 rows right do not make the interval a point
    assert d["test_accuracy_ci_high"] == 1.0 and d["test_accuracy_ci_low"] < 1.0
    assert (d["test_accuracy_ci_low"], 1.0) == pytest.approx(_hull_by_hand(np.array([1.0, 1.0]), np.array([20, 20])))
    shown = summary_display(summary)["95% CI"]
    assert all(0 <= float(v) <= 1 for cell in shown for v in cell.strip("[]").split(", "))


@pytest.mark.parametrize(
    ("accuracy", "rows", "seeds"), [(0.25, 20, 2), (1.0, 20, 3), (0.0, 50, 2), (0.1007, 1000, 3), (0.99, 5000, 10)]
)
def test_tied_seeds_get_an_interval_of_positive_width_around_the_point(accuracy, rows, seeds):
    """The issue's [0.25, 0.25] and 0.1007 outside [0.1076, 0.1133]: ties have test-row noise all the same."""
    mean, sd, low, high = interval(np.full(seeds, accuracy), np.full(seeds, rows))
    assert sd == 0 and mean == pytest.approx(accuracy) and low <= mean <= high and high - low > 0
    assert (low, high) == pytest.approx(_hull_by_hand(np.full(seeds, accuracy), np.full(seeds, rows)))


def test_simulated_coverage_on_a_small_grid_is_at_least_93_percent():
    """scripts/check_intervals.py's simulation at the grid's corners: accuracy 0.3 and 0.99, 2 and 10 seeds,
    50 and 5000 test rows, with and without spread between seeds (the full table: run the script)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "check_intervals.py"
    spec = importlib.util.spec_from_file_location("check_intervals", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    grid = {"accuracies": (0.3, 0.99), "seeds": (2, 10), "rows": (50, 5000)}
    for spread in check.SPREADS.values():
        coverage = check.table(spread, 2000, grid)
        assert coverage.shape == (4, 2) and (coverage.to_numpy() >= 0.93).all(), coverage


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_the_report_says_why_there_are_no_paired_tests(multirun, tmp_path, caplog):
    import logging

    job = jobs_with_400_rows(multirun)[0]
    correct = pd.read_csv(job / "predictions.csv").pipe(lambda p: (p["lr"] == p["label"]).to_numpy())
    _fake_llm_run(job, tmp_path / "llm", correct)
    other_seed = jobs_with_400_rows(multirun)[1]
    with caplog.at_level(logging.INFO, logger="faultllm"):
        report([tmp_path / "llm", other_seed], tmp_path / "report")
    assert not (tmp_path / "report" / "paired_tests.csv").exists()
    (line,) = [r.getMessage() for r in caplog.records if "paired tests skipped" in r.getMessage()]
    assert "no LLM run shares a split (same data config and seed)" in line


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_runs_with_different_data_configs_are_refused(multirun, tmp_path):
    other = tmp_path / "other"
    run_baselines(load_config("baselines", [*QUICK, "data.labels=[0,1]", "data.train_size=40"]), other)
    with pytest.raises(FaultLLMError, match=r"different data configs: data.labels is \[0, 1\]"):
        report([other, multirun], tmp_path / "r")
    cli = faultllm("report", str(multirun), str(other), "--out", str(tmp_path / "r2"))
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1
    assert cli.stderr.startswith("faultllm report: error: cannot pool runs made with different data configs")


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_the_same_model_twice_on_one_split_is_refused(multirun, tmp_path):
    with pytest.raises(FaultLLMError, match="Logistic Regression appears twice on one split"):
        report([multirun / "0", multirun / "0"], tmp_path)


def jobs_with_400_rows(sweep) -> list:
    """The multirun's job directories with 400 training rows, by seed."""
    split = lambda job: json.loads((job / "split.json").read_text())  # noqa: E731
    jobs = [job for job in sweep.iterdir() if job.is_dir() and sum(split(job)["rows"]["train"].values()) == 400]
    return sorted(jobs, key=lambda job: split(job)["seed"])


def _fake_llm_run(baselines_dir, out, correct: np.ndarray, overrides: tuple = ()):
    """A finished `faultllm train` run on the baselines run's split whose rows are right where `correct` says."""
    out.mkdir()
    for name in ("split.json", "test.parquet"):
        (out / name).write_bytes((baselines_dir / name).read_bytes())
    seed = json.loads((baselines_dir / "split.json").read_text())["seed"]
    cfg = load_config("train", ["model=tiny", f"seed={seed}", *overrides])
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    truth = pd.read_csv(baselines_dir / "predictions.csv")["label"]
    predicted = np.where(correct, truth.astype(str), "")  # "" as an unparsed generation is written
    pd.DataFrame({"row": range(len(truth)), "label": truth, "predicted": predicted}).to_csv(out / "predictions.csv")
    accuracy = float(correct.mean())
    scored = lambda a: SplitMetrics(a, a, {}, [], [], len(correct))  # noqa: E731
    metrics = TrainMetrics(
        train=scored(1.0), test=scored(accuracy), epochs=[], eval_mode="restricted", train_seconds=1.0
    )
    (out / "metrics.json").write_text(json.dumps(metrics.to_json()))


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_mcnemar_counts_and_p_value_equal_statsmodels_and_scipy(multirun, tmp_path):
    baselines_dir = jobs_with_400_rows(multirun)[0]
    lr_correct = pd.read_csv(baselines_dir / "predictions.csv").pipe(lambda p: (p["lr"] == p["label"]).to_numpy())
    # The LLM gets 7 of the rows LR gets wrong, and misses 3 that LR gets right
    llm_correct = lr_correct.copy()
    llm_correct[np.flatnonzero(~lr_correct)[:7]] = True
    llm_correct[np.flatnonzero(lr_correct)[:3]] = False
    _fake_llm_run(baselines_dir, tmp_path / "llm", llm_correct)
    report([tmp_path / "llm", baselines_dir], tmp_path / "report")
    assert not (tmp_path / "report" / "paired_tests.csv").exists()  # one seed: within-split evidence only
    tests = pd.read_csv(tmp_path / "report" / "within_split_tests.csv")
    row = tests[(tests["B"] == "Logistic Regression") & (tests["Test"] == "McNemar (exact)")].iloc[0]
    assert (row["A"], row["A right only"], row["B right only"]) == ("LLM (tiny)", 7, 3)
    assert row["p-value"] == pytest.approx(stats.binomtest(3, 10, 0.5).pvalue)  # exact McNemar is a binomial test
    assert mcnemar(llm_correct, lr_correct) == (7, 3, pytest.approx(0.34375))


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_llm_and_baselines_over_seeds_get_the_mean_gap_its_interval_and_a_permutation_test(multirun, tmp_path):
    llm_dirs, differences = [], []
    jobs = jobs_with_400_rows(multirun)
    for job, shift in zip(jobs, (2, 5, -1), strict=True):
        truth = pd.read_csv(job / "predictions.csv")
        correct = (truth["knn"] == truth["label"]).to_numpy().copy()
        flipped = np.flatnonzero(~correct)[:shift] if shift > 0 else np.flatnonzero(correct)[:-shift]
        correct[flipped] = ~correct[flipped]  # the LLM is right on `shift` more rows than kNN
        _fake_llm_run(job, tmp_path / job.name, correct)
        llm_dirs.append(tmp_path / job.name)
        differences.append(shift / len(correct))
    report([*llm_dirs, *jobs], tmp_path / "report")
    tests = pd.read_csv(tmp_path / "report" / "paired_tests.csv")
    row = tests[tests["B"] == "K-Nearest Neighbors"].iloc[0]
    assert (row["Test"], row["n"]) == ("sign-flip permutation over seeds", 3)
    assert row["Accuracy A - B"] == pytest.approx(np.mean(differences))
    # 8 sign patterns of (2, 5, -1) rows: |sum| >= 6 for (+,+,+), (-,+,+) and their mirrors
    assert row["p-value"] == pytest.approx(4 / 8)
    scale = np.sqrt(max(np.var(differences, ddof=1), 0) / 3)
    assert row["CI low"] < row["Accuracy A - B"] < row["CI high"] and row["CI high"] - row["CI low"] >= 2 * 4.30 * scale
    within = pd.read_csv(tmp_path / "report" / "within_split_tests.csv")
    assert set(within["Test"]) == {"McNemar (exact)"} and len(within[within["B"] == "K-Nearest Neighbors"]) == 3


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_llm_runs_that_differ_become_rows_named_by_the_difference(multirun, tmp_path):
    job = jobs_with_400_rows(multirun)[0]
    correct = pd.read_csv(job / "predictions.csv").pipe(lambda p: (p["lr"] == p["label"]).to_numpy())
    _fake_llm_run(job, tmp_path / "original", correct)
    _fake_llm_run(job, tmp_path / "random", ~correct, ("prompt.feature_order=random",))
    summary = report([tmp_path / "original", tmp_path / "random", job], tmp_path / "report")
    assert {"LLM (tiny, prompt.feature_order=original)", "LLM (tiny, prompt.feature_order=random)"} <= set(
        summary["Model"]
    )
    tests = pd.read_csv(tmp_path / "report" / "within_split_tests.csv")
    assert set(tests["A"]) == {"LLM (tiny, prompt.feature_order=original)", "LLM (tiny, prompt.feature_order=random)"}


def _seed_run(tmp_path, model: str, kind: str, seed: int, accuracy: float) -> ModelRun:
    return ModelRun(model, kind, tmp_path, seed, train_rows=40, test_rows=20, fingerprint=str(seed),
                    train_accuracy=1.0, test_accuracy=accuracy, test_macro_f1=accuracy, seconds=None, correct=None)  # fmt: skip


def test_the_same_gap_on_every_seed_gets_the_smallest_p_value_three_seeds_allow(tmp_path):
    """ttest_rel([.8, .85, .9], [.75, .8, .85]) gives t = 1.3e15, p = 5e-31 from float noise: 0.85 - 0.8 != 0.8 - 0.75."""
    llm = [_seed_run(tmp_path, "LLM", "llm", seed, accuracy) for seed, accuracy in ((1, 0.8), (2, 0.85), (3, 0.9))]
    baseline = [_seed_run(tmp_path, "B", "baseline", seed, a) for seed, a in ((1, 0.75), (2, 0.8), (3, 0.85))]
    row = paired_tests(llm + baseline).iloc[0]
    assert (row["Test"], row["n"], row["Accuracy A - B"]) == (
        "sign-flip permutation over seeds",
        3,
        pytest.approx(0.05),
    )
    assert row["p-value"] == pytest.approx(0.25)  # 2 of the 2^3 sign patterns are as extreme: the least 3 seeds give
    assert row["CI low"] < 0.05 < row["CI high"]  # tied gaps: the interval has the test rows' width
    no_gap = paired_tests(llm + [_seed_run(tmp_path, "B", "baseline", r.seed, r.test_accuracy) for r in llm]).iloc[0]
    assert no_gap["p-value"] == 1.0 and no_gap["CI low"] < 0 < no_gap["CI high"]


def test_the_gap_interval_is_floored_by_the_discordant_rows(tmp_path):
    """Three splits of 160 rows where A gets the same 4 rows more than B: t (2 df) times the floor's sd."""
    right = np.arange(160) < 120
    better = right | (np.arange(160) >= 156)
    pairs = [
        (_seed_run(tmp_path, "A", "llm", seed, better.mean()), _seed_run(tmp_path, "B", "baseline", seed, right.mean()))
        for seed in (1, 2, 3)
    ]
    pairs = [(replace(a, test_rows=160, correct=better), replace(b, test_rows=160, correct=right)) for a, b in pairs]
    half = stats.t.ppf(0.975, 2) * np.sqrt((4 + 1) / 160**2 / 3)
    assert gap_interval(pairs) == pytest.approx((4 / 160 - half, 4 / 160 + half))
    without_rows = [(replace(a, correct=None), replace(b, correct=None)) for a, b in pairs]
    assert gap_interval(without_rows)[0] < gap_interval(pairs)[0]  # as if independent: wider


def test_a_more_consistent_gap_never_gets_a_weaker_p_value():
    """The issue's jump: the t-test gave gaps of 4, 5 and 6 rows p = 0.0097 and a constant 5 rows (the sign
    test) p = 0.25. Over random gaps: a gap moved toward the mean from the side away from the effect (the
    gaps more consistent, the mean gap no smaller) never raises p, and equal gaps of the same sign give the
    smallest p-value the seeds allow."""
    gaps = lambda rows: [Fraction(r, 100) for r in rows]  # noqa: E731
    assert seed_test(gaps([5, 5, 5])) <= seed_test(gaps([4, 5, 6])) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    for _ in range(300):
        seeds = int(rng.integers(2, 9))
        rows = rng.integers(-20, 30, size=seeds)
        sign = 1 if rows.sum() >= 0 else -1
        mean = rows.mean()
        behind = np.flatnonzero(sign * (rows - mean) < 0)  # gaps on the side away from the effect
        if not len(behind):
            continue
        moved = rows.copy()
        i = rng.choice(behind)
        moved[i] += sign * int(rng.integers(1, int(abs(mean - rows[i])) + 2))
        moved[i] = min(moved[i], mean) if sign > 0 else max(moved[i], mean)
        before, after = seed_test(gaps(rows)), seed_test(gaps(moved))
        assert after <= before, (rows, moved, before, after)
        assert seed_test(gaps([sign * 3] * seeds)) == pytest.approx(2 / 2**seeds) and 2 / 2**seeds <= after


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_a_constant_gap_over_seeds_heads_the_report_and_mcnemar_has_its_own_holm_family(multirun, tmp_path):
    jobs = jobs_with_400_rows(multirun)
    for job in jobs:
        predictions = pd.read_csv(job / "predictions.csv")
        correct = (predictions["lr"] == predictions["label"]).to_numpy().copy()
        correct[np.flatnonzero(~correct)[:4]] = True  # 4 rows more than Logistic Regression on every split
        _fake_llm_run(job, tmp_path / job.name, correct)
    report([*(tmp_path / job.name for job in jobs), *jobs], tmp_path / "report")
    tests = pd.read_csv(tmp_path / "report" / "paired_tests.csv")
    assert len(tests) == 2 and (tests["n"] == 3).all()  # LR and kNN: one row over the seeds each, the headline
    row = tests[tests["B"] == "Logistic Regression"].iloc[0]
    assert (row["Test"], row["p-value"]) == ("sign-flip permutation over seeds", pytest.approx(0.25))
    within = pd.read_csv(tmp_path / "report" / "within_split_tests.csv")
    assert len(within) == 2 * 3 and sorted(set(within["Seed"])) == [1, 2, 3]  # a McNemar row per seed
    for table in (tests, within):  # each table is its own family
        holm = multipletests(table["p-value"], method="holm")[1]
        assert table["p-value (Holm)"].to_numpy() == pytest.approx(holm, rel=1e-12)
    assert (within["p-value (Holm)"] > within["p-value"]).any()
    shown = (tmp_path / "report" / "paired_tests.md").read_text().splitlines()
    assert shown[0].startswith("Unit of replication: the seed") and "| 95% CI |" in shown[2]
    assert all(
        line.endswith(f"| {p:.2g} | {h:.2g} |")
        for line, p, h in zip(shown[4:], tests["p-value"], tests["p-value (Holm)"], strict=True)
    )
    assert (tmp_path / "report" / "within_split_tests.md").read_text().startswith("Within-split evidence")


@pytest.mark.slow  # the multirun fixture: six baselines jobs through the CLI
def test_llm_runs_that_differ_only_in_per_epoch_scoring_are_one_protocol(multirun, tmp_path):
    jobs = jobs_with_400_rows(multirun)
    for job, every_epoch in zip(jobs[:2], ("true", "false"), strict=True):
        correct = pd.read_csv(job / "predictions.csv").pipe(lambda p: (p["lr"] == p["label"]).to_numpy())
        _fake_llm_run(job, tmp_path / job.name, correct, (f"trainer.eval_each_epoch={every_epoch}",))
    summary = report([tmp_path / job.name for job in jobs[:2]], tmp_path / "report")
    assert summary["Model"].tolist() == ["LLM (tiny)"] and summary["Runs"].tolist() == [2]
