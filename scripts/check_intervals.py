"""Simulated coverage of `report`'s 95% interval of a mean accuracy over seeds (statistics.interval_bounds).

Each replicate draws, per seed, the seed's own accuracy p_s (Beta, mean = the true accuracy, sd = the
between-seed spread: a new split and a new model) and its test rows' correct count ~ Binomial(rows, p_s);
the interval must contain the true mean accuracy. One table per between-seed spread, a cell per
(accuracy, seeds) and test rows; the last line says the smallest cell and whether every cell is >= 0.93.

    python scripts/check_intervals.py                 # the full grid, 4000 replicates a cell (seconds)
    python scripts/check_intervals.py --replicates 500
    python scripts/check_intervals.py --stress         # and a skewed between-seed spread (not in the check)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from faultllm.compare.statistics import interval_bounds

ACCURACIES = (0.3, 0.5, 0.7, 0.9, 0.95, 0.99)
SEEDS = (2, 3, 5, 10)
ROWS = (50, 200, 1000, 5000)
# The between-seed sd of a seed's own accuracy, from the true accuracy and the test rows: none (test-row noise
# only), as large as one seed's test-row noise (what the bundled runs show), and a stress case outside the
# acceptance: 10% of sqrt(m (1 - m)), a skewed Beta near 0.99 where a few seeds fall far below the rest.
SPREADS = {
    "none": lambda accuracy, rows: 0.0,
    "test-row": lambda accuracy, rows: np.sqrt(accuracy * (1 - accuracy) / rows),
}
STRESS = {"0.1 sqrt(m(1-m))": lambda accuracy, rows: 0.1 * np.sqrt(accuracy * (1 - accuracy))}
FLOOR = 0.93


def seed_accuracies(rng, accuracy: float, spread: float, shape: tuple[int, int]) -> np.ndarray:
    """Each seed's own accuracy: Beta with mean `accuracy` and sd `spread` (all equal where spread is 0)."""
    if spread == 0:
        return np.full(shape, accuracy)
    spread = min(spread, 0.9 * np.sqrt(accuracy * (1 - accuracy)))  # a Beta's sd stays below sqrt(m (1 - m))
    concentration = accuracy * (1 - accuracy) / spread**2 - 1
    return rng.beta(accuracy * concentration, (1 - accuracy) * concentration, size=shape)


def coverage(rng, accuracy: float, seeds: int, rows: int, spread, replicates: int) -> float:
    """The share of replicates whose interval contains the true mean accuracy."""
    truth = seed_accuracies(rng, accuracy, spread(accuracy, rows), (replicates, seeds))
    values = rng.binomial(rows, truth) / rows
    low, high = interval_bounds(values, np.full(seeds, rows))
    return float(np.mean((low <= accuracy) & (accuracy <= high)))


def table(spread, replicates: int, grid: dict, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cells = [
        {"accuracy": a, "seeds": k, "rows": n, "coverage": coverage(rng, a, k, n, spread, replicates)}
        for a in grid["accuracies"] for k in grid["seeds"] for n in grid["rows"]
    ]  # fmt: skip
    return pd.DataFrame(cells).pivot_table(index=["accuracy", "seeds"], columns="rows", values="coverage")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4000)
    parser.add_argument("--stress", action="store_true", help="also the skewed stress case (not in the check)")
    args = parser.parse_args(argv)
    grid = {"accuracies": ACCURACIES, "seeds": SEEDS, "rows": ROWS}
    smallest = 1.0
    for name, spread in (SPREADS | (STRESS if args.stress else {})).items():
        shown = table(spread, args.replicates, grid)
        print(f"\ncoverage of the 95% interval, between-seed sd: {name} ({args.replicates} replicates a cell)")
        print(shown.to_string(float_format="{:.3f}".format))
        if name in SPREADS:
            smallest = min(smallest, float(shown.min().min()))
    print(f"\nsmallest cell {smallest:.3f}: {'every cell' if smallest >= FLOOR else 'NOT every cell'} >= {FLOOR}")
    return 0 if smallest >= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main())
