"""What a person reads: the end-of-run summary, tables as Markdown/CSV, and the cross-run comparison."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from faultllm.baselines import NAMES
from faultllm.errors import FaultLLMError
from faultllm.rundir import read_json


def print_summary(title: str, items: Mapping[str, object]) -> None:
    width = max(len(key) for key in items)
    lines = [title, "-" * len(title)] + [f"{key:<{width}}  {value}" for key, value in items.items()]
    print("\n".join(lines), flush=True)


def print_table(title: str, table: pd.DataFrame) -> None:
    print(f"{title}\n{'-' * len(title)}\n{table.to_string(index=False)}", flush=True)


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
    stem.with_suffix(".md").write_text(markdown(table))
    table.to_csv(stem.with_suffix(".csv"), index=False)


def comparison_table(run_dirs: list) -> tuple[pd.DataFrame, str]:
    """One row per model across baselines and train runs; refuses runs whose splits differ."""
    rows, fingerprints = [], {}
    for run_dir in map(Path, run_dirs):
        metrics_path, split_path = run_dir / "metrics.json", run_dir / "split.json"
        if not metrics_path.exists() or not split_path.exists():
            raise FaultLLMError(
                f"{run_dir}: not a finished faultllm train/baselines run (no metrics.json / split.json)"
            )
        metrics = read_json(metrics_path)
        fingerprints[str(run_dir)] = read_json(split_path)["split_fingerprint"]
        rows += (
            _train_rows(run_dir, metrics)
            if "test" in metrics and "train" in metrics
            else _baseline_rows(run_dir, metrics)
        )
    if len(set(fingerprints.values())) > 1:
        shown = ", ".join(f"{d} ({f})" for d, f in fingerprints.items())
        raise FaultLLMError(f"runs were made on different data splits and cannot be compared: {shown}")
    return pd.DataFrame(rows), next(iter(fingerprints.values()))


def _train_rows(run_dir: Path, metrics: dict) -> list[dict]:
    config = (run_dir / "config.yaml").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in config.splitlines()
            if line.strip().startswith("path:") and "/" in line and "data" not in line
        ),
        "LLM",
    )
    return [{
        "Model": f"LLM ({Path(model).name})", "Train Accuracy": metrics["train"]["accuracy"],
        "Test Accuracy": metrics["test"]["accuracy"], "Test macro-F1": metrics["test"]["macro_f1"],
        "Seconds": metrics.get("train_seconds"), "Run": run_dir.name,
    }]  # fmt: skip


def _baseline_rows(run_dir: Path, metrics: dict) -> list[dict]:
    return [{
        "Model": NAMES.get(name, name), "Train Accuracy": m["train_accuracy"], "Test Accuracy": m["test_accuracy"],
        "Test macro-F1": m["test_macro_f1"], "Seconds": m["fit_seconds"], "Run": run_dir.name,
    } for name, m in metrics.items()]  # fmt: skip
