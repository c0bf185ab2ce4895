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
