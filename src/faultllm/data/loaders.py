"""Read the supported data sets into one shape: a pool of rows (features, `label`, optional `group`).

Loaders only read and validate; leakage guards that need the data set's semantics
(TEP's pre-fault rows) are applied here because only the loader knows them, and
everything generic (sampling, splitting, scaling) lives in `splits.py`.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.config.groups import DataConfig
from faultllm.runtime.errors import FaultLLMError, first_line
from faultllm.runtime.files import atomic_path

LABEL = "label"
GROUP = "group"

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
HST_FEATURES = [str(i) for i in range(46)]


@dataclass
class RawData:
    """Rows to sample from. `test_pool` is set when the data set ships its own test files."""

    pool: pd.DataFrame
    test_pool: pd.DataFrame | None
    features: list[str]
    source: str


def load(data_cfg: DataConfig) -> RawData:
    loaders: dict[str, Callable[[DataConfig], RawData]] = {"hst": load_hst, "tep": load_tep, "table": load_table}
    return loaders[data_cfg.loader](data_cfg)


# ---------------------------------------------------------------- file reading and validation


def _existing(path: str | os.PathLike | None, key: str) -> Path:
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
        numeric = _numeric(values, source, column)
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


def _numeric(values: pd.Series, source: object, column: str) -> pd.Series:
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


# ---------------------------------------------------------------- column cache


READ_CHUNK = 65_536  # rows of one column read at a time (512 KiB): a load reads only chunks holding wanted rows
READ_THREADS = min(4, os.cpu_count() or 1)
CACHE_FORMAT = "columns-v1"  # part of the cache key: a format change never reads an old file


def cached_columns(
    path: Path,
    read: Callable[[Path], tuple[int, Iterable[pd.DataFrame]]],
    columns: Sequence[str],
    cache_dir: str | os.PathLike,
    finite: Sequence[str] = (),
) -> Path:
    """A float64 copy of `columns` of a slow-to-parse file, one column after another (`.npy`, shape
    columns x rows), keyed by path, size and mtime; built once from `read`'s row count and frames.
    The columns in `finite` (ids) must hold a number in every row.

    Column-major raw doubles let a load read each wanted span of a column straight from the page
    cache with one copy: no decoding, no buffers of a columnar reader, no parse.
    """
    stat = path.stat()
    key = hashlib.sha1(f"{CACHE_FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    target = Path(cache_dir).expanduser() / f"{path.stem}-{key[:16]}.npy"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        rows, frames = read(path)
        _write_columns_atomically(frames, rows, columns, finite, path, target)
    return target


def _write_columns_atomically(
    frames: Iterable[pd.DataFrame], rows: int, columns: Sequence[str], finite: Sequence[str], source: Path, target: Path
) -> None:
    """Write the frames (the file's rows in order) under a unique name beside `target`, then rename over it.

    An interrupted build never leaves a half-written cache, and builders sharing the directory
    (processes here, or containers on other nodes with the same pids) never write the same file;
    the last rename wins, with the same content. Each frame goes to disk a column at a time, so
    nothing is held twice. Text in a column, or an empty row of a `finite` column, is refused here,
    naming its row of `source`.
    """
    with atomic_path(target) as partial, open(partial, "w+b") as out:
        header = {"descr": "<f8", "fortran_order": False, "shape": (len(columns), rows)}
        np.lib.format.write_array_header_1_0(out, header)
        data_start = out.tell()
        out.truncate(data_start + len(columns) * rows * 8)
        first = 0
        for frame in frames:
            frame.index = pd.RangeIndex(first, first + len(frame))  # rows of the file, for errors
            for position, name in enumerate(columns):
                values = np.ascontiguousarray(_numeric(frame[name], source, name).to_numpy(dtype=np.float64))
                if name in finite and not np.isfinite(values).all():
                    row = first + np.argmax(~np.isfinite(values))
                    raise FaultLLMError(f"{source}: column {name!r} row {row} is empty; expected a number")
                out.seek(data_start + (position * rows + first) * 8)
                out.write(memoryview(values).cast("B"))
            first += len(frame)


class ColumnFile:
    """Reads spans of columns from a `cached_columns` file, straight into arrays the caller owns."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = path, list(columns)
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close() / the with block
        np.lib.format.read_magic(self.file)
        shape, _, dtype = np.lib.format.read_array_header_1_0(self.file)
        if dtype != np.float64 or shape[0] != len(self.columns):
            self.close()
            raise FaultLLMError(f"{path}: not a column cache of {len(self.columns)} columns; delete it to rebuild")
        self.rows, self.data_start = shape[1], self.file.tell()

    def read(self, name: str, first: int = 0, last: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [first, last) of column `name`, into `out` (its first last - first elements) or a new array."""
        last = self.rows if last is None else last
        target = np.empty(last - first) if out is None else out[: last - first]
        view = memoryview(target).cast("B")
        self.file.seek(self.data_start + (self.columns.index(name) * self.rows + first) * 8)
        while view:
            got = self.file.readinto(view)
            if not got:
                raise FaultLLMError(f"{self.path}: the column cache is truncated; delete it to rebuild")
            view = view[got:]
        return target

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ColumnFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------- HST


def load_hst(data_cfg: DataConfig) -> RawData:
    path = _existing(data_cfg.path, "data.path")
    frame = read_data_table(path)
    if list(frame.columns) != HST_FEATURES + [LABEL]:
        shown = ",".join(map(str, frame.columns[:4])) + ",...," + ",".join(map(str, frame.columns[-2:]))
        raise FaultLLMError(f"{path}: header is {shown}; expected the HST header 0,1,...,45,label")
    validate_features(frame, HST_FEATURES, path, data_cfg.allow_missing)
    frame[LABEL] = normalize_labels(frame[LABEL], path, LABEL)
    return RawData(pool=frame, test_pool=None, features=list(HST_FEATURES), source=str(path))


# ---------------------------------------------------------------- generic table


def load_table(data_cfg: DataConfig) -> RawData:
    path = _existing(data_cfg.path, "data.path")
    label_column, group_column = data_cfg.label_column, data_cfg.group_column

    def read(file: Path) -> pd.DataFrame:
        frame = read_data_table(file)
        require_columns(frame, [label_column], file, f"a label column {label_column!r} (data.label_column)")
        features = list(data_cfg.feature_columns or [])
        if not features:
            excluded = {label_column, group_column, *data_cfg.drop_columns}
            features = [c for c in frame.columns if c not in excluded]
        require_columns(frame, features, file, "the columns in data.feature_columns")
        validate_features(frame, features, file, data_cfg.allow_missing)
        out = frame[features].copy()
        out[LABEL] = normalize_labels(frame[label_column], file, label_column)
        if group_column:
            require_columns(frame, [group_column], file, f"a group column {group_column!r} (data.group_column)")
            out[GROUP] = frame[group_column].to_numpy()
        return out

    pool = read(path)
    test_pool = read(_existing(data_cfg.test_path, "data.test_path")) if data_cfg.test_path else None
    features = [c for c in pool.columns if c not in (LABEL, GROUP)]
    if test_pool is not None and [c for c in test_pool.columns if c not in (LABEL, GROUP)] != features:
        raise FaultLLMError(f"{data_cfg.test_path}: feature columns differ from {path}")
    return RawData(pool=pool, test_pool=test_pool, features=features, source=str(path))


# ---------------------------------------------------------------- TEP


def load_tep(data_cfg: DataConfig) -> RawData:
    """Rieth et al. 2017 tables (.RData, .csv or .parquet) or the Braatz d*.dat files in one directory."""
    directory = _existing(data_cfg.path, "data.path")
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
