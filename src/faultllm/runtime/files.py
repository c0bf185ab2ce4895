"""Result files written atomically: into a temporary file beside the target, then renamed onto it.

A process killed mid-write (kill -9, a preempted node) leaves the previous file or none, never a
truncated one that a later command would read as valid. The rename is atomic because the temporary
file is in the same directory (same file system). Results (`durable=True`, the default of the write_*
helpers) are also fsynced, file and directory, so that they survive a power loss once the call returns.
Every file a command writes goes through here (tests/test_files.py scans the source for raw writers).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds, removed
    when it fails. It keeps `path`'s suffix, for writers that choose the format by it (matplotlib).
    `durable`: the data and the rename are on disk when the block ends."""
    path = Path(path)
    # unique across hosts too: containers sharing a directory can have the same pids
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, path)
        if durable:
            _fsync(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `path` to fill; it replaces `path` when the block succeeds. A killed writer
    leaves the previous directory (or, between two renames, none), never a half-written one."""
    path = Path(path)
    temporary, previous = (path.with_name(f".{path.name}.{os.getpid()}.{kind}") for kind in ("tmp", "old"))
    for leftover in (temporary, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        yield temporary
        if path.exists():
            path.rename(previous)
        temporary.rename(path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    with atomic_path(path, durable) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike, payload: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n", durable)


def write_csv(frame, path: str | os.PathLike, durable: bool = True, **options) -> None:
    """A pandas DataFrame as CSV (without its index unless `index=True`)."""
    with atomic_path(path, durable) as temporary:
        frame.to_csv(temporary, **({"index": False} | options))


def write_parquet(frame, path: str | os.PathLike, durable: bool = True) -> None:
    with atomic_path(path, durable) as temporary:
        frame.to_parquet(temporary, index=False)


def save_figure(figure, path: str | os.PathLike, **options) -> None:
    """A matplotlib figure, in the format `path`'s suffix names (a figure is redrawn from the results, so
    it is not fsynced)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, **options)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
