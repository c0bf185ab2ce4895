"""The column cache: a float64 copy of a slow-to-parse table's columns, built once, read by spans."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.data.tables import numeric_values
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import atomic_path

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
                values = np.ascontiguousarray(numeric_values(frame[name], source, name).to_numpy(dtype=np.float64))
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
