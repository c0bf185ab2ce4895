"""Intervals over seeds and paired tests, the seed being the unit of replication (docs/statistics.md says
what each number estimates and how it was checked).

`aggregate` gives each model's mean, sd and 95% interval over seeds per training-set size
(`interval_bounds`: checked by scripts/check_intervals.py); `paired_tests` compares each LLM with each
other LLM and each baseline across seeds on the same splits (mean gap, its interval, the sign-flip
permutation test, Holm over that table), `within_split_tests` on each split's rows (exact McNemar, Holm
over its own table).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd

from faultllm.compare.pooling import ModelRun
from faultllm.runtime.errors import FaultLLMError


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
