"""What a person reads: the end-of-run summary, tables as Markdown/CSV, plots as PNG."""

from __future__ import annotations

from collections.abc import Mapping


def print_summary(title: str, items: Mapping[str, object]) -> None:
    width = max(len(key) for key in items)
    lines = [title, "-" * len(title)] + [f"{key:<{width}}  {value}" for key, value in items.items()]
    print("\n".join(lines), flush=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: list[dict], path, title: str) -> None:
    """Loss and accuracy per epoch for every evaluated split (the study's Figures 4.1 / 4.2)."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    splits = sorted({key.rsplit("_", 1)[0] for row in history for key in row if key.endswith("_accuracy")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for metric, ax in zip(("loss", "accuracy"), axes, strict=True):
        for split in splits:
            ax.plot(epochs, [row.get(f"{split}_{metric}") for row in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(table) -> str:
    """A pandas DataFrame as a GitHub Markdown table (no `tabulate` dependency)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"  # 0.883, 0.3022, 0.00515: small learning rates keep their digits
    return str(value)


def write_table(table, stem) -> None:
    """stem.md and stem.csv."""
    from pathlib import Path

    stem = Path(stem)
    stem.with_suffix(".md").write_text(markdown(table))
    table.to_csv(stem.with_suffix(".csv"), index=False)


def print_table(title: str, table) -> None:
    print(f"{title}\n{'-' * len(title)}\n{table.to_string(index=False)}", flush=True)


# ---------------------------------------------------------------- `faultllm report RUN_DIR...`


def collect(run_dirs: list) -> tuple[object, str]:
    """One row per model across baselines and train runs; refuses runs whose splits differ."""
    import json
    from pathlib import Path

    import pandas as pd

    from faultllm.baselines import NAMES
    from faultllm.errors import FaultLLMError

    rows, fingerprints = [], {}
    for run_dir in map(Path, run_dirs):
        metrics_path, split_path = run_dir / "metrics.json", run_dir / "split.json"
        if not metrics_path.exists() or not split_path.exists():
            raise FaultLLMError(
                f"{run_dir}: not a finished faultllm train/baselines run (no metrics.json / split.json)"
            )
        metrics = json.loads(metrics_path.read_text())
        fingerprints[str(run_dir)] = json.loads(split_path.read_text())["split_fingerprint"]
        if "test" in metrics and "train" in metrics:  # a `faultllm train` run
            config = (run_dir / "config.yaml").read_text()
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in config.splitlines()
                    if line.strip().startswith("path:") and "/" in line and "data" not in line
                ),
                "LLM",
            )
            rows.append({
                "Model": f"LLM ({Path(model).name})", "Train Accuracy": metrics["train"]["accuracy"],
                "Test Accuracy": metrics["test"]["accuracy"], "Test macro-F1": metrics["test"]["macro_f1"],
                "Seconds": metrics.get("train_seconds"), "Run": run_dir.name,
            })  # fmt: skip
        else:
            for name, m in metrics.items():
                rows.append({
                    "Model": NAMES.get(name, name), "Train Accuracy": m["train_accuracy"], "Test Accuracy": m["test_accuracy"],
                    "Test macro-F1": m["test_macro_f1"], "Seconds": m["fit_seconds"], "Run": run_dir.name,
                })  # fmt: skip
    if len(set(fingerprints.values())) > 1:
        shown = ", ".join(f"{d} ({f})" for d, f in fingerprints.items())
        raise FaultLLMError(f"runs were made on different data splits and cannot be compared: {shown}")
    return pd.DataFrame(rows), next(iter(fingerprints.values()))


def plot_comparison(table, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(table)), 3.8))
    positions = range(len(table))
    ax.bar([p - 0.2 for p in positions], table["Test Accuracy"], width=0.4, label="test accuracy")
    ax.bar([p + 0.2 for p in positions], table["Test macro-F1"], width=0.4, label="test macro-F1")
    ax.set_xticks(list(positions), table["Model"], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(run_dirs: list, out_dir) -> object:
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, fingerprint = collect(run_dirs)
    write_table(table, out_dir / "comparison")
    plot_comparison(table, out_dir / "comparison.png")
    print_table(f"comparison on split {fingerprint}", table)
    print(f"written to {out_dir}")
    return table
