"""What every data set shares: the shape of its rows (features, `label`, optional `group`), reading a table
file, and the checks on its columns, values and labels that every loader runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.runtime.errors import FaultLLMError, first_line

LABEL = "label"
GROUP = "group"


@dataclass
class RawData:
    """Rows to sample from. `test_pool` is set when the data set ships its own test files."""

    pool: pd.DataFrame
    test_pool: pd.DataFrame | None
    features: list[str]
    source: str


def existing_path(path: str | os.PathLike | None, key: str) -> Path:
    """The file or directory config key `key` names, which must exist."""
    if path in (None, "", "???"):
        raise FaultLLMError(f"{key} is not set; pass {key}=PATH")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FaultLLMError(f"{key}={path}: no such file or directory")
    return resolved


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """CSV or Parquet by extension; a CSV with a column name twice is refused."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".txt"):
        raise FaultLLMError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path, columns=list(columns) if columns else None)
        else:
            _refuse_duplicate_columns(path)
            frame = pd.read_csv(path, usecols=list(columns) if columns else None)
    except (ValueError, OSError) as err:
        raise FaultLLMError(f"{path}: cannot read as {suffix[1:]} ({first_line(err)})") from err
    return frame


def read_data_table(path: Path) -> pd.DataFrame:
    """`read_table` of a data file, which must hold rows."""
    frame = read_table(path)
    if frame.empty:
        raise FaultLLMError(f"{path}: the table has no rows (a header only?); give a table with data rows")
    return frame


def _refuse_duplicate_columns(path: Path) -> None:
    """pandas renames a repeated CSV column (`a`, `a.1`): two columns of one name would pass as two features."""
    header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    repeated = sorted({str(name) for name in header if header.count(name) > 1})
    if repeated:
        raise FaultLLMError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header; rename them")


def require_columns(frame: pd.DataFrame, required: Sequence[str], source: object, expected: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FaultLLMError(f"{source}: missing column(s) {shown}; expected {expected}")


def validate_features(
    frame: pd.DataFrame, features: Sequence[str], source: object, allow_missing: bool = False
) -> None:
    """Every feature numeric and finite (or empty, with `allow_missing`), else an error naming column, row and value."""
    for column in features:
        values = frame[column]
        numeric = numeric_values(values, source, column)
        if numeric is not values:
            frame[column] = numeric
        numbers = numeric.to_numpy(dtype=np.float64)
        bad_mask = np.isinf(numbers) if allow_missing else ~np.isfinite(numbers)
        if bad_mask.any():
            row = frame.index[np.argmax(bad_mask)]
            hint = (
                "" if allow_missing or np.isinf(numbers[np.argmax(bad_mask)]) else " (data.allow_missing=true keeps it)"
            )
            raise FaultLLMError(
                f"{source}: column {column!r} row {row} holds {frame[column].loc[row]}; expected a finite number{hint}"
            )


def numeric_values(values: pd.Series, source: object, column: str) -> pd.Series:
    """`values` if numeric, else converted; text (not a number, not empty) is an error naming its row."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values[numeric.isna() & values.notna()]
    if len(bad):
        raise FaultLLMError(f"{source}: column {column!r} row {bad.index[0]} holds {bad.iloc[0]!r}; expected a number")
    return numeric


def normalize_labels(values: pd.Series, source: object, column: str) -> pd.Series:
    """Integral labels become int64 (TEP stores 1.0); anything else is kept as text."""
    if values.isna().any():
        raise FaultLLMError(f"{source}: column {column!r} row {values.index[values.isna()][0]} has no label")
    if pd.api.types.is_numeric_dtype(values):
        as_float = values.astype(np.float64)
        if (as_float == np.round(as_float)).all():
            return as_float.astype(np.int64)
    return values.astype(str)
