"""Leakage-safe splits: label subset, balanced seeded sampling, run-grouped split and folds, train-only scaling.

`make_split(data_cfg, seed)` gives the unscaled train/test rows every job (LLM, baselines,
HPO folds) starts from; `fit_scaler` is fitted on whichever rows are training rows at
that moment (the whole training split, or one fold's training part: `fold_splits`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from faultllm.config.groups import DataConfig
from faultllm.data.datasets import load
from faultllm.data.tables import GROUP, LABEL, RawData
from faultllm.runtime.errors import FaultLLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame  # features, `label`, and `group` (run id) when the data set has runs
    test: pd.DataFrame
    features: list[str]
    labels: list  # the class labels, in prompt order

    def fingerprint(self) -> str:
        """Hash of the exact rows and values on each side: equal fingerprints mean identical splits."""
        digest = hashlib.sha256()
        for frame in (self.train, self.test):
            digest.update(pd.util.hash_pandas_object(frame[self.features + [LABEL]], index=False).to_numpy().tobytes())
        return digest.hexdigest()[:16]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {str(k): int(v) for k, v in frame[LABEL].value_counts().sort_index().items()}
            for name, frame in (("train", self.train), ("test", self.test))
        }


def make_split(data_cfg: DataConfig, seed: int) -> Split:
    """Load -> select labels -> (dedupe) -> balanced seeded sample -> train/test split, unscaled.
    After `keep_last_split()`, the last split is kept (for the same config, seed and files) and copied out."""
    if _last_split is None:
        return _make_split(data_cfg, seed)
    key = (repr(data_cfg), seed, *(_file_state(path) for path in (data_cfg.path, data_cfg.test_path)))
    if key not in _last_split:
        _last_split.clear()
        _last_split[key] = _make_split(data_cfg, seed)
    split = _last_split[key]
    return replace(split, train=split.train.copy(), test=split.test.copy(), features=list(split.features))


_last_split: dict[tuple, Split] | None = None


def keep_last_split() -> None:
    """The CLI checks a job's data before the job runs (`faultllm.preflight`) by making its split: the job
    then takes a copy of it instead of reading the files again."""
    global _last_split
    if _last_split is None:
        _last_split = {}


def _file_state(path: str | None) -> tuple | None:
    try:
        stat = os.stat(os.path.expanduser(path)) if path else None
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if stat else None


def _make_split(data_cfg: DataConfig, seed: int) -> Split:
    log.info(f"loading {data_cfg.display_name or 'the data'} and drawing the split (seed {seed})")
    raw = load(data_cfg)
    labels = select_labels(raw, data_cfg.labels)
    pool = raw.pool[raw.pool[LABEL].isin(labels)]
    if data_cfg.drop_duplicates:
        pool = pool.drop_duplicates(subset=raw.features + [LABEL])
    n_train = per_label(data_cfg.train_size, labels, "data.train_size")
    n_test = per_label(data_cfg.test_size, labels, "data.test_size")
    rng = np.random.default_rng(seed)

    if raw.test_pool is not None:
        test_pool = raw.test_pool[raw.test_pool[LABEL].isin(labels)]
        train = balanced_sample(pool, labels, n_train, rng, f"{raw.source} (training rows)")
        test = balanced_sample(test_pool, labels, n_test, rng, f"{raw.source} (testing rows)")
    elif GROUP in pool.columns:
        train_pool, test_pool = split_groups(pool, data_cfg.test_size / (data_cfg.train_size + data_cfg.test_size), rng)
        train = balanced_sample(train_pool, labels, n_train, rng, f"{raw.source} (runs kept for training)")
        test = balanced_sample(test_pool, labels, n_test, rng, f"{raw.source} (runs held out for testing)")
    else:
        both = balanced_sample(pool, labels, n_train + n_test, rng, raw.source)
        is_test = both.groupby(LABEL, sort=False).cumcount() < n_test
        train, test = both[~is_test], both[is_test]
    shuffle = lambda frame: frame.sample(frac=1.0, random_state=rng.integers(2**31)).reset_index(drop=True)  # noqa: E731
    split = Split(train=shuffle(train), test=shuffle(test), features=raw.features, labels=labels)
    return blank_values(split, data_cfg.missing_rate, data_cfg.missing_in_train, seed)


def blank_values(split: Split, rate: float, in_train: bool, seed: int) -> Split:
    """Missing completely at random: exactly round(rate * cells) feature values of the test rows (and of the
    training rows with `in_train`) become NaN, drawn from the seed alone; labels are never touched."""
    if not 0.0 <= rate < 1.0:
        raise FaultLLMError(f"data.missing_rate={rate}: expected a fraction in [0, 1)")
    if rate == 0.0:
        return split
    rng = np.random.default_rng([seed, 0x6D697373])  # its own stream: the sampled rows do not depend on it
    sides = {"test": split.test} | ({"train": split.train} if in_train else {})
    blanked = {}
    for name, frame in sides.items():
        values = frame[split.features].to_numpy(np.float64, copy=True)
        cells = rng.choice(values.size, size=round(rate * values.size), replace=False)
        values.flat[cells] = np.nan
        blanked[name] = frame.assign(**dict(zip(split.features, values.T, strict=True)))
    return replace(split, **blanked)


def select_labels(raw: RawData, requested) -> list:
    present = sorted(raw.pool[LABEL].unique().tolist())
    if len(present) < 2:
        raise FaultLLMError(
            f"{raw.source}: the {LABEL!r} column holds one class ({', '.join(map(str, present))}); a classifier "
            "needs rows of at least two labels"
        )
    if not requested:
        return present
    integer_labels = pd.api.types.is_integer_dtype(raw.pool[LABEL])
    labels = []
    for value in requested:
        try:
            label = int(value) if integer_labels else str(value)
        except (TypeError, ValueError) as err:
            raise FaultLLMError(f"data.labels: {value!r} is not an integer label like those in {raw.source}") from err
        if label not in present:
            shown = ", ".join(map(str, present[:25]))
            raise FaultLLMError(
                f"data.labels: label {label!r} does not occur in {raw.source} (labels present: {shown})"
            )
        labels.append(label)
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise FaultLLMError(f"data.labels={list(requested)}: expected at least two distinct labels")
    return labels


def per_label(total: int, labels: list, key: str) -> int:
    if total < len(labels) or total % len(labels):
        raise FaultLLMError(
            f"{key}={total} cannot be balanced over {len(labels)} labels; use a multiple of {len(labels)}"
        )
    return total // len(labels)


def balanced_sample(
    pool: pd.DataFrame, labels: list, n_per_label: int, rng: np.random.Generator, source: str
) -> pd.DataFrame:
    parts = []
    for label in labels:
        rows = pool[pool[LABEL] == label]
        if len(rows) < n_per_label:
            raise FaultLLMError(
                f"{source}: label {label} has {len(rows)} usable rows, {n_per_label} needed for a balanced sample"
            )
        parts.append(rows.iloc[rng.choice(len(rows), size=n_per_label, replace=False)])  # random order
    return pd.concat(parts)


def split_groups(
    pool: pd.DataFrame, test_fraction: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out whole runs: no simulation run contributes rows to both sides."""
    runs = rng.permutation(np.sort(pool[GROUP].unique()))
    if len(runs) < 2:
        raise FaultLLMError("cannot hold out whole runs for testing: the data has a single run; give test files")
    n_test = min(len(runs) - 1, max(1, round(len(runs) * test_fraction)))
    is_test = pool[GROUP].isin(runs[:n_test])
    return pool[~is_test], pool[is_test]


def cv_folds(train: pd.DataFrame, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K folds of the training split (positions), grouped by run where runs exist.

    Shared by LLM hyperparameter search and tuned baselines, so both see the same folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    smallest = int(train[LABEL].value_counts().min())
    if k < 2 or k > smallest:
        raise FaultLLMError(
            f"{k} folds need at least {k} training rows of every label; the rarest label has {smallest}"
        )
    y = train[LABEL].astype(str).to_numpy()
    if GROUP in train.columns:
        n_groups = train[GROUP].nunique()
        if n_groups < k:
            raise FaultLLMError(f"{k} folds grouped by run need at least {k} runs; the training split has {n_groups}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(train, y, groups=train[GROUP].to_numpy()))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(train, y))


def hold_out(split: Split, share: float, seed: int) -> tuple[Split, pd.DataFrame | None]:
    """(the split without its held-out training rows, those rows; None when share is 0): the validation part of
    the first of round(1 / share) `cv_folds` (stratified, grouped by run where runs exist)."""
    if not share:
        return split, None
    fit_rows, held_rows = cv_folds(split.train, max(2, round(1 / share)), seed)[0]
    kept = replace(split, train=split.train.iloc[fit_rows].reset_index(drop=True))
    return kept, split.train.iloc[held_rows].reset_index(drop=True)


def fold_splits(raw: Split, folds: list[tuple[np.ndarray, np.ndarray]], normalize: bool, feature_range) -> list[Split]:
    """`cv_folds` positions as train/validation splits, each min-max scaled with a scaler fitted on the
    fold's own training rows (validation rows never shape it). Used by HPO and tuned baselines alike."""
    return [
        scale_split(
            replace(
                raw,
                train=raw.train.iloc[fit_rows].reset_index(drop=True),
                test=raw.train.iloc[val_rows].reset_index(drop=True),
            ),
            normalize,
            feature_range,
        )[0]
        for fit_rows, val_rows in folds
    ]


# ---------------------------------------------------------------- scaling


@dataclass(frozen=True)
class MinMaxScaler:
    minimum: np.ndarray
    maximum: np.ndarray
    feature_range: tuple[float, float]

    def transform(self, frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        low, high = self.feature_range
        span = self.maximum - self.minimum
        span = np.where(span > 0, span, 1.0)  # constant columns map to `low` instead of dividing by zero
        out = frame.copy()
        out[features] = (frame[features].to_numpy(np.float64) - self.minimum) / span * (high - low) + low
        return out

    def share_already_scaled(
        self, frame: pd.DataFrame, scaled_train: pd.DataFrame, features: list[str]
    ) -> float | None:
        """Of the features this scaler moves far, the share whose values in `frame` look like the scaled training
        rows (`scaled_train`) as they stand rather than once scaled: near 1 for rows already scaled, near 0 for
        raw rows. None when no feature tells the two apart (the raw range is about the scaled range already).

        Per feature and hypothesis, the distance of the rows' median from the training median (in training
        interquartile ranges) plus, with several rows, how far the rows' spread is from the training spread.
        """
        low, high = self.feature_range
        width = high - low
        span = np.where(self.maximum - self.minimum > 0, self.maximum - self.minimum, 1.0)
        moved = (np.abs(span - width) > width / 2) | (np.abs(self.minimum - low) > width / 2)
        if not moved.any() or frame.empty:
            return None
        as_is = frame[features].to_numpy(np.float64)[:, moved]
        once_scaled = self.transform(frame, features)[features].to_numpy(np.float64)[:, moved]
        train = scaled_train[features].to_numpy(np.float64)[:, moved]
        closer = _distance(as_is, train) < _distance(once_scaled, train)
        return float(closer.mean())

    def to_dict(self, features: list[str]) -> dict:
        return {
            "minimum": self.minimum,
            "maximum": self.maximum,
            "feature_range": self.feature_range,
            "features": features,
        }

    @classmethod
    def from_dict(cls, saved: dict) -> MinMaxScaler:
        return cls(np.asarray(saved["minimum"]), np.asarray(saved["maximum"]), tuple(saved["feature_range"]))


def _distance(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per column: how unlike the training column `values` look (location, and spread from 5 rows on)."""
    median, train_median = np.nanmedian(values, axis=0), np.nanmedian(train, axis=0)
    quartiles = np.nanpercentile(train, [25, 75], axis=0)
    scale = np.maximum(quartiles[1] - quartiles[0], 1e-9)
    distance = np.abs(median - train_median) / scale
    if len(values) >= 5:
        spread, train_spread = np.nanstd(values, axis=0), np.maximum(np.nanstd(train, axis=0), 1e-9)
        distance = distance + np.abs(np.log(np.maximum(spread, 1e-12) / train_spread))
    return distance


def fit_scaler(train: pd.DataFrame, features: list[str], feature_range) -> MinMaxScaler:
    low, high = (float(v) for v in feature_range)
    if not low < high:
        raise FaultLLMError(f"data.scale_range={list(feature_range)}: expected [low, high] with low < high")
    values = train[features].to_numpy(np.float64)
    if np.isnan(values).all(axis=0).any():
        column = features[int(np.argmax(np.isnan(values).all(axis=0)))]
        raise FaultLLMError(f"feature {column!r} has no value in any training row; cannot scale it")
    return MinMaxScaler(np.nanmin(values, axis=0), np.nanmax(values, axis=0), (low, high))  # missing values stay NaN


def scale_split(split: Split, normalize: bool, feature_range) -> tuple[Split, MinMaxScaler | None]:
    """Min-max scale both sides with a scaler fitted on the training side only."""
    if not normalize:
        return split, None
    scaler = fit_scaler(split.train, split.features, feature_range)
    return replace(
        split, train=scaler.transform(split.train, split.features), test=scaler.transform(split.test, split.features)
    ), scaler


def prepared_split(data_cfg: DataConfig, seed: int) -> tuple[Split, MinMaxScaler | None]:
    """The split every job trains and tests on: `make_split` then train-only scaling."""
    return scale_split(make_split(data_cfg, seed), data_cfg.normalize, data_cfg.scale_range)
