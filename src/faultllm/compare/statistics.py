"""Comparing models fairly across runs: pool repeated seeds, put intervals on them, test paired differences,
and ask whether their probabilities can be trusted. The seed (a new split, a new fine-tune) is the unit of
replication; docs/statistics.md says what each number estimates and how it was checked.

`load_runs` reads finished train/baselines run directories (a Hydra multirun directory counts as
its runs), refuses runs made on different data configs, and pools only runs whose configs differ
in nothing but the seed and the training-set size (differing LLM runs, e.g. fine-tuned and few-shot,
become rows of their own). `aggregate` gives each model's mean, sd and 95% interval over seeds per
training-set size (`interval_bounds`: checked by scripts/check_intervals.py); `paired_tests` compares each
LLM with each other LLM and each baseline across seeds on the same splits (mean gap, its interval, the
sign-flip permutation test, Holm over that table), `within_split_tests` on each split's rows (exact
McNemar, Holm over its own table). `calibration_summary` and `selective_summary` score the per-row
probabilities (calibration.py), per seed and pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.compare.baselines import NAMES
from faultllm.compare.calibration import (
    Forecast,
    calibrated_ece,
    expected_calibration_error,
    reliability,
    risk_coverage,
    scores,
    selective_scores,
    zero_probability_rows,
)
from faultllm.run.directory import read_config_tree
from faultllm.run.kind import RunKind, run_kind
from faultllm.run.records import BaselinesMetrics, SplitSummary, TrainMetrics
from faultllm.run.saved import expand_run_dirs
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.progress import steps

# Keys that may differ between runs pooled into one row: the seed, and the training-set size (a curve).
VARYING = ("seed", "data.train_size")
# Keys that do not change a model's numbers (which baselines a run fitted, how it reported, whether it scored
# every epoch, how long ranks wait, how memory is saved): runs differing only there are one protocol.
IGNORED = (
    "progress", "cache_dir", "data.cache_dir", "hpo.worker_index", "run_dir", "trainer.report_to", "trainer.resume",
    "eval.batch_size", "eval.generate_batch_size", "baselines.models", "baselines.importances_for",
    "baselines.permutation_repeats", "trainer.eval_each_epoch", "trainer.ddp_timeout", "model.gradient_checkpointing",
)  # fmt: skip


# How a differing key is shown in an LLM row's name: `LLM (tiny, shots=4, epochs=0)`.
SHORT_NAMES = {"prompt.shots": "shots", "prompt.shot_selection": "shot_selection", "trainer.epochs": "epochs"}


@dataclass(frozen=True)
class ModelRun:
    """One model's result in one run directory."""

    model: str
    kind: str  # "llm" or "baseline"
    run_dir: Path
    seed: int
    train_rows: int
    test_rows: int
    fingerprint: str
    train_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    seconds: float | None
    correct: np.ndarray | None  # per test row, when the run kept its predictions
    forecast: Forecast | None = None  # per test row probabilities, when the run kept them (calibration)

    @property
    def test_correct(self) -> int:
        """Test rows right: an integer, so that equal gaps compare equal (in floats 0.85 - 0.8 != 0.9 - 0.85)."""
        return round(self.test_accuracy * self.test_rows)


def load_runs(paths: list) -> list[ModelRun]:
    """Every model result in the given runs, after checking they may be pooled and compared."""
    run_dirs = expand_run_dirs(paths)
    configs = {run_dir: _read_config(run_dir) for run_dir in run_dirs}
    check_comparable(configs)
    names = llm_names({d: c for d, c in configs.items() if run_kind(d) is not RunKind.BASELINES})
    read = steps(run_dirs, "report: runs read")
    results = [r for run_dir in read for r in _model_runs(run_dir, names.get(run_dir))]
    seen: dict[tuple, Path] = {}
    for r in results:
        if (r.model, r.fingerprint) in seen:
            raise FaultLLMError(
                f"{r.model} appears twice on one split ({seen[(r.model, r.fingerprint)]} and {r.run_dir}): "
                "repeated runs are pooled over seeds, so give each split once"
            )
        seen[(r.model, r.fingerprint)] = r.run_dir
    return results


def _read_config(run_dir: Path) -> dict:
    for name in ("metrics.json", "split.json", "config.yaml"):
        if not (run_dir / name).exists():
            raise FaultLLMError(f"{run_dir}: not a finished faultllm train/baselines run (no {name})")
    return _flatten(read_config_tree(run_dir))


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def check_comparable(configs: dict[Path, dict]) -> None:
    """The data config agrees across all runs, and the baselines runs agree on everything, except for
    the seed and the training-set size. (LLM runs that differ become separate rows: `llm_names`.)"""
    data_keys = lambda config: {k: v for k, v in config.items() if k.startswith("data.")}  # noqa: E731
    _refuse_differences(configs, data_keys, "different data configs")
    baselines = {d: c for d, c in configs.items() if run_kind(d) is RunKind.BASELINES}
    if baselines:
        _refuse_differences(baselines, lambda config: config, "configs that differ in more than the seed")


def llm_names(configs: dict[Path, dict]) -> dict[Path, str]:
    """Train runs are pooled when their configs agree but for the seed and training-set size; runs that
    differ (another model, prompt.feature_order, learning rate) are named by what sets them apart."""
    settings = {d: _comparable(c) for d, c in configs.items()}
    differing = sorted(
        {k for a in settings.values() for b in settings.values() for k in set(a) & set(b) if a[k] != b[k]}
        - {"model.path", "model.build"}
    )
    names = {}
    for run_dir, config in settings.items():
        shown = [Path(str(config.get("model.path") or "tiny")).name]
        shown += [f"{SHORT_NAMES.get(key, key)}={config[key]}" for key in differing if _telling(key, config)]
        names[run_dir] = f"LLM ({', '.join(shown)})"
    return names


def _telling(key: str, config: dict) -> bool:
    """A differing key worth naming for this run (how shots are chosen says nothing without shots)."""
    return key in config and not (key == "prompt.shot_selection" and not config.get("prompt.shots"))


def _refuse_differences(configs: dict[Path, dict], view, what: str) -> None:
    (first_dir, first), *rest = [(d, _comparable(view(c))) for d, c in configs.items()]
    for run_dir, config in rest:
        for key in sorted(set(first) & set(config)):  # a key only one run has came with a later faultllm
            if first.get(key) != config.get(key):
                raise FaultLLMError(
                    f"cannot pool runs made with {what}: {key} is {first.get(key)!r} in {first_dir} and "
                    f"{config.get(key)!r} in {run_dir} (only {' and '.join(VARYING)} may differ)"
                )


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VARYING + IGNORED and not k.startswith("hydra.")}


def _forecast(predictions: pd.DataFrame | None, answered: str, prefix: str, labels: list[str]) -> Forecast | None:
    """The probability columns `prefix<label>` of predictions.csv, when the run wrote them (restricted
    scoring; baselines runs since they are written) and every answer is a label."""
    columns = [f"{prefix}{label}" for label in labels]
    if predictions is None or not set(columns) <= set(predictions):
        return None
    index = {label: i for i, label in enumerate(labels)}
    answers, truth = predictions[answered].map(index), predictions["label"].map(index)
    if answers.isna().any() or truth.isna().any():
        return None
    probabilities = predictions[columns].astype(np.float64).to_numpy()
    return Forecast(probabilities, truth.to_numpy(int), answers.to_numpy(int))


def _model_runs(run_dir: Path, llm_name: str | None) -> list[ModelRun]:
    split = SplitSummary.read(run_dir / "split.json")
    labels = [str(label) for label in split.labels]
    common = {
        "run_dir": run_dir,
        "seed": int(split.seed),
        "train_rows": sum(split.rows["train"].values()),
        "test_rows": sum(split.rows["test"].values()),
        "fingerprint": split.split_fingerprint,
    }
    predictions = None
    if (run_dir / "predictions.csv").exists():  # as text: an unparsed generation ("") must not turn 1 into 1.0
        predictions = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
    correct = lambda column: (  # noqa: E731
        None if predictions is None else (predictions[column] == predictions["label"]).to_numpy()
    )
    if run_kind(run_dir) is not RunKind.BASELINES:  # an LLM: a train run or an HPO refit
        llm = TrainMetrics.read(run_dir / "metrics.json")
        return [ModelRun(llm_name, "llm", train_accuracy=llm.train.accuracy, test_accuracy=llm.test.accuracy,
                         test_macro_f1=llm.test.macro_f1, seconds=llm.train_seconds,
                         correct=correct("predicted"), forecast=_forecast(predictions, "predicted", "prob_", labels),
                         **common)]  # fmt: skip
    return [
        ModelRun(NAMES.get(key, key), "baseline", train_accuracy=m.train_accuracy, test_accuracy=m.test_accuracy,
                 test_macro_f1=m.test_macro_f1, seconds=m.fit_seconds,
                 correct=correct(key) if predictions is not None and key in predictions else None,
                 forecast=_forecast(predictions, key, f"{key}_prob_", labels), **common)
        for key, m in BaselinesMetrics.read(run_dir / "metrics.json").models.items()
    ]  # fmt: skip


def runs_table(results: list[ModelRun]) -> pd.DataFrame:
    """One row per model per run (what `aggregate` summarizes)."""
    return pd.DataFrame([{
        "Model": r.model, "Train rows": r.train_rows, "Seed": r.seed, "Test rows": r.test_rows,
        "Train Accuracy": r.train_accuracy,
        "Test Accuracy": r.test_accuracy, "Test macro-F1": r.test_macro_f1, "Seconds": r.seconds,
        "Split": r.fingerprint, "Run": str(r.run_dir),
    } for r in results])  # fmt: skip


def interval(values: np.ndarray, rows: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a score in [0, 1] (accuracy, macro-F1) over seeds; sd and the interval are
    NaN for one run. The interval is `interval_bounds`'s."""
    values, rows = np.asarray(values, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    low, high = interval_bounds(values[None, :], rows, level)
    return mean, float(values.std(ddof=1)), float(low[0]), float(high[0])


def interval_bounds(values: np.ndarray, rows: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The interval of the mean over seeds of each row of `values` (replicates, seeds), vectorised for
    scripts/check_intervals.py: the hull of two intervals, clipped to [0, 1].

    - the t-interval of the mean on the raw scale over seeds, its variance floored at one seed's binomial
      test-row variance p(1 - p)/n (p: the pooled accuracy shrunk as (right + 2)/(rows + 4); n: the mean
      test rows): it covers the spread between seeds (new split, new model) and contains the mean, and
      seeds that happen to tie do not make it narrower than their test rows allow;
    - the Clopper-Pearson interval of the test rows pooled over the seeds (round(sum v*n) right of sum n):
      exact, so it covers near 0 and 1 where a t-interval is symmetric and the counts are skewed.
    """
    from scipy import stats

    values, rows = np.atleast_2d(values), np.broadcast_to(np.asarray(rows, dtype=np.float64), values.shape[1:])
    seeds = values.shape[1]
    right, total = np.round(values @ rows), rows.sum()
    shrunk = (right + 2) / (total + 4)
    variance = np.maximum(values.var(axis=1, ddof=1), shrunk * (1 - shrunk) / rows.mean())
    half = stats.t.ppf((1 + level) / 2, seeds - 1) * np.sqrt(variance / seeds)
    exact_low, exact_high = clopper_pearson(right, total, level)
    mean = values.mean(axis=1)
    return np.clip(np.minimum(mean - half, exact_low), 0, 1), np.clip(np.maximum(mean + half, exact_high), 0, 1)


def clopper_pearson(right: np.ndarray, total: float, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The exact binomial interval of right / total (0 and 1 at the ends, where the Beta is undefined)."""
    from scipy import stats

    alpha = 1 - level
    with np.errstate(invalid="ignore"):
        low = np.where(right > 0, stats.beta.ppf(alpha / 2, right, total - right + 1), 0.0)
        high = np.where(right < total, stats.beta.ppf(1 - alpha / 2, right + 1, total - right), 1.0)
    return low, high


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and training-set size: runs, and mean / sd / 95% interval of test accuracy and macro-F1."""
    rows = []
    for (model, train_rows), group in runs.groupby(["Model", "Train rows"], sort=False):
        row = {"Model": model, "Train rows": train_rows, "Runs": len(group)}
        for column, key in (("Test Accuracy", "test_accuracy"), ("Test macro-F1", "test_macro_f1")):
            mean, sd, low, high = interval(group[column].to_numpy(), group["Test rows"].to_numpy())
            row |= {f"{key}_mean": mean, f"{key}_sd": sd, f"{key}_ci_low": low, f"{key}_ci_high": high}
        row |= {"train_accuracy_mean": group["Train Accuracy"].mean(), "seconds_mean": group["Seconds"].mean()}
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["Train rows"], kind="stable").reset_index(drop=True)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """(rows only A gets right, rows only B gets right, exact McNemar p-value) on the same test rows."""
    from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar

    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(~a_correct & b_correct))
    both = int(np.sum(a_correct & b_correct))
    neither = int(np.sum(~a_correct & ~b_correct))
    result = statsmodels_mcnemar([[both, only_a], [only_b, neither]], exact=True)
    return only_a, only_b, float(result.pvalue)


def _compared(results: list[ModelRun]) -> list[list[tuple[ModelRun, ModelRun]]]:
    """Each LLM against each other LLM (fine-tuned against prompted), then against each baseline: the
    pairs of runs on a shared split (same fingerprint), one list per compared pair of models."""
    llms = sorted({r.model for r in results if r.kind == "llm"})
    baselines = [m for m in dict.fromkeys(r.model for r in results if r.kind == "baseline")]
    by_key = {(r.model, r.fingerprint): r for r in results}
    compared = [(a, b) for i, a in enumerate(llms) for b in llms[i + 1 :]] + [(a, b) for a in llms for b in baselines]
    return [
        [(r, by_key[(other, r.fingerprint)]) for r in results if r.model == llm and (other, r.fingerprint) in by_key]
        for llm, other in compared
    ]


def _with_holm(rows: list[dict], order: list[str]) -> pd.DataFrame:
    """The rows as a table, "p-value (Holm)" adjusting every p-value in it as one family (statsmodels)."""
    from statsmodels.stats.multitest import multipletests

    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p-value (Holm)"] = multipletests(table["p-value"].to_numpy(), method="holm")[1]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def paired_tests(results: list[ModelRun]) -> pd.DataFrame:
    """The headline: per compared pair and training-set size sharing two or more splits, the mean over seeds
    of the accuracy gap A - B, its 95% interval (`gap_interval`) and the sign-flip permutation test over
    seeds (`seed_test`); the seed is the unit. Holm over the rows of this table."""
    rows = [row for pairs in _compared(results) for row in _seed_rows(pairs)]
    return _with_holm(rows, ["A", "Train rows"])


def within_split_tests(results: list[ModelRun]) -> pd.DataFrame:
    """Within-split evidence: exact McNemar on each shared split's test rows (about those rows and that
    fine-tune, not about the method), Holm over the rows of this table."""
    rows = [
        _mcnemar_row(a, b)
        for pairs in _compared(results)
        for a, b in pairs
        if a.correct is not None and b.correct is not None
    ]
    table = _with_holm(rows, ["A", "Train rows", "Seed"])
    return table if table.empty else table.astype({"A right only": int, "B right only": int})


def _mcnemar_row(a: ModelRun, b: ModelRun) -> dict:
    if len(a.correct) != len(b.correct):
        raise FaultLLMError(f"{a.run_dir} and {b.run_dir}: same split fingerprint but different test row counts")
    only_a, only_b, p_value = mcnemar(a.correct, b.correct)
    return {
        "A": a.model, "B": b.model, "Train rows": a.train_rows, "Seed": a.seed, "Test": "McNemar (exact)",
        "n": len(a.correct), "A right only": only_a, "B right only": only_b,
        "Accuracy A - B": a.test_accuracy - b.test_accuracy, "p-value": p_value,
    }  # fmt: skip


def _seed_rows(pairs: list[tuple[ModelRun, ModelRun]]) -> list[dict]:
    rows = []
    for train_rows in sorted({a.train_rows for a, _ in pairs}):
        shared = [(a, b) for a, b in pairs if a.train_rows == train_rows]
        if len(shared) < 2:
            continue
        gaps = [Fraction(a.test_correct - b.test_correct, a.test_rows) for a, b in shared]
        low, high = gap_interval(shared)
        rows.append({
            "A": shared[0][0].model, "B": shared[0][1].model, "Train rows": train_rows, "Test": SEED_TEST,
            "Seeds": ",".join(str(a.seed) for a, _ in shared), "n": len(shared),
            "Accuracy A - B": float(sum(gaps) / len(gaps)), "CI low": low, "CI high": high,
            "p-value": seed_test(gaps),
        })  # fmt: skip
    return rows


SEED_TEST = "sign-flip permutation over seeds"


def seed_test(gaps: list[Fraction]) -> float:
    """Two-sided p-value of the per-seed accuracy gaps A - B: the share of the 2^seeds sign flips of the gaps
    whose sum is at least as far from 0 as the observed sum (exact; 65,536 random flips beyond 16 seeds).

    Under "no difference" each seed's gap is as likely negative as positive. One rule for every set of gaps:
    the smallest p-value is 2/2^seeds (0.25 with 3 seeds, 0.031 with 6), reached when every gap has
    the same sign, so a consistent gap is never weaker evidence than a noisier one of the same mean, and
    moving a gap toward the mean from the side opposite to it never raises p. The gaps are compared as
    exact integers (correct rows over a common denominator): equal gaps tie exactly.
    """
    scale = math.lcm(*(gap.denominator for gap in gaps))
    counts = np.array([int(gap * scale) for gap in gaps], dtype=object)
    observed = abs(sum(counts))
    if observed == 0:
        return 1.0
    if len(gaps) <= 16:
        flips = 1 - 2 * ((np.arange(2 ** len(gaps))[:, None] >> np.arange(len(gaps))) & 1)
    else:
        flips = np.random.default_rng(0).choice([-1, 1], size=(65536, len(gaps)))
    sums = np.abs((flips.astype(object) * counts).sum(axis=1))
    return float(np.mean(sums >= observed))


def gap_interval(pairs: list[tuple[ModelRun, ModelRun]], level: float = 0.95) -> tuple[float, float]:
    """95% interval of the mean gap A - B over seeds: the t-interval on the raw scale, its variance floored
    at the mean over seeds of one seed's test-row variance of the gap (`_gap_variance`), clipped to
    [-1, 1]: it contains the mean gap and never has zero width."""
    from scipy import stats

    gaps = np.array([a.test_accuracy - b.test_accuracy for a, b in pairs])
    floor = float(np.mean([_gap_variance(a, b) for a, b in pairs]))
    half = stats.t.ppf((1 + level) / 2, len(gaps) - 1) * math.sqrt(max(gaps.var(ddof=1), floor) / len(gaps))
    return max(-1.0, gaps.mean() - half), min(1.0, gaps.mean() + half)


def _gap_variance(a: ModelRun, b: ModelRun) -> float:
    """The binomial variance of one split's accuracy gap over its test rows, never 0: from the rows only one
    of the two got right, (discordant + 1)/n^2, where both runs kept their rows (McNemar's view, an upper
    bound); else from the accuracies as if A and B were independent, (pA(1 - pA) + pB(1 - pB))/n with p
    shrunk as (right + 1)/(n + 2) (wider than paired rows need)."""
    if a.correct is not None and b.correct is not None and len(a.correct) == len(b.correct):
        return (int(np.sum(a.correct != b.correct)) + 1) / len(a.correct) ** 2
    shrunk = lambda r: (r.test_correct + 1) / (r.test_rows + 2)  # noqa: E731
    return (shrunk(a) * (1 - shrunk(a)) + shrunk(b) * (1 - shrunk(b))) / a.test_rows


def _with_forecasts(results: list[ModelRun]) -> dict[tuple[str, int], list[ModelRun]]:
    """(model, training rows) -> its runs that kept per-row probabilities, in the order given."""
    groups: dict[tuple[str, int], list[ModelRun]] = {}
    for r in results:
        if r.forecast is not None:
            groups.setdefault((r.model, r.train_rows), []).append(r)
    return groups


def without_forecasts(results: list[ModelRun]) -> list[str]:
    """Models with no run that kept probabilities (eval.mode=generate; runs written before they were kept)."""
    kept = {model for model, _ in _with_forecasts(results)}
    return list(dict.fromkeys(r.model for r in results if r.model not in kept))


def calibration_summary(results: list[ModelRun]) -> pd.DataFrame:
    """Per model and training-set size: the ECE of the test rows pooled over seeds (what the reliability
    diagram draws) and, beside it, the ECE a perfectly calibrated model would show with those confidences
    at that many rows (`calibrated_ece`); mean and sd over seeds of the per-seed ECE, Brier score, NLL, mean
    confidence and accuracy; and how many rows gave their true label probability 0 (an infinite NLL)."""
    rows = []
    for (model, train_rows), runs in _with_forecasts(results).items():
        pooled = Forecast.pooled([r.forecast for r in runs])
        per_seed = pd.DataFrame([scores(r.forecast) for r in runs])
        row = {
            "Model": model, "Train rows": train_rows, "Runs": len(runs), "Rows": len(pooled.truth),
            "ece_pooled": expected_calibration_error(pooled.confidence, pooled.correct),
            "ece_calibrated": calibrated_ece(pooled.confidence), "zero_p_true": int(per_seed.pop("zero_p_true").sum()),
        }  # fmt: skip
        rows.append(row | _over_seeds(per_seed))
    return pd.DataFrame(rows)


def _over_seeds(per_seed: pd.DataFrame) -> dict[str, float]:
    """key_mean and key_sd over the seeds (rows) of each column; sd NaN for one seed (and for an infinite NLL)."""
    with np.errstate(invalid="ignore"):
        return {
            name: value
            for key in per_seed
            for name, value in ((f"{key}_mean", float(per_seed[key].mean())), (f"{key}_sd", float(per_seed[key].std())))
        }


def zero_probability_table(results: list[ModelRun]) -> pd.DataFrame:
    """Where a probability of 0 was given to the true label: model, run and row of predictions.csv."""
    found = [
        {"Model": r.model, "Train rows": r.train_rows, "Seed": r.seed, "Run": str(r.run_dir), "Row": int(row)}
        for runs in _with_forecasts(results).values()
        for r in runs
        for row in zero_probability_rows(r.forecast)
    ]
    return pd.DataFrame(found, columns=["Model", "Train rows", "Seed", "Run", "Row"])


def reliability_curves(results: list[ModelRun], train_rows: int) -> dict[str, pd.DataFrame]:
    """model -> the reliability diagram's equal-mass bins over its test rows pooled over seeds."""
    return {
        model: reliability(pooled.confidence, pooled.correct)
        for (model, rows), runs in _with_forecasts(results).items()
        if rows == train_rows
        for pooled in [Forecast.pooled([r.forecast for r in runs])]
    }


# The coverages at which per-seed risk-coverage curves are read to draw their mean and spread.
COVERAGE_GRID = np.arange(1, 101) / 100


def selective_summary(results: list[ModelRun]) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Risk-coverage on each seed's test rows: (per model and training-set size: mean and sd over seeds of the
    area under accuracy-coverage, AURC and accuracy at 50/80/100% coverage; per model and size, the curve at
    the coverages of COVERAGE_GRID: the mean accuracy over seeds and the lowest and highest seed's)."""
    rows, curves = [], {}
    for (model, train_rows), runs in _with_forecasts(results).items():
        per_seed = pd.DataFrame([selective_scores(r.forecast.confidence, r.forecast.correct) for r in runs])
        rows_scored = sum(len(r.forecast.truth) for r in runs)
        rows.append({"Model": model, "Train rows": train_rows, "Runs": len(runs), "Rows": rows_scored} | _over_seeds(per_seed))
        on_grid = np.array([_on_grid(risk_coverage(r.forecast.confidence, r.forecast.correct)) for r in runs])
        curves[(model, train_rows)] = pd.DataFrame({
            "coverage": COVERAGE_GRID, "accuracy": on_grid.mean(axis=0),
            "accuracy_low": on_grid.min(axis=0), "accuracy_high": on_grid.max(axis=0),
        })  # fmt: skip
    return pd.DataFrame(rows), curves


def _on_grid(curve: pd.DataFrame) -> np.ndarray:
    """A risk-coverage curve's accuracy at each coverage c of the grid: with ceil(c N) rows answered."""
    answered = np.ceil(COVERAGE_GRID * len(curve) - 1e-9).astype(int)
    return curve["accuracy"].to_numpy()[np.maximum(answered, 1) - 1]
