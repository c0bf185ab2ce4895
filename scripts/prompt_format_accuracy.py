"""Test accuracy and macro-F1 of train runs under prompt.format=study and compact, over seeds, paired by seed
(docs/compact_prompts.md):

    python scripts/prompt_format_accuracy.py ROOT 1 2 3

ROOT holds the runs study-SEED and compact-SEED (`faultllm train ... hydra.run.dir=ROOT/compact-1`). Prints, per
format, each seed's score, mean, sd and faultllm's 95% interval over seeds (`statistics.interval`), then the
per-seed difference compact - study with its paired t-interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

from faultllm.compare.statistics import interval
from faultllm.run.records import TrainMetrics

FORMATS = ("study", "compact")
SCORES = ("accuracy", "macro_f1")


def test_scores(root: Path, style: str, seeds: list[int]) -> dict[str, np.ndarray]:
    tests = [TrainMetrics.read(root / f"{style}-{seed}" / "metrics.json").test for seed in seeds]
    return {key: np.array([getattr(test, key) for test in tests]) for key in (*SCORES, "n")}


def paired(diff: np.ndarray) -> tuple[float, float]:
    """The 95% t-interval of the mean per-seed difference (NaN for one seed)."""
    if len(diff) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return diff.mean() - half, diff.mean() + half


def main() -> None:
    root, seeds = Path(sys.argv[1]), [int(seed) for seed in sys.argv[2:]]
    scores = {style: test_scores(root, style, seeds) for style in FORMATS}
    for key in SCORES:
        for style in FORMATS:
            mean, sd, low, high = interval(scores[style][key], scores[style]["n"])
            values = np.round(scores[style][key], 4).tolist()
            print(f"{key} {style}: seeds {values}, mean {mean:.3f}, sd {sd:.3f}, 95% [{low:.3f}, {high:.3f}]")
        diff = scores["compact"][key] - scores["study"][key]
        low, high = paired(diff)
        print(
            f"{key} compact - study: {np.round(diff, 4).tolist()}, mean {diff.mean():+.3f}, 95% [{low:+.3f}, {high:+.3f}]"
        )


if __name__ == "__main__":
    main()
