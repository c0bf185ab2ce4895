"""Fuzzed inputs (Hypothesis): every data file and every config override either runs or is refused in one
line, never a traceback, and the checks leave no run directory behind. Bounded and derandomized: the same
inputs on every machine and every run (docs/robustness.md gives the counts)."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultllm import cli
from faultllm.config.help import key_help
from faultllm.config.jobs import JOBS
from faultllm.config.load import load_config
from faultllm.data.tep import RIETH_COLUMNS, TEP_FEATURES
from faultllm.preflight import check
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_frame

FUZZ = settings(
    derandomize=True,  # a fixed seed: the same inputs everywhere
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
# FAULTLLM_FUZZ_SCALE=20: twenty times the examples (a nightly run); the suite in CI stays at about 30 s
SCALE = int(os.environ.get("FAULTLLM_FUZZ_SCALE", "1"))
SMALL = ["data.train_size=4", "data.test_size=2"]  # two labels: 3 rows of each are enough to run
GENERIC = "(FAULTLLM_DEBUG=1 shows the full trace)"  # the line of an exception nobody translated: a bug

# ---------------------------------------------------------------- random tables

SPECIAL = [math.nan, math.inf, -math.inf, 1e308, -1e308, 2**63, -(2**64), 5e-324, 0.1 + 0.2]
NAMES = ["a", "b", "c", "label", "", " ", "ä b", "a.1", "0", "nan", "label ", "x,y", '"q"', "\ufeffa", "a"]
CELL = {
    "int": st.integers(-5, 5),
    "float": st.floats(-1e3, 1e3, allow_nan=False),
    "special": st.sampled_from(SPECIAL),
    "text": st.text(st.characters(blacklist_categories=["Cs"]), max_size=4),
    "empty": st.none(),
}


@st.composite
def columns(draw, rows: int, name: str | None = None, kind: str | None = None) -> tuple[str, list]:
    """One column: mostly cells of one kind, sometimes with any other cell mixed in."""
    name = draw(st.sampled_from(NAMES)) if name is None else name
    kind = draw(st.sampled_from(list(CELL))) if kind is None else kind
    cell = CELL[kind] if draw(st.booleans()) else st.one_of(CELL[kind], *CELL.values())
    return name, draw(st.lists(cell, min_size=rows, max_size=rows))


@st.composite
def tables(draw) -> list[tuple[str, list]]:
    """Half of them a valid table (labels 0/1, numeric features) with at most one cell spoiled; half anything."""
    if draw(st.booleans()):
        return draw(valid_tables())
    rows = draw(st.integers(0, 24))
    labels = [("label", [i % 2 for i in range(rows)])] if draw(st.booleans()) else [draw(columns(rows, "label"))]
    features = draw(st.lists(columns(rows), max_size=4))
    return labels + features if draw(st.booleans()) else features + labels


@st.composite
def valid_tables(draw) -> list[tuple[str, list]]:
    rows = draw(st.integers(6, 24))
    names = draw(st.lists(st.sampled_from(["a", "b", "ä b", "0", "x,y"]), min_size=1, max_size=3, unique=True))
    cells = st.one_of(CELL["int"], CELL["float"])
    table = [(name, draw(st.lists(cells, min_size=rows, max_size=rows))) for name in names]
    table.append(("label", [i % 2 for i in range(rows)]))
    if draw(st.booleans()):  # spoil one cell
        _, values = draw(st.sampled_from(table))
        values[draw(st.integers(0, rows - 1))] = draw(st.one_of(*CELL.values()))
    return table


def _csv_bytes(table: list[tuple[str, list]], encoding: str) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([name for name, _ in table])
    writer.writerows(zip(*(["" if v is None else v for v in values] for _, values in table), strict=True))
    return text.getvalue().encode(encoding, errors="replace")


def _parquet(table: list[tuple[str, list]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for _, values in table:
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed kinds: as text
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    pq.write_table(pa.Table.from_arrays(arrays, names=[name for name, _ in table]), path)


ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]


@st.composite
def table_files(draw, directory: Path) -> Path:
    """A CSV (in some encoding, a BOM or not, or no bytes at all) or Parquet file of a random table."""
    table = draw(tables())
    form = draw(st.sampled_from(["csv", "parquet", "empty"]))
    path = directory / f"table.{'parquet' if form == 'parquet' else 'csv'}"
    if form == "parquet":
        _parquet(table, path)
    else:
        path.write_bytes(b"" if form == "empty" else _csv_bytes(table, draw(st.sampled_from(ENCODINGS))))
    return path


@st.composite
def tep_directories(draw, directory: Path) -> Path:
    """Rieth .RData tables (random rows, a column dropped or spoiled) or Braatz dNN.dat files (random shapes)."""
    rows = draw(st.integers(0, 30))
    if draw(st.booleans()):
        import pyreadr

        for stem, object_name, fault in [("TEP_FaultFree_Training", "fault_free_training", 0),
                                         ("TEP_Faulty_Training", "faulty_training", 1)]:  # fmt: skip
            frame = _rieth_frame(rows, fault, draw(st.integers(0, 2**32 - 1)))
            if draw(st.booleans()):
                name, values = draw(columns(rows, draw(st.sampled_from(RIETH_COLUMNS))))
                frame[name] = pd.Series(values, dtype=object).astype(
                    str if any(isinstance(v, str) for v in values) else float
                )
            if draw(st.booleans()):
                frame = frame.drop(columns=draw(st.sampled_from(RIETH_COLUMNS)))
            pyreadr.write_rdata(str(directory / f"{stem}.RData"), frame, df_name=object_name)
    else:
        for name in ("d00.dat", "d01.dat"):
            width = draw(st.sampled_from([len(TEP_FEATURES), len(TEP_FEATURES), 3, 0]))
            cells = draw(
                st.lists(st.one_of(CELL["float"], CELL["special"]), min_size=rows * width, max_size=rows * width)
            )
            lines = [" ".join(map(str, cells[i * width : (i + 1) * width])) for i in range(rows)]
            (directory / name).write_text("\n".join(lines) + ("\n" if draw(st.booleans()) else ""))
    return directory


def _rieth_frame(rows: int, fault: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(TEP_FEATURES))), columns=TEP_FEATURES)
    frame.insert(0, "sample", np.arange(1, rows + 1, dtype=float) + 20)
    frame.insert(0, "simulationRun", (np.arange(rows) % 3 + 1).astype(float))
    frame.insert(0, "faultNumber", float(fault))
    return frame


# ---------------------------------------------------------------- data files through the preflight


def _outcome(call) -> str:
    """'ran' or 'refused' (a one-line FaultLLMError); anything else propagates: Hypothesis reports it."""
    try:
        call()
    except FaultLLMError as err:
        assert "\n" not in str(err).strip(), str(err)
        return "refused"
    return "ran"


def _checked(config, path: Path) -> str:
    """What the CLI's preflight says of `data prepare` on `path`: 'ran' or 'refused'."""
    return _outcome(lambda: check(replace(config, data=replace(config.data, path=str(path))), None))


@pytest.fixture(scope="module")
def configs() -> dict:
    return {
        "table": load_config("prepare", ["data=csv", *SMALL]),
        "tep": load_config("prepare", ["data=tep", "data.labels=[0,1]", "data.use_testing_files=false", *SMALL]),
    }


@pytest.mark.slow
@pytest.mark.filterwarnings("error")  # a warning would be a second line on the console
def test_fuzzed_data_files_run_or_are_refused_in_one_line(configs):
    seen: Counter = Counter()

    @settings(FUZZ, max_examples=80 * SCALE)
    @given(st.data())
    def one(data) -> None:
        loader = data.draw(st.sampled_from(["table", "tep"]))
        with tempfile.TemporaryDirectory() as directory:
            strategy = table_files if loader == "table" else tep_directories
            seen[loader, _checked(configs[loader], data.draw(strategy(Path(directory))))] += 1

    one()
    print(f"fuzzed data files: {sum(seen.values())} tried, {dict(seen)}, 0 tracebacks")
    assert {outcome for _, outcome in seen} == {"ran", "refused"}  # both kinds of input were tried


# ---------------------------------------------------------------- the whole command, run directory and all


@contextlib.contextmanager
def _console() -> io.StringIO:
    """stderr captured; the root logger's handlers as they were (Hydra, run in this process, adds its own)."""
    root, err = logging.getLogger(), io.StringIO()
    before = list(root.handlers)
    try:
        with contextlib.redirect_stderr(err):
            yield err
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
            handler.close()


def _run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `faultllm ARGV` in this process."""
    with _console() as err:
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue().strip().splitlines()


def _assert_one_line_refusal(command: str, code: int, lines: list[str]) -> None:
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"faultllm {command}: error: "), (code, lines)
    assert GENERIC not in lines[0], lines[0]  # an exception no check translated


def _prepare(path: Path, run_dir: Path) -> str:
    """`faultllm data prepare` of `path`: 'ran' with the whole run directory, or 'refused' in one line with none."""
    code, lines = _run_cli(["data", "prepare", "data=csv", *SMALL, f"data.path={path}", f"hydra.run.dir={run_dir}"])
    if code == 0:
        assert {"summary.json", "train.parquet", "test.parquet"} <= {p.name for p in run_dir.iterdir()}
        return "ran"
    _assert_one_line_refusal("data prepare", code, lines)
    assert not run_dir.exists()
    return "refused"


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
def test_fuzzed_data_prepare_leaves_a_whole_run_or_nothing(tmp_path):
    easy = tmp_path / "easy.csv"
    easy_frame().to_csv(easy, index=False)
    seen = Counter([_prepare(easy, tmp_path / "run")])  # one that runs, whatever the draws

    @settings(FUZZ, max_examples=6 * SCALE)
    @given(st.data())
    def one(data) -> None:
        with tempfile.TemporaryDirectory() as directory:
            seen[_prepare(data.draw(table_files(Path(directory))), Path(directory) / "run")] += 1

    one()
    print(f"fuzzed data prepare runs: {sum(seen.values())} tried, {dict(seen)}, 0 tracebacks")
    assert seen == {"ran": seen["ran"], "refused": seen["refused"]} and seen["ran"]


# ---------------------------------------------------------------- config overrides

COMMANDS = {  # command -> (config, the arguments every fuzzed line starts with)
    "data prepare": ("prepare", ["data=csv", "data.train_size=20", "data.test_size=10"]),
    "train": ("train", ["model=tiny", "data=csv", "data.train_size=20", "data.test_size=10"]),
    "hpo": ("hpo", ["model=tiny", "data=csv", "data.train_size=20", "data.test_size=10"]),
    "baselines": ("baselines", ["data=csv", "data.train_size=20", "data.test_size=10"]),
    "plan": ("plan", ["model=tiny", "data=csv", "data.train_size=20", "data.test_size=10"]),
    "evaluate": ("evaluate", []),
    "predict": ("predict", []),
}
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["true", "false", "True", "null", "~", "nan", "-inf", "1e999", "0", "-1", "[]", "{}", "''", '""']),
    st.lists(st.integers(-3, 30), max_size=3).map(lambda v: "[" + ",".join(map(str, v)) + "]"),
    st.dictionaries(st.sampled_from(["a", "train", "test"]), st.integers(0, 9), max_size=2).map(
        lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"
    ),
    st.sampled_from(["${seed}", "${oc.env:HOME}", "${nowhere}", "a,b", "x=y", "[a", "{a:", "'", "\\", "ä", "\x00"]),
    st.text(max_size=8),
)


@st.composite
def override_lines(draw) -> tuple[str, list[str]]:
    """A command and 1-6 overrides: any key of its config (or a misspelling) set to a value of any type."""
    command = draw(st.sampled_from(list(COMMANDS)))
    config_name, base = COMMANDS[command]
    keys = [row.key for row in key_help(JOBS[config_name]) if not row.group] + ["nokey", "data.nokey", "lora"]
    overrides = []
    for _ in range(draw(st.integers(1, 6))):
        key, value = draw(st.sampled_from(keys)), draw(VALUES)
        form = draw(st.sampled_from(["{k}={v}", "{k}={v}", "{k}={v}", "+{k}={v}", "~{k}", "{k}"]))
        overrides.append(form.format(k=key, v=value))
    return command, base + overrides


@pytest.mark.slow
def test_fuzzed_overrides_pass_the_checks_or_are_refused_in_one_line(tmp_path, monkeypatch):
    """Every check the CLI runs before a run directory exists; a line that passes them all would run (the job
    itself is replaced here: running all of them is the other tests' work)."""
    easy = tmp_path / "easy.csv"
    easy_frame().to_csv(easy, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a random model.path is not looked up on the hub
    monkeypatch.setattr(cli, "run_under_hydra", lambda *args: 0)
    seen, keys = Counter(), set()

    @settings(FUZZ, max_examples=30 * SCALE)
    @given(override_lines())
    def one(line) -> None:
        command, overrides = line
        overrides = [f"data.path={easy}", *overrides] if "data=csv" in overrides else overrides
        code, lines = _run_cli([*command.split(), *overrides])
        if code != 0:
            _assert_one_line_refusal(command, code, lines)
        assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob(".hydra"))  # no run directory
        seen["passed" if code == 0 else "refused"] += 1
        keys.update(o.lstrip("+~").partition("=")[0] for o in overrides)

    one()
    print(f"fuzzed command lines: {sum(seen.values())} tried, {dict(seen)}, {len(keys)} keys, 0 tracebacks")
    assert seen["refused"] and seen["passed"]
