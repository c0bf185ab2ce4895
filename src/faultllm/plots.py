"""Every PNG faultllm writes, drawn with one matplotlib set-up (headless Agg backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


@contextmanager
def figure(path: Path, size: tuple[float, float], title: str | None = None, ncols: int = 1) -> Iterator:
    """Yield (fig, axes) and save the figure to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield fig, axes
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close("all")


def confusion_matrix(matrix: list[list[int]], labels: list, path: Path, title: str) -> None:
    values = np.asarray(matrix)
    names = [str(label) for label in labels]
    with figure(path, (1.2 + 0.6 * len(labels), 1.0 + 0.6 * len(labels))) as (_, ax):
        ax.imshow(values, cmap="Blues")
        ax.set_xticks(range(len(labels)), names)
        ax.set_yticks(range(len(labels)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        for (i, j), count in np.ndenumerate(values):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > values.max() / 2 else "black")


def learning_curves(history: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy per epoch for every evaluated split (the study's Figures 4.1 / 4.2)."""
    epochs = [row["epoch"] for row in history]
    splits = sorted({key.rsplit("_", 1)[0] for row in history for key in row if key.endswith("_accuracy")})
    with figure(path, (10, 3.8), title=title, ncols=2) as (_, axes):
        for metric, ax in zip(("loss", "accuracy"), axes, strict=True):
            for split in splits:
                ax.plot(epochs, [row.get(f"{split}_{metric}") for row in history], marker="o", label=split)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()


def comparison(table: pd.DataFrame, path: Path) -> None:
    """Test accuracy and macro-F1 per model, side by side."""
    with figure(path, (max(5, 1.1 * len(table)), 3.8)) as (_, ax):
        positions = range(len(table))
        ax.bar([p - 0.2 for p in positions], table["Test Accuracy"], width=0.4, label="test accuracy")
        ax.bar([p + 0.2 for p in positions], table["Test macro-F1"], width=0.4, label="test macro-F1")
        ax.set_xticks(list(positions), table["Model"], rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)


def attribution(table: pd.DataFrame, path: Path, top: int = 20) -> None:
    shown = table.head(top).iloc[::-1]
    with figure(path, (6.5, 0.3 * len(shown) + 1.2)) as (_, ax):
        ax.barh(shown["feature"].astype(str), shown["mean_abs_effect"])
        ax.set_xlabel("mean |change in p(predicted label)| when the feature is occluded")
        ax.set_title("LLM feature attribution (occlusion)")


def optuna_plot(draw: Callable[[], object], path: Path) -> None:
    """Save one of optuna.visualization.matplotlib's plots, drawn by `draw()`, at a readable size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        draw()
        plt.gcf().set_size_inches(7, 4)
        plt.tight_layout()
        plt.savefig(path, dpi=120)
    finally:
        plt.close("all")
