"""Small files in the real formats, and config composition for tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.data.datasets import HST_FEATURES
from faultllm.data.tep import TEP_FEATURES
from faultllm.runtime.distributed import pin_first_gpu
from tests import postgres

FAULTS = [0, 1, 4, 5]


def selects_gpu(markexpr: str | None) -> bool:
    """Whether `-m` asks for the gpu-marked tests (`-m gpu`); a `-m` given on the command line replaces
    pyproject's `-m 'not gpu'`, so `-m "not slow"` does not."""
    return "gpu" in (markexpr or "").replace("not gpu", "")


def pytest_configure(config) -> None:
    """Force the CPU plan (fp32, SDPA, no quantization) unless gpu-marked tests are selected (`pytest -m gpu`):
    the suite's tolerances hold in fp32, and subprocesses (CLI, HPO workers) inherit the setting. With them,
    one GPU, as the `faultllm` command has (transformers would otherwise use every GPU at once)."""
    if selects_gpu(config.option.markexpr):
        pin_first_gpu()
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items) -> None:
    """Deselect the gpu-marked tests unless `-m` names gpu: they need the GPU the CPU plan above hides."""
    if selects_gpu(config.option.markexpr):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def rieth_table(faults: list[int], runs: int, samples: int, seed: int) -> pd.DataFrame:
    """Rieth-schema rows whose process variables carry the fault number as a clear signal."""
    rng = np.random.default_rng(seed)
    frames = []
    for fault in faults:
        for run in range(1, runs + 1):
            values = rng.normal(size=(samples, len(TEP_FEATURES)))
            values[:, 0] += fault  # xmeas_1 tells the fault apart
            frame = pd.DataFrame(values, columns=TEP_FEATURES)
            frame.insert(0, "sample", np.arange(1, samples + 1, dtype=np.float64))
            frame.insert(0, "simulationRun", float(run))
            frame.insert(0, "faultNumber", float(fault))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="session")
def rieth_dir(tmp_path_factory) -> Path:
    """The four Rieth tables as .RData files (what Harvard Dataverse serves), small."""
    import pyreadr

    directory = tmp_path_factory.mktemp("rieth")
    tables = {
        "TEP_FaultFree_Training": ("fault_free_training", rieth_table([0], runs=6, samples=30, seed=1)),
        "TEP_Faulty_Training": ("faulty_training", rieth_table([1, 2, 4, 5], runs=6, samples=30, seed=2)),
        "TEP_FaultFree_Testing": ("fault_free_testing", rieth_table([0], runs=2, samples=170, seed=3)),
        "TEP_Faulty_Testing": ("faulty_testing", rieth_table([1, 2, 4, 5], runs=2, samples=170, seed=4)),
    }
    for stem, (object_name, frame) in tables.items():
        pyreadr.write_rdata(str(directory / f"{stem}.RData"), frame, df_name=object_name)
    return directory


@pytest.fixture(scope="session")
def braatz_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("braatz")
    rng = np.random.default_rng(5)
    for fault in FAULTS:
        train = rng.normal(size=(480, 52)) + np.eye(52)[0] * fault
        test = rng.normal(size=(960, 52)) + np.eye(52)[0] * fault
        if fault == 0:
            train = rng.normal(size=(500, 52)).T  # d00.dat is stored transposed: 52 x 500
        np.savetxt(directory / f"d{fault:02d}.dat", train, fmt="%.6e")
        np.savetxt(directory / f"d{fault:02d}_te.dat", test, fmt="%.6e")
    return directory


def hst_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """HST-shaped: 31 binary and 15 float columns in [0, 1], label 1 when feature 40 is high."""
    rng = np.random.default_rng(seed)
    binary = rng.integers(0, 2, size=(rows, 31))
    floats = rng.uniform(size=(rows, 15))
    frame = pd.DataFrame(np.hstack([binary, floats]), columns=HST_FEATURES)
    frame["label"] = (frame["40"] > 0.5).astype(int)
    return frame


@pytest.fixture()
def hst_csv(tmp_path) -> Path:
    path = tmp_path / "hst.csv"
    hst_frame().to_csv(path, index=False)
    return path


@pytest.fixture()
def compose_cfg(tmp_path):
    """compose_cfg("train", [...]) with the cache inside the test's tmp dir."""

    def _compose(config_name: str, overrides: list[str] | None = None):
        return load_config(config_name, [f"cache_dir={tmp_path / 'cache'}", *(overrides or [])])

    return _compose


TINY = ["model=tiny", "progress=false"]  # the model users get; built once per session


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One tiny model for the whole session (built in seconds, reused by every test)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_model(tiny_cache):
    from faultllm.llm.build import load_base_model
    from faultllm.llm.hardware import hardware_plan
    from faultllm.llm.sources import resolve_model_path
    from faultllm.llm.tokenizer import load_tokenizer

    cfg = load_config("train", [f"cache_dir={tiny_cache}", *TINY])
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    return load_base_model(path, hardware_plan(cfg.model)).eval(), load_tokenizer(path)


def easy_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Three features; only the first, `a`, decides the label (a > 0.5)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(size=(rows, 3)).round(2), columns=["a", "b", "c"])
    frame["label"] = (frame["a"] > 0.5).astype(int)
    return frame


@pytest.fixture(scope="session")
def easy_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("easy") / "easy.csv"
    easy_frame().to_csv(path, index=False)
    return path


def easy_overrides(tiny_cache: Path, easy_csv: Path) -> list[str]:
    return [
        f"cache_dir={tiny_cache}", *TINY, "data=csv", f"data.path={easy_csv}", "data.train_size=160", "data.test_size=80",
        "data.normalize=false", "trainer.epochs=8", "eval.batch_size=32",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(tiny_cache, easy_csv, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny model trained end to end by `train` on the easy task (shared by several tests)."""
    from faultllm.jobs.train import run as train

    run_dir = tmp_path_factory.mktemp("trained")
    metrics = train(load_config("train", easy_overrides(tiny_cache, easy_csv)), run_dir)
    return run_dir, metrics


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (tests/postgres.py); each test makes its own database."""
    bin_dir = postgres.binaries()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = postgres.Server(bin_dir)
    try:
        yield server
    finally:
        server.stop()


SLURM_SCRIPT = Path(__file__).parents[1] / "scripts" / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM cluster (scripts/slurm_cluster.sh) for the session; SLURM_CONF set for every
    process the tests start. Skips where it cannot start (not root, no apt), fails under CI."""
    started = subprocess.run([str(SLURM_SCRIPT), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        reason = f"SLURM could not be started: {(started.stderr or started.stdout).strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)
    conf = started.stdout.strip().splitlines()[-1].partition("=")[2]
    os.environ["SLURM_CONF"] = conf
    try:
        yield Path(conf)
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True)
        subprocess.run([str(SLURM_SCRIPT), "stop"], capture_output=True)
