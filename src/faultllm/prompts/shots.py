"""In-context examples: which solved training rows go before a question (`prompt.shots`, `prompt.shot_selection`).

Shots come from the training rows only (never a test row), balanced over the labels: K // labels rows
of each label, and the K % labels left over go to seeded labels (`nearest`: to the labels whose next
rows are closest). Every draw is seeded:
- fixed: one draw, the same shots before every question;
- random: a draw per question (seeded by the question's position in its table);
- nearest: per question, the training rows of each label closest to it (Euclidean over the scaled
  features; a value missing on either side is left out), ordered nearest last, next to the question.
A question that is itself a training row (the train split's own metrics) never gets itself as a shot:
the next row of its label takes its place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from faultllm.data.tables import LABEL
from faultllm.runtime.errors import FaultLLMError

_SALT = 0x73686F7473  # "shots": keeps these draws apart from the other uses of the run's seed


@dataclass(frozen=True)
class ShotPool:
    """The training rows shots are drawn from, and how many and which to draw."""

    values: np.ndarray  # (rows, features): the training rows in prompt feature order
    labels: list  # each training row's label
    label_order: list  # every label, in prompt order
    k: int
    selection: str  # fixed | random | nearest
    seed: int
    rows_of: dict = field(init=False, repr=False, compare=False)  # label -> its rows' indices, in table order

    def __post_init__(self) -> None:
        labels = np.asarray([str(label) for label in self.labels])
        object.__setattr__(self, "rows_of", {label: np.flatnonzero(labels == str(label)) for label in self.label_order})
        need = math.ceil(self.k / len(self.label_order)) + 1  # + 1: a training row's own place is skipped
        short = [label for label, rows in self.rows_of.items() if len(rows) < need]
        if short:
            raise FaultLLMError(
                f"prompt.shots={self.k}: needs at least {need} training rows of every label; label {short[0]!r} "
                f"has {len(self.rows_of[short[0]])}"
            )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, features: list[str], labels: list, k: int, selection: str, seed: int):
        return cls(frame[features].to_numpy(np.float64), frame[LABEL].tolist(), list(labels), k, selection, seed)

    def choose(self, position: int, values: np.ndarray, own: int | None = None) -> list[int]:
        """The training rows (indices into the pool) shown before the question at `position` with `values`;
        `own`: the question's own index in the pool, when it is a training row."""
        if self.selection == "nearest":
            return self._nearest(values, own)
        key = [self.seed, _SALT] if self.selection == "fixed" else [self.seed, _SALT, position]
        return self._drawn(np.random.default_rng(key), own)

    def _counts(self, extra: list) -> dict:
        base, labels = self.k // len(self.label_order), self.label_order
        return {label: base + (label in extra) for label in labels}

    def _drawn(self, rng: np.random.Generator, own: int | None) -> list[int]:
        order = rng.permutation(len(self.label_order))[: self.k % len(self.label_order)]
        counts = self._counts([self.label_order[i] for i in order])
        chosen: list[int] = []
        for label in self.label_order:
            rows = rng.permutation(self.rows_of[label])  # drawn whatever `own` is: the same draws for every row
            chosen += [int(row) for row in rows[rows != own][: counts[label]]]
        return [chosen[i] for i in rng.permutation(len(chosen))]  # labels interleaved, not in blocks

    def _nearest(self, values: np.ndarray, own: int | None) -> list[int]:
        distance = np.sqrt(np.nansum((self.values - values) ** 2, axis=1))
        if own is not None:
            distance[own] = np.inf
        ranked = {label: rows[np.argsort(distance[rows], kind="stable")] for label, rows in self.rows_of.items()}
        base = self.k // len(self.label_order)
        nexts = sorted(self.label_order, key=lambda label: distance[ranked[label][base]])  # stable: prompt order
        counts = self._counts(nexts[: self.k % len(self.label_order)])
        chosen = [int(row) for label in self.label_order for row in ranked[label][: counts[label]]]
        return sorted(chosen, key=lambda row: -distance[row])  # nearest last, next to the question
