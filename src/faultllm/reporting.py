"""What a person reads: the end-of-run summary, tables as Markdown/CSV, plots as PNG."""

from __future__ import annotations

from collections.abc import Mapping


def print_summary(title: str, items: Mapping[str, object]) -> None:
    width = max(len(key) for key in items)
    lines = [title, "-" * len(title)] + [f"{key:<{width}}  {value}" for key, value in items.items()]
    print("\n".join(lines), flush=True)
