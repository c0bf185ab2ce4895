"""One thread budget for every pool (faultllm.runtime.threads): where it comes from, and pools that never nest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import joblib
import pytest
from threadpoolctl import threadpool_info

from faultllm.compare.baselines import load_model
from faultllm.config.fields import ConfigError
from faultllm.jobs.baselines import run as run_baselines
from faultllm.runtime import threads
from faultllm.runtime.threads import Cores, available_cores, cgroup_quota, loop_plan, parallel_map

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def _cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize(
    ("environ", "v2", "v1", "expected"),
    [
        ({}, None, None, 8),  # the affinity only
        ({}, "max 100000\n", None, 8),  # cgroup v2 without a quota
        ({}, "250000 100000\n", None, 2),  # a quota of 2.5 CPUs: 2 threads that are never throttled
        ({}, "50000 100000\n", None, 1),  # half a CPU: still one thread
        ({}, None, ("300000", "100000"), 3),  # cgroup v1
        ({}, None, ("-1", "100000"), 8),  # cgroup v1 without a quota
        ({"SLURM_CPUS_PER_TASK": "4"}, "600000 100000", None, 4),  # the least of the limits
        ({"OMP_NUM_THREADS": "3"}, "100000 100000", None, 3),  # the user's OMP_NUM_THREADS decides
        ({"OMP_NUM_THREADS": "junk", "SLURM_CPUS_PER_TASK": "0"}, None, None, 8),  # unusable values ignored
    ],
)
def test_the_budget_is_the_least_of_the_limits_unless_the_user_chose(eight_cpus, tmp_path, environ, v2, v1, expected):
    cores = available_cores(0, environ, _cgroup(tmp_path, v2, v1), stat=None)
    assert cores.affinity == 8 and cores.count == expected
    assert available_cores(5, environ, _cgroup(tmp_path), stat=None).count == 5  # the `threads` key overrides all


class _Stat:
    """/proc/stat read twice: the CPUs' ticks (user nice system idle iowait irq softirq steal) then and later."""

    def __init__(self, *snapshots: dict[int, list[int]]) -> None:
        self.snapshots = list(snapshots)

    def read_text(self) -> str:
        ticks = self.snapshots.pop(0)
        return "cpu 0 0 0 0 0 0 0 0\n" + "".join(f"cpu{c} {' '.join(map(str, v))}\n" for c, v in ticks.items())


def test_cores_another_process_keeps_busy_are_left_out():
    start = {0: [100, 0, 0, 900, 0, 0, 0, 0], 1: [100, 0, 0, 900, 0, 0, 0, 0], 2: [0] * 8}
    later = {0: [120, 0, 0, 900, 0, 0, 0, 0], 1: [101, 0, 0, 918, 1, 0, 0, 0], 2: [0] * 8}  # cpu0 busy, cpu1 idle
    assert threads.idle_cpus({0, 1}, _Stat(start, later), seconds=0) == pytest.approx(0.95)
    assert threads.idle_cpus({0, 1}, Path("/nonexistent"), seconds=0) is None
    assert Cores(affinity=2, idle=0.95).count == 1 and Cores(affinity=2, idle=1.8).count == 2
    assert Cores(affinity=8, quota=2.0, idle=7.0).count == 2 and Cores(affinity=4, idle=0.1).count == 1
    assert Cores(affinity=2, idle=0.0, omp=2).count == 2  # the user's choice stands


def test_cgroup_quota_reads_v2_before_v1_and_none_without_files(tmp_path):
    assert cgroup_quota(tmp_path) is None
    assert cgroup_quota(_cgroup(tmp_path, "150000 100000", ("400000", "100000"))) == 1.5


def test_the_threads_key_is_in_every_command_and_refuses_negatives(compose_cfg):
    for command in ("baselines", "train", "hpo", "prepare"):
        assert compose_cfg(command, ["model=tiny"] if command in ("train", "hpo") else []).threads == 0
    assert compose_cfg("baselines", ["threads=3"]).threads == 3
    from faultllm.config.jobs import EvaluateJob, ExplainJob, PredictJob, ReportJob

    for job in (EvaluateJob, ExplainJob, PredictJob, ReportJob):
        assert job(threads=2).threads == 2
        with pytest.raises(ConfigError, match=r"threads=-1: expected >= 0"):
            job(threads=-1)
    with pytest.raises(ConfigError, match=r"threads=-1: expected >= 0"):
        compose_cfg("baselines", ["threads=-1"])


def test_loops_get_workers_of_one_thread_on_small_tables():
    assert loop_plan(cores=2, tasks=9, rows=400) == (2, 1)
    assert loop_plan(cores=8, tasks=3, rows=400) == (3, 1)  # never more workers than work
    assert loop_plan(cores=8, tasks=2, rows=threads.SMALL_TABLE_ROWS) == (2, 4)  # large tables: the rest inside
    assert loop_plan(cores=8, tasks=9, rows=threads.PARALLEL_MIN_ROWS - 1) == (1, 1)  # not worth a worker
    assert loop_plan(cores=1, tasks=9, rows=10**6) == (1, 1)


def _pool_sizes(_: int) -> tuple[str | None, list[int]]:
    return os.environ.get("OMP_NUM_THREADS"), sorted({pool["num_threads"] for pool in threadpool_info()})


def test_parallel_workers_run_single_threaded_pools(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what the CLI sets for this process: the workers must not inherit it
    in_workers = list(parallel_map(_pool_sizes, [0, 1, 2], workers=2, threads=1))
    assert in_workers == [("1", [1])] * 3
    in_process = list(parallel_map(_pool_sizes, [0], workers=1, threads=1))
    assert in_process[0][1] == [1]


def test_apply_sets_the_pools_environment_and_logs_one_line(caplog):
    environ: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="faultllm.runtime.threads"):
        count = threads.apply(Cores(affinity=4, quota=2.0, idle=3.0), environ)
    assert count == 2 and environ["OMP_NUM_THREADS"] == environ["RAYON_NUM_THREADS"] == "2"
    assert "TOKENIZERS_PARALLELISM" not in environ
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads: ")]
    assert line.startswith(
        "threads: 2 cores (affinity 4, cgroup quota 2, SLURM_CPUS_PER_TASK none, idle 3.0) -> torch 2"
    )
    assert threads.pool_environment(1)["TOKENIZERS_PARALLELISM"] == "false"


@pytest.mark.slow  # two baselines runs, one of them in worker processes
def test_baselines_fit_the_forest_with_the_workers_budget_not_every_core(compose_cfg, tmp_path, caplog):
    rows = [f"data.train_size={threads.PARALLEL_MIN_ROWS}", "data.test_size=40"]  # just enough for workers
    overrides = [*rows, "baselines.models=[rf,lr]", "baselines.importances_for=[]", "threads=2"]
    with caplog.at_level(logging.INFO, logger="faultllm.jobs.baselines"):
        parallel = run_baselines(compose_cfg("baselines", overrides), tmp_path / "a")
    assert "baselines: 2 models in 2 worker process(es) of 1 thread(s)" in caplog.text
    assert load_model(tmp_path / "a", "rf").n_jobs == 1
    alone = run_baselines(compose_cfg("baselines", [*overrides[:-1], "threads=1"]), tmp_path / "b")
    seconds = ("fit_seconds", "predict_seconds")
    assert {m: {k: v for k, v in r.items() if k not in seconds} for m, r in parallel.items()} == {
        m: {k: v for k, v in r.items() if k not in seconds} for m, r in alone.items()
    }
    assert joblib.load(tmp_path / "b" / "models" / "rf.joblib").n_jobs == 1


def test_the_cpu_extras_pull_no_cuda_libraries():
    """XGBoost's own wheel pulls nvidia-nccl-cu12 on Linux; xgboost-cpu is the same module without it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("dev", "boosting"):
        linux_xgboost = [r for r in extras[extra] if r.startswith("xgboost") and "!= 'linux'" not in r]
        assert linux_xgboost == ["xgboost-cpu>=2.1.1; sys_platform == 'linux'"], extra
        assert not [r for r in extras[extra] if r.startswith(("nvidia", "cupy", "torch"))], extra
    assert any(r.startswith("xgboost>=") for r in extras["boosting-gpu"])


def test_hpo_worker_processes_share_the_budget(compose_cfg, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from faultllm.jobs import hpo as hpo_job

    started = []

    class Worker:
        def __init__(self, args: list[str], env: dict) -> None:
            started.append(args)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(hpo_job.subprocess, "Popen", Worker)
    overrides = SimpleNamespace(task=["threads=4", "seed=1"])  # the command line the workers repeat
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(overrides=overrides)))
    hpo_job.launch_workers(compose_cfg("hpo", ["model=tiny", "hpo.workers=2", "threads=4"]), tmp_path)
    assert [[arg for arg in args if arg.startswith("threads=")] for args in started] == [["threads=2"]] * 2
