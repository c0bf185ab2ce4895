"""What a person reads: the end-of-run summary, tables as Markdown/CSV, and the cross-run comparison."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from faultllm.runtime.files import write_csv, write_text

log = logging.getLogger(__name__)


def print_summary(title: str, items: Mapping[str, object]) -> None:
    width = max(len(key) for key in items)
    lines = [title, "-" * len(title)] + [f"{key:<{width}}  {value}" for key, value in items.items()]
    log.info("\n".join(lines))


def print_table(title: str, table: pd.DataFrame) -> None:
    log.info(f"{title}\n{'-' * len(title)}\n{table.to_string(index=False)}")


def markdown(table: pd.DataFrame) -> str:
    """A pandas DataFrame as a GitHub Markdown table (no `tabulate` dependency)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"  # 0.883, 0.3022, 0.00515: small learning rates keep their digits
    return str(value)


def write_table(table: pd.DataFrame, stem: Path) -> None:
    """stem.md and stem.csv."""
    stem = Path(stem)
    write_text(stem.with_suffix(".md"), markdown(table))
    write_csv(table, stem.with_suffix(".csv"))


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """`statistics.aggregate`'s numbers as people read them: mean ± sd and the 95% interval over seeds
    (one run has neither, and says so)."""

    def ci(row, key: str) -> str:
        low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
        return "n/a (1 seed)" if pd.isna(low) else f"[{low:.3f}, {high:.3f}]"

    return pd.DataFrame({
        "Model": summary["Model"], "Train rows": summary["Train rows"], "Runs": summary["Runs"],
        "Test Accuracy": _mean_sd(summary, "test_accuracy"),
        "95% CI": [ci(r, "test_accuracy") for _, r in summary.iterrows()],
        "Test macro-F1": _mean_sd(summary, "test_macro_f1"),
        "Train Accuracy": summary["train_accuracy_mean"].round(3),
        "Seconds": summary["seconds_mean"].round(2),
    })  # fmt: skip


# One line above the tests: what a claim about a method rests on.
UNIT = (
    "Unit of replication: the seed (a new split and a new fine-tune); n counts seeds, and the interval and "
    "p-value are about the method, not one split's rows."
)
WITHIN_SPLIT = (
    "Within-split evidence: exact McNemar on one split's test rows, about that split and that fine-tune only "
    "(a new seed may reverse it); Holm over this table."
)


def tests_display(tests: pd.DataFrame) -> pd.DataFrame:
    """Across-seed tests as people read them: mean gap and its interval to 3 decimals, p-values (raw and
    Holm-adjusted) to 2 significant digits."""
    return pd.DataFrame({
        "A": tests["A"], "B": tests["B"], "Train rows": tests["Train rows"], "Seeds": tests["Seeds"], "n": tests["n"],
        "Accuracy A - B (mean)": tests["Accuracy A - B"].map(lambda d: f"{d:+.3f}"),
        "95% CI": [f"[{low:+.3f}, {high:+.3f}]" for low, high in zip(tests["CI low"], tests["CI high"], strict=True)],
        "Test": tests["Test"], **_p_values(tests),
    })  # fmt: skip


def within_split_display(tests: pd.DataFrame) -> pd.DataFrame:
    """Per-split McNemar rows as people read them."""
    return tests.assign(**{"Accuracy A - B": tests["Accuracy A - B"].map(lambda d: f"{d:+.3f}")}, **_p_values(tests))


def _p_values(tests: pd.DataFrame) -> dict[str, pd.Series]:
    return {name: tests[name].map(lambda p: f"{p:.2g}") for name in ("p-value", "p-value (Holm)")}


def _mean_sd(table: pd.DataFrame, key: str) -> list[str]:
    return [
        f"{mean:.3f}" if pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"
        for mean, sd in zip(table[f"{key}_mean"], table[f"{key}_sd"], strict=True)
    ]


def calibration_display(summary: pd.DataFrame) -> pd.DataFrame:
    """`pooled_calibration.calibration_summary` as people read it: pooled ECE beside a calibrated model's at that size,
    then mean ± sd over seeds."""
    nll = [
        f"inf ({zero} rows p=0)" if zero else shown
        for shown, zero in zip(_mean_sd(summary, "nll"), summary["zero_p_true"], strict=True)
    ]
    return pd.DataFrame({
        "Model": summary["Model"], "Train rows": summary["Train rows"], "Runs": summary["Runs"], "Rows": summary["Rows"],
        "ECE pooled": summary["ece_pooled"].map("{:.3f}".format),
        "ECE if calibrated": summary["ece_calibrated"].map("{:.3f}".format),
        "ECE per seed": _mean_sd(summary, "ece"), "Brier": _mean_sd(summary, "brier"), "NLL": nll,
        "Mean confidence": _mean_sd(summary, "confidence"), "Accuracy": _mean_sd(summary, "accuracy"),
    })  # fmt: skip


def selective_display(summary: pd.DataFrame) -> pd.DataFrame:
    """`pooled_calibration.selective_summary` as people read it: mean ± sd over seeds, 3 decimals."""
    return pd.DataFrame({
        "Model": summary["Model"], "Train rows": summary["Train rows"], "Runs": summary["Runs"], "Rows": summary["Rows"],
        "Area (accuracy-coverage)": _mean_sd(summary, "area"), "AURC": _mean_sd(summary, "aurc"),
        "Accuracy at 50%": _mean_sd(summary, "accuracy_at_50"), "Accuracy at 80%": _mean_sd(summary, "accuracy_at_80"),
        "Accuracy at 100%": _mean_sd(summary, "accuracy_at_100"),
    })  # fmt: skip
