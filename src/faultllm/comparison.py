"""Comparing models fairly across runs: pool repeated seeds, put intervals on them, test paired differences,
and ask whether their probabilities can be trusted.

`load_runs` reads finished train/baselines run directories (a Hydra multirun directory counts as
its runs), refuses runs made on different data configs, and pools only runs whose configs differ
in nothing but the seed and the training-set size (differing LLM runs, e.g. fine-tuned and few-shot,
become rows of their own). `aggregate` gives each model's mean, sd and 95% interval (a t-interval on
the logit scale: always inside [0, 1]) over seeds per training-set size; `paired_tests` compares each
LLM with each other LLM and each baseline on the very same test rows (exact McNemar per split) and
across seeds (paired t-test on the per-seed gaps in correct test rows; the exact sign test where every
seed has the same gap), with Holm-adjusted p-values over the whole table beside the raw ones.
`calibration_summary` and `selective_summary` score the per-row probabilities (calibration.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.baselines import NAMES
from faultllm.calibration import Forecast, reliability, risk_coverage, scores, selective_scores
from faultllm.errors import FaultLLMError
from faultllm.progress import steps
from faultllm.results import BaselineMetrics, TrainMetrics
from faultllm.rundir import expand_run_dirs, read_config_tree, read_json, run_job

# Keys that may differ between runs pooled into one row: the seed, and the training-set size (a curve).
VARYING = ("seed", "data.train_size")
# Keys that do not change a model's numbers (which baselines a run fitted, how it reported).
IGNORED = (
    "progress", "cache_dir", "data.cache_dir", "hpo.worker_index", "run_dir", "trainer.report_to", "trainer.resume",
    "eval.batch_size", "eval.generate_batch_size", "baselines.models", "baselines.importances_for",
    "baselines.permutation_repeats",
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
    names = llm_names({d: c for d, c in configs.items() if _kind(d) == "train"})
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


def _kind(run_dir: Path) -> str:
    """baselines, or train for an LLM run (a train run or an HPO refit)."""
    return "baselines" if run_job(run_dir) == "baselines" else "train"


def check_comparable(configs: dict[Path, dict]) -> None:
    """The data config agrees across all runs, and the baselines runs agree on everything, except for
    the seed and the training-set size. (LLM runs that differ become separate rows: `llm_names`.)"""
    data_keys = lambda config: {k: v for k, v in config.items() if k.startswith("data.")}  # noqa: E731
    _refuse_differences(configs, data_keys, "different data configs")
    baselines = {d: c for d, c in configs.items() if _kind(d) == "baselines"}
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
    split = read_json(run_dir / "split.json")
    labels = [str(label) for label in split["labels"]]
    common = {
        "run_dir": run_dir,
        "seed": int(split["seed"]),
        "train_rows": sum(split["rows"]["train"].values()),
        "test_rows": sum(split["rows"]["test"].values()),
        "fingerprint": split["split_fingerprint"],
    }
    predictions = None
    if (run_dir / "predictions.csv").exists():  # as text: an unparsed generation ("") must not turn 1 into 1.0
        predictions = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
    correct = lambda column: (  # noqa: E731
        None if predictions is None else (predictions[column] == predictions["label"]).to_numpy()
    )
    if _kind(run_dir) == "train":
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
        for key, m in BaselineMetrics.read_all(run_dir / "metrics.json").items()
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
    NaN for one run.

    Mean and sd are the values' own. The interval is the t-interval of the mean on the logit scale,
    mapped back: it always lies inside (0, 1), where the plain t-interval of two seeds (t = 12.7) ran
    to [-1.1, 2.7]. Each score is first moved in by half a test row, (v * n + 0.5) / (n + 1) with n that
    run's test rows (the empirical logit), so that 0 and 1 have finite logits. Equal values give the
    point itself.
    """
    from scipy import stats
    from scipy.special import expit, logit

    values, rows = np.asarray(values, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(values.std(ddof=1))
    logits = logit((values * rows + 0.5) / (rows + 1))
    spread = float(logits.std(ddof=1)) / np.sqrt(len(values))
    if not sd or not spread:  # the same score on every seed (macro-F1 may differ by float noise only)
        return mean, sd, mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=float(logits.mean()), scale=spread)
    return mean, sd, float(expit(low)), float(expit(high))


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


def paired_tests(results: list[ModelRun]) -> pd.DataFrame:
    """Each LLM against each other LLM (fine-tuned against prompted) and each baseline: exact McNemar on every
    shared split, and a test over seeds (per
    training-set size) where two or more splits are shared. "p-value (Holm)" adjusts every p-value in
    the table as one family (Holm's step-down; statsmodels), the raw "p-value" beside it."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    llms = sorted({r.model for r in results if r.kind == "llm"})
    baselines = [m for m in dict.fromkeys(r.model for r in results if r.kind == "baseline")]
    by_key = {(r.model, r.fingerprint): r for r in results}
    compared = [(a, b) for i, a in enumerate(llms) for b in llms[i + 1 :]] + [(a, b) for a in llms for b in baselines]
    for llm, other in compared:  # LLM against LLM (fine-tuned against prompted), then against each baseline
        pairs = [
            (r, by_key[(other, r.fingerprint)]) for r in results if r.model == llm and (other, r.fingerprint) in by_key
        ]
        rows += [_mcnemar_row(a, b) for a, b in pairs if a.correct is not None and b.correct is not None]
        rows += _seed_rows(pairs)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p-value (Holm)"] = multipletests(table["p-value"].to_numpy(), method="holm")[1]
    table = table.astype({"A right only": "Int64", "B right only": "Int64"})
    return table.sort_values(["A", "Train rows"], kind="stable").reset_index(drop=True)


def _mcnemar_row(a: ModelRun, b: ModelRun) -> dict:
    if len(a.correct) != len(b.correct):
        raise FaultLLMError(f"{a.run_dir} and {b.run_dir}: same split fingerprint but different test row counts")
    only_a, only_b, p_value = mcnemar(a.correct, b.correct)
    return {
        "A": a.model, "B": b.model, "Train rows": a.train_rows, "Test": "McNemar (exact)", "Seeds": str(a.seed),
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
        test, p_value = seed_test(gaps)
        rows.append({
            "A": shared[0][0].model, "B": shared[0][1].model, "Train rows": train_rows, "Test": test,
            "Seeds": ",".join(str(a.seed) for a, _ in shared), "n": len(shared), "A right only": None,
            "B right only": None, "Accuracy A - B": float(sum(gaps) / len(gaps)), "p-value": p_value,
        })  # fmt: skip
    return rows


def seed_test(gaps: list[Fraction]) -> tuple[str, float]:
    """(test, p-value) on the per-seed accuracy gaps A - B, exact fractions of the test rows.

    Where the gaps vary: a paired t-test, on integers (the gaps in correct rows over a common
    denominator). Where every seed has the same gap (likely with few seeds, as accuracies move in
    steps of 1/n_test) the t statistic is undefined, and on float accuracies it came out as ~1e15
    from rounding noise: the exact sign test instead, whose smallest p-value is 2 / 2^seeds.
    """
    from scipy import stats

    if len(set(gaps)) > 1:
        scale = math.lcm(*(gap.denominator for gap in gaps))
        return "paired t over seeds", float(stats.ttest_1samp([int(gap * scale) for gap in gaps], 0.0).pvalue)
    if gaps[0] == 0:
        return "sign test over seeds (exact)", 1.0
    return "sign test over seeds (exact)", float(stats.binomtest(len(gaps), len(gaps), 0.5).pvalue)


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
    """Per model and training-set size: mean and sd over seeds of ECE, Brier score and NLL on the test rows
    (calibration.py), with the mean confidence of the answers and their accuracy."""
    rows = []
    for (model, train_rows), runs in _with_forecasts(results).items():
        per_seed = pd.DataFrame([scores(r.forecast) for r in runs])
        row = {"Model": model, "Train rows": train_rows, "Runs": len(runs)}
        for key in per_seed:
            row |= {f"{key}_mean": float(per_seed[key].mean()), f"{key}_sd": float(per_seed[key].std(ddof=1))}
        rows.append(row)
    return pd.DataFrame(rows)


def reliability_curves(results: list[ModelRun], train_rows: int) -> dict[str, pd.DataFrame]:
    """model -> the reliability diagram's equal-mass bins over its test rows pooled over seeds."""
    return {
        model: reliability(pooled.confidence, pooled.correct)
        for (model, rows), runs in _with_forecasts(results).items()
        if rows == train_rows
        for pooled in [Forecast.pooled([r.forecast for r in runs])]
    }


def selective_summary(results: list[ModelRun]) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Risk-coverage over each model's test rows pooled over seeds: (per model and training-set size: the
    area under accuracy-coverage, AURC and accuracy at 50/80/100% coverage; the curves)."""
    rows, curves = [], {}
    for (model, train_rows), runs in _with_forecasts(results).items():
        pooled = Forecast.pooled([r.forecast for r in runs])
        curves[(model, train_rows)] = risk_coverage(pooled.confidence, pooled.correct)
        numbers = selective_scores(pooled.confidence, pooled.correct)
        rows.append({"Model": model, "Train rows": train_rows, "Runs": len(runs), "Rows": len(pooled.truth)} | numbers)
    return pd.DataFrame(rows), curves
