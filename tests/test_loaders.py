from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faultllm.data.column_cache import ColumnFile, cached_columns
from faultllm.data.datasets import load
from faultllm.data.tables import GROUP, LABEL
from faultllm.data.tep import TEP_FEATURES
from faultllm.runtime.errors import FaultLLMError


def test_rieth_rdata_guards_and_cache(rieth_dir, compose_cfg):
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={rieth_dir}"])
    raw = load(cfg.data)
    assert raw.features == TEP_FEATURES  # never simulationRun, sample or faultNumber
    assert set(raw.pool[LABEL]) == {0, 1, 4, 5}  # fault 2 filtered out at read time
    # pre-fault rows of faulty training runs (samples 1-20 of 30) are dropped: 10 per run remain
    assert (raw.pool[LABEL] == 1).sum() == 6 * 10
    assert (raw.pool[LABEL] == 0).sum() == 6 * 30  # the fault-free runs keep every sample
    assert (raw.test_pool[LABEL] == 4).sum() == 2 * 10
    assert set(raw.pool[GROUP]) == set(range(1, 7))
    cached = list(Path(cfg.data.cache_dir).glob("*.npy"))
    assert len(cached) == 4  # the column caches
    start = time.perf_counter()
    again = load(cfg.data)
    assert time.perf_counter() - start < 5
    pd.testing.assert_frame_equal(raw.pool, again.pool)


def test_rieth_prefault_relabel(rieth_dir, compose_cfg):
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={rieth_dir}", "data.prefault=relabel"])
    raw = load(cfg.data)
    assert (raw.pool[LABEL] == 1).sum() == 6 * 10
    assert (
        raw.pool[LABEL] == 0
    ).sum() == 6 * 30 + 3 * 6 * 20  # fault-free + relabelled pre-fault rows of faults 1, 4, 5


def test_rieth_csv_conversion(rieth_dir, tmp_path, compose_cfg):
    import pyreadr

    for stem in ("TEP_FaultFree_Training", "TEP_Faulty_Training"):
        frame = next(iter(pyreadr.read_r(str(rieth_dir / f"{stem}.RData")).values()))
        frame.insert(0, "Unnamed: 0", range(len(frame)))  # the circulating CSVs carry an index column
        frame.to_csv(tmp_path / f"{stem}.csv", index=False)
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={tmp_path}"])
    raw = load(cfg.data)
    assert raw.test_pool is None
    assert (raw.pool[LABEL] == 5).sum() == 60


def test_braatz_files_with_transposed_d00(braatz_dir, compose_cfg):
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={braatz_dir}"])
    raw = load(cfg.data)
    assert (raw.pool[LABEL] == 0).sum() == 500  # d00.dat read back from its 52 x 500 layout
    assert (raw.pool[LABEL] == 1).sum() == 480  # training files start after the onset
    assert (raw.test_pool[LABEL] == 1).sum() == 800  # testing: samples 1-160 are pre-fault
    assert (raw.test_pool[LABEL] == 0).sum() == 960
    assert abs(raw.pool.loc[raw.pool[LABEL] == 5, "xmeas_1"].mean() - 5) < 0.3


def test_hst_loader(hst_csv, compose_cfg):
    raw = load(compose_cfg("prepare", ["data=hst", f"data.path={hst_csv}"]).data)
    assert raw.features == [str(i) for i in range(46)]
    assert raw.test_pool is None and GROUP not in raw.pool


def test_generic_table_loader(tmp_path, compose_cfg):
    frame = pd.DataFrame(
        {"a": np.arange(20.0), "b": np.ones(20), "run": np.repeat([1, 2, 3, 4], 5), "fault": ["ok", "bad"] * 10}
    )
    frame.to_parquet(tmp_path / "t.parquet")
    cfg = compose_cfg(
        "prepare",
        ["data=csv", f"data.path={tmp_path / 't.parquet'}", "data.label_column=fault", "data.group_column=run"],
    )
    raw = load(cfg.data)
    assert raw.features == ["a", "b"]
    assert set(raw.pool[LABEL]) == {"ok", "bad"} and list(raw.pool[GROUP][:6]) == [1] * 5 + [2]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.rename(columns={"3": "x"}), "expected the HST header 0,1,...,45,label"),
        (
            lambda f: f.assign(**{"7": f["7"].where(f.index != 5)}),
            "column '7' row 5 holds nan; expected a finite number",
        ),
        (
            lambda f: f.assign(**{"9": f["9"].astype(object).where(f.index != 3, "high")}),
            "column '9' row 3 holds 'high'; expected a number",
        ),
    ],
)
def test_hst_bad_input(tmp_path, compose_cfg, edit, message):
    from tests.conftest import hst_frame

    path = tmp_path / "bad.csv"
    edit(hst_frame()).to_csv(path, index=False)
    with pytest.raises(FaultLLMError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        load(compose_cfg("prepare", ["data=hst", f"data.path={path}"]).data)
    assert str(path) in str(err.value)


def test_missing_file_and_wrong_schema(tmp_path, compose_cfg):
    with pytest.raises(FaultLLMError, match="no such file"):
        load(compose_cfg("prepare", ["data=hst", f"data.path={tmp_path / 'nope.csv'}"]).data)
    pd.DataFrame({"faultNumber": [1.0], "xmeas_1": [0.1]}).to_csv(tmp_path / "TEP_Faulty_Training.csv", index=False)
    with pytest.raises(FaultLLMError, match=r"missing column\(s\) simulationRun, sample"):
        load(compose_cfg("prepare", ["data=tep", f"data.path={tmp_path}"]).data)


def _digest(frame: pd.DataFrame | None) -> str:
    """Column names, dtypes, index and value bytes, in order: equal digests mean identical frames."""
    digest = hashlib.sha256()
    if frame is None:
        return "none"
    for name, values in [("<index>", frame.index.to_numpy()), *((c, frame[c].to_numpy()) for c in frame.columns)]:
        digest.update(f"{name}:{values.dtype}:{values.shape}".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def _interleaved_parquet(directory: Path) -> Path:
    """Rieth tables as Parquet with faults out of order, row groups cutting across runs, a NaN and double ids."""
    from tests.conftest import rieth_table

    directory.mkdir()
    faulty = rieth_table([4, 1, 2, 5], runs=5, samples=40, seed=7)
    faulty.loc[633, "xmv_3"] = np.nan
    rieth_table([0], runs=5, samples=40, seed=8).to_parquet(directory / "TEP_FaultFree_Training.parquet", index=False)
    faulty.to_parquet(directory / "TEP_Faulty_Training.parquet", index=False, row_group_size=70)
    return directory


@pytest.mark.parametrize(
    ("case", "overrides", "pool_digest", "test_digest"),
    [
        ("rdata", [], "c98f1b399bf93585", "1b77b8b77f2b3932"),
        ("rdata", ["data.prefault=relabel"], "71ffebb143f928b9", "0b291e805505390b"),
        (
            "parquet",
            ["data.labels=[5,0,4]", "data.train_size=300", "data.test_size=150", "data.allow_missing=true"],
            "4e8af35ebaf1e6bd",
            "none",
        ),
        ("parquet", ["data.labels=null", "data.allow_missing=true"], "8e1b531acc9ff383", "none"),
    ],
)
def test_rieth_rows_pinned(rieth_dir, tmp_path, compose_cfg, case, overrides, pool_digest, test_digest):
    """The loaded rows (values, dtypes, order) are those the loader returned before the memory work (issue 23)."""
    directory = rieth_dir if case == "rdata" else _interleaved_parquet(tmp_path / "tep")
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={directory}", *overrides])
    for _ in range(2):  # first load (builds the cache) and cached load
        raw = load(cfg.data)
        assert (_digest(raw.pool), _digest(raw.test_pool)) == (pool_digest, test_digest)


def test_concurrent_cache_builds_end_with_one_good_file(tmp_path):
    """Builders sharing a cache directory (threads here; same pids on other nodes) never collide or crash."""
    from concurrent.futures import ThreadPoolExecutor

    source = tmp_path / "table.csv"
    source.write_text("a\n1\n")
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(200_000, 8)), columns=list("abcdefgh"))
    builders = 4
    barrier = threading.Barrier(builders)

    def read(_: Path) -> tuple[int, list[pd.DataFrame]]:
        barrier.wait()  # every builder has found no cache and writes at the same time
        return len(frame), [frame.iloc[:70_000].copy(), frame.iloc[70_000:].copy()]

    with ThreadPoolExecutor(builders) as pool:
        targets = list(pool.map(lambda _: cached_columns(source, read, list("hgfedcba"), tmp_path / "cache"), range(4)))
    assert len(set(targets)) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [targets[0].name]  # no temp file left behind
    np.testing.assert_array_equal(np.load(targets[0]), frame[list("hgfedcba")].to_numpy().T)
    with ColumnFile(targets[0], list("hgfedcba")) as columns:
        np.testing.assert_array_equal(columns.read("c", 69_990, 70_010), frame["c"].to_numpy()[69_990:70_010])


def test_column_cache_refuses_text_and_empty_ids(tmp_path, compose_cfg):
    """Text anywhere in a Rieth table, or a row without a fault/run/sample number, is named when the cache is built."""
    from tests.conftest import rieth_table

    for column, value, expected in [
        ("xmeas_7", "high", r"column 'xmeas_7' row 45 holds 'high'; expected a number"),
        ("simulationRun", np.nan, r"column 'simulationRun' row 45 is empty"),
    ]:
        directory = tmp_path / column
        directory.mkdir()
        table = rieth_table([0], runs=2, samples=40, seed=1).astype({column: object})
        table.loc[45, column] = value
        table.to_csv(directory / "TEP_FaultFree_Training.csv", index=False)
        rieth_table([1], runs=2, samples=40, seed=2).to_csv(directory / "TEP_Faulty_Training.csv", index=False)
        with pytest.raises(FaultLLMError, match=rf"TEP_FaultFree_Training.csv: {expected}"):
            load(
                compose_cfg(
                    "prepare",
                    [
                        "data=tep",
                        f"data.path={directory}",
                        "data.labels=[0,1]",
                        "data.train_size=20",
                        "data.test_size=20",
                    ],
                ).data
            )
        assert not list(Path(tmp_path / "cache").glob("*.npy"))  # no cache of a refused table


def test_rieth_bad_value_names_the_row_of_the_file(tmp_path, compose_cfg):
    directory = _interleaved_parquet(tmp_path / "tep")
    with pytest.raises(FaultLLMError, match=r"TEP_Faulty_Training.parquet: column 'xmv_3' row 633 holds nan"):
        load(compose_cfg("prepare", ["data=tep", f"data.path={directory}", "data.labels=[0,5]"]).data)
    fine = load(compose_cfg("prepare", ["data=tep", f"data.path={directory}", "data.labels=[0,4]"]).data)
    assert len(fine.pool) == 5 * 40 + 5 * 20  # the bad row is not among the requested labels


@pytest.mark.filterwarnings("error")  # numpy's "input contained no data" would be a second console line
def test_an_empty_braatz_file_is_refused_by_name(tmp_path, compose_cfg):
    (tmp_path / "d00.dat").write_text("")
    np.savetxt(tmp_path / "d01.dat", np.ones((3, len(TEP_FEATURES))))
    cfg = compose_cfg("prepare", ["data=tep", f"data.path={tmp_path}", "data.labels=[0,1]"])
    with pytest.raises(FaultLLMError, match=r"d00\.dat: holds no numbers"):
        load(cfg.data)
