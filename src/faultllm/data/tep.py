"""The Tennessee Eastman process: the Rieth et al. 2017 tables (.RData, .csv or .parquet, read through the
column cache) or the Braatz d*.dat files, with the leakage guard that needs TEP's semantics (pre-fault rows)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.config.groups import DataConfig
from faultllm.data.column_cache import ColumnFile, cached_columns
from faultllm.data.tables import (
    GROUP,
    LABEL,
    RawData,
    existing_path,
    normalize_labels,
    read_table,
    require_columns,
    validate_features,
)
from faultllm.runtime.errors import FaultLLMError, first_line

TEP_FEATURES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
TEP_ID_COLUMNS = ["faultNumber", "simulationRun", "sample"]
RIETH_COLUMNS = TEP_ID_COLUMNS + TEP_FEATURES
RIETH_TABLES = {  # stem -> (split part, object name inside the .RData)
    "TEP_FaultFree_Training": ("train", "fault_free_training"),
    "TEP_Faulty_Training": ("train", "faulty_training"),
    "TEP_FaultFree_Testing": ("test", "fault_free_testing"),
    "TEP_Faulty_Testing": ("test", "faulty_testing"),
}
RIETH_SCHEMA = "the Rieth TEP columns faultNumber, simulationRun, sample, xmeas_1..xmeas_41, xmv_1..xmv_11"
READ_CHUNK = 65_536  # rows of one column read at a time (512 KiB): a load reads only chunks holding wanted rows
READ_THREADS = min(4, os.cpu_count() or 1)


def load_tep(data_cfg: DataConfig) -> RawData:
    """Rieth et al. 2017 tables (.RData, .csv or .parquet) or the Braatz d*.dat files in one directory."""
    directory = existing_path(data_cfg.path, "data.path")
    if not directory.is_dir():
        raise FaultLLMError(f"data.path={directory}: expected a directory holding the TEP files")
    rieth = _find_rieth_files(directory)
    _refuse_text_labels(data_cfg.labels, directory)
    if rieth:
        parts = {part: [] for part in ("train", "test")}
        present: set[int] = set()
        for stem, file in rieth.items():
            part, object_name = RIETH_TABLES[stem]
            rows, labels_in_file = _read_rieth(file, object_name, data_cfg, part)
            parts[part].append(rows)
            present |= labels_in_file if part == "train" else set()
        missing = [label for label in data_cfg.labels or [] if int(label) not in present]
        if missing:
            raise FaultLLMError(
                f"data.labels: label {missing[0]} does not occur in the training files of {directory} "
                f"(labels present: {', '.join(map(str, sorted(present)))})"
            )
        if not parts["train"]:
            raise FaultLLMError(f"{directory}: no TEP training table (TEP_FaultFree_Training / TEP_Faulty_Training)")
        pool = _rieth_frame(parts["train"])
        test_pool = _rieth_frame(parts["test"]) if parts["test"] else None
    elif sorted(directory.glob("d[0-9][0-9]*.dat")):
        pool, test_pool = _read_braatz(directory, data_cfg)
    else:
        raise FaultLLMError(
            f"{directory}: no TEP files found; expected TEP_Faulty_Training.RData (or .csv/.parquet) "
            "and friends from Rieth et al., or the Braatz d00.dat ... d21_te.dat files"
        )
    if not data_cfg.use_testing_files:
        test_pool = None
    return RawData(pool=pool, test_pool=test_pool, features=list(TEP_FEATURES), source=str(directory))


def _refuse_text_labels(labels, directory: Path) -> None:
    """TEP's labels are fault numbers."""
    for label in labels or []:
        try:
            float(label)
        except (TypeError, ValueError) as err:
            raise FaultLLMError(
                f"data.labels: {label!r} is not a fault number like the labels of {directory} (0, 1, ..., 20)"
            ) from err


def _find_rieth_files(directory: Path) -> dict[str, Path]:
    found = {}
    for stem in RIETH_TABLES:
        for suffix in (".parquet", ".RData", ".rdata", ".csv"):
            if (directory / f"{stem}{suffix}").exists():
                found[stem] = directory / f"{stem}{suffix}"
                break
    return found


def _read_rdata(path: Path, object_name: str) -> pd.DataFrame:
    import pyreadr

    try:
        objects = pyreadr.read_r(str(path))
    except Exception as err:  # pyreadr raises its own error types for corrupt files
        raise FaultLLMError(f"{path}: cannot read as RData ({first_line(err)})") from err
    if object_name not in objects:
        if len(objects) != 1:
            raise FaultLLMError(f"{path}: expected an R object named {object_name!r}, found {list(objects)}")
        object_name = next(iter(objects))
    return objects[object_name]


@dataclass
class _RiethRows:
    """The rows one Rieth table contributes, located but not yet read (`_rieth_frame` reads them).

    `wanted` marks the file's rows with a requested label (all of them are validated, as before),
    `kept` those that stay after the pre-fault rule; `labels` holds the kept rows' labels.
    """

    columns: Path  # the table's column cache
    source: Path
    wanted: np.ndarray
    kept: np.ndarray
    labels: pd.Series
    allow_missing: bool


def _rieth_chunks(file: Path, object_name: str) -> tuple[int, Iterable[pd.DataFrame]]:
    """The rows of one Rieth table as frames in file order.

    A Parquet table is read a row group at a time; .RData and CSV are parsed whole (their readers
    cannot stream), and that parse is the first load's cost.
    """
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(file)
        require_columns(pd.DataFrame(columns=parquet.schema_arrow.names), RIETH_COLUMNS, file, RIETH_SCHEMA)
        groups = range(parquet.num_row_groups)
        return parquet.metadata.num_rows, (parquet.read_row_group(i, columns=RIETH_COLUMNS).to_pandas() for i in groups)
    frame = _read_rdata(file, object_name) if file.suffix.lower() == ".rdata" else read_table(file)
    require_columns(frame, RIETH_COLUMNS, file, RIETH_SCHEMA)
    return len(frame), [frame]


def _read_rieth(path: Path, object_name: str, data_cfg: DataConfig, part: str) -> tuple[_RiethRows, set[int]]:
    """Where the requested labels' rows of one Rieth table are, and every label the table holds.

    Only the fault and sample columns are read here; the features of the kept rows are read
    later, a chunk at a time, straight into the frame the loader returns.
    """
    cache = cached_columns(
        path, lambda file: _rieth_chunks(file, object_name), RIETH_COLUMNS, data_cfg.cache_dir, TEP_ID_COLUMNS
    )
    requested = np.asarray([float(label) for label in data_cfg.labels or []])
    with ColumnFile(cache, RIETH_COLUMNS) as columns:
        fault = columns.read("faultNumber")
        wanted = np.isin(fault, requested) if len(requested) else np.ones(len(fault), dtype=bool)
        rows = np.flatnonzero(wanted)
        sample = columns.read("sample", rows[0], rows[-1] + 1)[rows - rows[0]] if len(rows) else rows
    present = {int(v) for v in pd.unique(fault)}
    labels = normalize_labels(pd.Series(fault[rows], index=rows), path, "faultNumber")
    prefault = _prefault_rows(labels, sample, data_cfg.fault_onset[part], data_cfg.prefault)
    kept = wanted.copy()
    if data_cfg.prefault == "drop":
        kept[rows[prefault]] = False
        labels = labels[~prefault]
    else:
        labels = labels.where(~prefault, 0)
    return _RiethRows(cache, path, wanted, kept, labels.reset_index(drop=True), data_cfg.allow_missing), present


def _rieth_frame(tables: list[_RiethRows]) -> pd.DataFrame:
    """The kept rows of the tables, in file order, read into one preallocated float64 block.

    Features stay float64: the prompts print the values as stored. The block (column-major, as
    pandas keeps it) is the only large allocation: 416 bytes a kept row, 0.40 GB for the
    970,000 rows of four full-size TEP faults; each reading thread needs one column chunk
    (512 KiB) besides. Threads share out the columns: the copies, and the page faults that
    first touch the block, run side by side.
    """
    values = np.empty((sum(len(table.labels) for table in tables), len(TEP_FEATURES)), order="F")
    runs = np.empty(len(values))
    targets = {name: values[:, position] for position, name in enumerate(TEP_FEATURES)} | {"simulationRun": runs}
    shares = [list(targets)[thread::READ_THREADS] for thread in range(READ_THREADS)]
    starts = np.cumsum([0, *(len(table.labels) for table in tables)])
    jobs = [
        (table, int(start), {name: targets[name] for name in share})
        for table, start in zip(tables, starts[:-1], strict=True)
        for share in shares
    ]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(lambda job: _fill_rieth(*job), jobs))  # list(): raises the first job's error
    frame = pd.DataFrame(values, columns=TEP_FEATURES, copy=False)
    frame[LABEL] = pd.concat([table.labels for table in tables], ignore_index=True)
    frame[GROUP] = runs.astype(np.int64)
    return frame


def _fill_rieth(table: _RiethRows, start: int, targets: dict[str, np.ndarray]) -> None:
    """Copy the kept rows of `table` of each column named in `targets` into that array, from row `start` on."""
    buffer = np.empty(READ_CHUNK)
    with ColumnFile(table.columns, RIETH_COLUMNS) as columns:
        for first in range(0, columns.rows, READ_CHUNK):
            last = min(first + READ_CHUNK, columns.rows)
            rows = np.flatnonzero(table.wanted[first:last])  # of this chunk
            if not len(rows):
                continue
            kept = rows[table.kept[first + rows]]
            end = start + len(kept)
            for name, target in targets.items():
                chunk = columns.read(name, first, last, out=buffer)
                _check_finite(chunk, rows, first, name, table)
                np.take(chunk, kept, out=target[start:end], mode="clip")  # "clip": no buffered copy
            start = end


def _check_finite(chunk: np.ndarray, rows: np.ndarray, first: int, name: str, table: _RiethRows) -> None:
    """`validate_features` on the wanted `rows` of a chunk of column `name`, run only when one is not finite."""
    if np.isfinite(chunk[_as_slice(rows)]).all():
        return
    validate_features(pd.DataFrame({name: chunk[rows]}, index=first + rows), [name], table.source, table.allow_missing)


def _as_slice(rows: np.ndarray) -> np.ndarray | slice:
    """Consecutive rows (the usual case: whole runs) as a slice, a view instead of a copy."""
    return slice(rows[0], rows[-1] + 1) if len(rows) and rows[-1] - rows[0] + 1 == len(rows) else rows


def _prefault_rows(labels: pd.Series, sample: np.ndarray, onset: int, prefault: str) -> np.ndarray:
    """Rows of a faulty run up to sample `onset`: recorded before the fault was switched on.

    They are normal operation, so they are dropped or relabelled 0, never kept as the fault.
    """
    return (labels != 0).to_numpy() & (sample <= onset)


def _tep_rows(frame: pd.DataFrame, onset: int, prefault: str, source: object) -> pd.DataFrame:
    """Keep the 52 process variables, label = fault number (pre-fault rows as `_prefault_rows` says)."""
    label = normalize_labels(frame["faultNumber"], source, "faultNumber")
    prefault_rows = _prefault_rows(label, frame["sample"].to_numpy(), onset, prefault)
    out = frame[TEP_FEATURES].copy()
    out[LABEL] = label
    if prefault == "drop":
        return out[~prefault_rows].reset_index(drop=True)
    out.loc[prefault_rows, LABEL] = 0
    return out


def _read_braatz(directory: Path, data_cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """d00.dat ... d21.dat (training) and d00_te.dat ... d21_te.dat (testing), whitespace separated.

    Each file is a single run, so there is no run id to group by. `d00.dat` is stored
    transposed (52 x 500). The training faults are recorded after onset; testing faults start after sample 160.
    """
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "test": []}
    labels = {int(label) for label in data_cfg.labels} if data_cfg.labels else None
    for file in sorted(directory.glob("d[0-9][0-9]*.dat")):
        match = re.fullmatch(r"d(\d\d)(_te)?\.dat", file.name)
        if not match or (labels is not None and int(match.group(1)) not in labels):
            continue
        part = "test" if match.group(2) else "train"
        values = _read_dat(file)
        if values.shape[0] == len(TEP_FEATURES) and values.shape[1] != len(TEP_FEATURES):
            values = values.T
        if values.shape[1] != len(TEP_FEATURES):
            raise FaultLLMError(f"{file}: {values.shape[1]} columns; expected 52 (XMEAS 1-41, XMV 1-11)")
        frame = pd.DataFrame(values, columns=TEP_FEATURES)
        frame.insert(0, "sample", np.arange(1, len(frame) + 1))
        frame.insert(0, "simulationRun", 1)
        frame.insert(0, "faultNumber", int(match.group(1)))
        onset = data_cfg.braatz_fault_onset[part]
        rows = _tep_rows(frame, onset, data_cfg.prefault, file)
        parts[part].append(rows)
    if not parts["train"]:
        raise FaultLLMError(f"{directory}: no Braatz training file (dNN.dat) for labels {sorted(labels or [])}")
    test = pd.concat(parts["test"], ignore_index=True) if parts["test"] else None
    return pd.concat(parts["train"], ignore_index=True), test


def _read_dat(file: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's warning of an empty file: refused below
            values = np.loadtxt(file, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise FaultLLMError(f"{file}: not a whitespace-separated table of numbers ({first_line(err)})") from err
    if values.size == 0:
        raise FaultLLMError(f"{file}: holds no numbers; expected a whitespace-separated table of them")
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise FaultLLMError(f"{file}: row {row} column {col} holds {values[row, col]}; expected a finite number")
    return values
