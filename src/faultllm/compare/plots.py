"""Every PNG faultllm writes, drawn with one matplotlib set-up (headless Agg backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.runtime.files import save_figure


@contextmanager
def figure(path: Path, size: tuple[float, float], title: str | None = None, ncols: int = 1, nrows: int = 1) -> Iterator:
    """Yield (fig, axes) and save the figure to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size)
    try:
        yield fig, axes
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    finally:
        plt.close("all")


def confusion_matrix(matrix: list[list[int]], labels: list, path: Path, title: str) -> None:
    values = np.asarray(matrix)
    names = [str(label) for label in labels]
    with figure(path, (2.0 + 0.6 * len(labels), 1.0 + 0.6 * len(labels))) as (fig, ax):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, label="rows", fraction=0.046, pad=0.04)
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
            whole_numbers(ax.xaxis)
            if len(epochs) == 1:  # one point: an epoch either side, not a range of fractions around it
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
            ax.grid(alpha=0.3)
            ax.legend()


def whole_numbers(axis) -> None:
    """Ticks at whole numbers only (epochs, trials)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def comparison(summary: pd.DataFrame, path: Path) -> None:
    """Mean test accuracy and macro-F1 per model, with 95% intervals over seeds where there are several."""
    with figure(path, (max(5, 1.1 * len(summary)), 4.2)) as (_, ax):
        positions = np.arange(len(summary))
        for offset, key, name in ((-0.2, "test_accuracy", "test accuracy"), (0.2, "test_macro_f1", "test macro-F1")):
            ax.bar(positions + offset, summary[f"{key}_mean"], width=0.4, label=name)
            interval_bars(ax, positions + offset, summary[f"{key}_ci_low"], summary[f"{key}_ci_high"])
        ax.set_xticks(list(positions), summary["Model"], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test score (mean over seeds)")
        rows = summary["Train rows"].iloc[0] if len(summary) else ""
        ax.set_title(f"test accuracy and macro-F1, {rows} training rows (bars: 95% interval over seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # off the bars


def interval_bars(ax, positions: np.ndarray, low, high) -> None:
    """Each interval drawn from its low to its high end, as given: also one that excludes the mean
    (error bars measured from the mean would have to be negative there); none where there is none."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        low, high = np.minimum(low[shown], high[shown]), np.maximum(low[shown], high[shown])
        ax.errorbar(positions[shown], (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="black", capsize=3)


def colours(n: int) -> list:
    """n distinct colours: tab10, tab20 for up to 20 lines, evenly spaced hues beyond."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def _style(model: str) -> dict:
    """LLM rows dashed and thicker: more models than the colour cycle has colours stay apart."""
    return {"linestyle": "--", "linewidth": 2.0} if model.startswith("LLM") else {"linewidth": 1.2}


def _unit_axes(ax, xlabel: str, ylabel: str, title: str, xmax: float) -> None:
    """Axes from 0 to about 1 on both sides, labelled, gridded, the models' legend beside them."""
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def reliability(curves: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Reliability diagrams, one small panel per model: accuracy against mean confidence in equal-mass bins
    (its rows pooled over seeds), the bins' 95% intervals shaded (`accuracy_low`/`accuracy_high` where given)."""
    ncols = min(3, len(curves))
    nrows = -(-len(curves) // ncols)
    with figure(path, (4.2 * ncols, 3.6 * nrows + 0.8), title=title, ncols=ncols, nrows=nrows) as (_, axes):
        panels = np.atleast_1d(axes).ravel()
        for ax, (model, bins), colour in zip(panels, curves.items(), colours(len(curves)), strict=False):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            if {"accuracy_low", "accuracy_high"} <= set(bins):
                ax.fill_between(
                    bins["confidence"], bins["accuracy_low"], bins["accuracy_high"], color=colour, alpha=0.2
                )
            ax.plot(bins["confidence"], bins["accuracy"], marker="o", markersize=3, color=colour)
            ax.set(xlim=(0, 1.02), ylim=(0, 1.02), title=f"{model}\n({int(bins['rows'].sum())} rows)")
            ax.title.set_fontsize("small")
            ax.grid(alpha=0.3)
        for ax in panels[len(curves) :]:
            ax.set_visible(False)
        for ax in panels[max(0, len(curves) - ncols) : len(curves)]:  # the lowest panel of each column
            ax.set_xlabel("confidence (bin mean)")
        for ax in panels[::ncols]:
            ax.set_ylabel("accuracy in the bin")


def risk_coverage(curves: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Selective prediction: accuracy on the rows answered against the share answered, most confident first;
    the spread over seeds shaded where a curve gives it (`accuracy_low`/`accuracy_high`)."""
    with figure(path, (10, 5.4)) as (_, ax):
        for (model, curve), colour in zip(curves.items(), colours(len(curves)), strict=True):
            label = f"{model} (area {curve['accuracy'].mean():.3f})"
            ax.plot(curve["coverage"], curve["accuracy"], label=label, color=colour, **_style(model))
            if {"accuracy_low", "accuracy_high"} <= set(curve):
                ax.fill_between(
                    curve["coverage"], curve["accuracy_low"], curve["accuracy_high"], color=colour, alpha=0.12
                )
        _unit_axes(ax, "coverage (share of test rows answered, most confident first)", "accuracy on the rows answered",
                   title, 1)  # fmt: skip


def train_size_curve(summary: pd.DataFrame, path: Path) -> None:
    """Test accuracy against training rows per model: the mean over seeds, its 95% interval shaded."""
    with figure(path, (7.5, 4.2)) as (_, ax):
        for model, rows in summary.groupby("Model", sort=False):
            rows = rows.sort_values("Train rows")
            line = ax.plot(rows["Train rows"], rows["test_accuracy_mean"], marker="o", label=model)[0]
            if rows["test_accuracy_ci_low"].notna().any():
                ax.fill_between(
                    rows["Train rows"], rows["test_accuracy_ci_low"], rows["test_accuracy_ci_high"],
                    color=line.get_color(), alpha=0.15,
                )  # fmt: skip
        sizes = sorted(summary["Train rows"].unique())
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training rows")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def attribution(table: pd.DataFrame, path: Path, top: int = 20) -> None:
    shown = table.head(top).iloc[::-1]
    effects = shown["mean_abs_effect"].to_numpy()
    positive = effects[effects > 0]
    with figure(path, (6.5, 0.3 * len(shown) + 1.2)) as (_, ax):
        ax.barh(shown["feature"].astype(str), effects)
        if len(positive) > 1 and positive.max() > 100 * positive.min():  # one feature dominating: log scale
            ax.set_xscale("log")
        ax.set_xlabel(f"mean |change in p(predicted label)| when occluded (top {len(shown)})")
        ax.set_title("LLM feature attribution (occlusion)")


def optuna_plot(draw: Callable[[], object], path: Path) -> None:
    """Save one of optuna.visualization.matplotlib's plots, drawn by `draw()`, at a readable size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        axes = draw()
        if axes is not None and "Trial" in axes.get_xlabel():  # a few trials: no fractional trial numbers
            whole_numbers(axes.xaxis)
        plt.gcf().set_size_inches(7, 4)
        plt.tight_layout()
        save_figure(plt.gcf(), path, dpi=120)
    finally:
        plt.close("all")
