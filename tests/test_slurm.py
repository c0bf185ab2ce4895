"""SLURM for real: a one-node cluster (scripts/slurm_cluster.sh, the `slurm_cluster` fixture) runs a Hydra
multirun and an HPO array; a run directory or study the compute nodes cannot see is refused first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from faultllm.config.groups import SlurmConfig
from faultllm.preflight import _minutes, check_partition
from faultllm.run.slurm import executor_parameters, launcher_parameters
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_overrides
from tests.test_hpo import hpo_overrides

ONE_NODE = ["slurm=one_node", "slurm.gpus=0"]


def faultllm(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faultllm", *args], capture_output=True, text=True, timeout=timeout)


def queued() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()


def array_tasks(folder: Path) -> set[str]:
    """The array tasks that ran: submitit's output files, one per task (`<array>_<task>_0_log.out`)."""
    return {path.name.rsplit("_", 2)[0] for path in folder.glob("*/*_log.out")}


@pytest.mark.slow  # starts the SLURM cluster
def test_a_node_local_run_directory_or_study_is_one_line_and_nothing_is_queued(slurm_cluster, tiny_cache, easy_csv):
    before = queued()
    sweep, hpo = f"/tmp/faultllm-sweep-{uuid.uuid4().hex[:8]}", f"/tmp/faultllm-hpo-{uuid.uuid4().hex[:8]}"  # fresh
    local = ["slurm.node_local=[/tmp]"]
    done = faultllm("train", "-m", *easy_overrides(tiny_cache, easy_csv), "seed=1,2", "hydra/launcher=slurm", *ONE_NODE,
                    *local, f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert done.returncode == 2 and f"hydra.sweep.dir={sweep}: /tmp is node-local" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not Path(sweep).exists()
    done = faultllm("hpo", *hpo_overrides(tiny_cache, easy_csv, 2), "hpo.launcher=slurm", *ONE_NODE,
                    f"hydra.run.dir={hpo}", "hpo.storage=sqlite:////tmp/study.db")  # fmt: skip
    assert (
        done.returncode == 2
        and "hpo.storage=sqlite:////tmp/study.db: hpo.launcher=slurm needs a database" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1 and not Path(hpo).exists()
    for wrong, why in [
        ("slurm.partition=gpu", "slurm.partition=gpu: no such partition; expected one of debug"),
        ("slurm.gpus=1", "slurm.gpus=1: debug has no GPUs (GRES (null)); slurm.gpus=0 on CPU nodes"),
    ]:
        done = faultllm("train", "-m", *easy_overrides(tiny_cache, easy_csv), "seed=1,2", "hydra/launcher=slurm",
                        "slurm=one_node", wrong, f"hydra.sweep.dir={sweep}")  # fmt: skip
        assert done.returncode == 2 and why in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert queued() == before


def test_partition_time_limits_and_gpus_are_checked_against_sinfos_answer():
    partitions = {"short": (_minutes("30:00"), "(null)"), "long": (_minutes("2-01:30:00"), "gpu:a100:4(S:0-1)")}
    assert partitions["long"][0] == 2 * 1440 + 90 and _minutes("infinite") == float("inf")
    check_partition(SlurmConfig(partition="long", time_min=2000, gpus=4), partitions)
    with pytest.raises(FaultLLMError, match=r"^slurm.time_min=31: short allows 30 minutes at most$"):
        check_partition(SlurmConfig(partition="short", time_min=31, gpus=0), partitions)
    check_partition(SlurmConfig(partition="nowhere"), {})  # no sinfo answer: sbatch says why


def test_a_cpu_partition_asks_for_no_gpus_and_hpo_workers_are_never_requeued():
    slurm = SlurmConfig(partition="debug", gpus=0)
    launcher, executor = launcher_parameters(slurm), executor_parameters(slurm)
    assert launcher["gpus_per_node"] is None and "max_num_timeout" in launcher
    assert executor["gpus_per_node"] is None and executor["slurm_partition"] == "debug"
    assert "max_num_timeout" not in executor and "slurm_max_num_timeout" not in executor


@pytest.mark.slow
def test_a_train_multirun_runs_as_slurm_jobs_and_reports_over_seeds(slurm_cluster, tiny_cache, easy_csv, tmp_path):
    quick = [*easy_overrides(tiny_cache, easy_csv), "trainer.epochs=1", "data.train_size=40", "data.test_size=20"]
    sweep = tmp_path / "sweep"
    done = faultllm("train", "-m", *quick, "seed=1,2", "hydra/launcher=slurm", *ONE_NODE, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(array_tasks(sweep / ".submitit")) == 2  # two SLURM jobs (one array of two tasks)
    assert all((sweep / str(job) / "metrics.json").exists() for job in (0, 1))
    done = faultllm("report", str(sweep), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "comparison over 2 seeds" in done.stdout and (tmp_path / "report" / "comparison.md").exists()


@pytest.mark.slow
def test_hpo_workers_as_a_slurm_array_share_one_postgresql_study(
    slurm_cluster, postgres_server, tiny_cache, easy_csv, tmp_path
):
    import optuna

    postgres_server.createdb("slurm_hpo")
    url = postgres_server.url("slurm_hpo")
    run_dir = tmp_path / "run"
    done = faultllm("hpo", *hpo_overrides(tiny_cache, easy_csv, 4), "hpo.launcher=slurm", "hpo.workers=2", "hpo.wait=true",
                    f"hpo.storage={url}", *ONE_NODE, f"hydra.run.dir={run_dir}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLURM array job" in done.stderr + done.stdout and "optuna-dashboard" in done.stderr + done.stdout
    assert len(array_tasks(run_dir / "slurm")) == 2  # two array tasks ran
    trials = optuna.load_study(study_name="faultllm", storage=url.replace("://", "+psycopg://")).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len({tuple(sorted(t.params.items())) for t in finished}) == 4
    logs = "".join(path.read_text() for path in (run_dir / "slurm").glob("*/*_log.out"))
    assert logs.count("trained:") == 1 and logs.count("hpo: ") == 1  # one refit, one Table 4.1
    assert (run_dir / "final" / "metrics.json").exists() and (run_dir / "table_4_1.md").exists()


@pytest.mark.slow
def test_two_srun_tasks_train_as_two_torchrun_ranks_do(slurm_cluster, tiny_cache, easy_csv, tmp_path):
    overrides = [
        *easy_overrides(tiny_cache, easy_csv), "data.train_size=32", "data.test_size=16", "trainer.epochs=1",
        "trainer.batch_size=2",
    ]  # fmt: skip
    runs = {
        "srun": ["srun", "-n", "2", "-c", "1", sys.executable, "-m", "faultllm"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "faultllm"],
    }  # fmt: skip
    metrics = {}
    for name, launch in runs.items():
        run_dir = tmp_path / name
        done = subprocess.run([*launch, "train", *overrides, f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[name] = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["srun"]["processes"] == 2 and metrics["srun"]["test"]["n"] == 16
    for split in ("train", "test"):
        assert metrics["srun"][split]["accuracy"] == metrics["torchrun"][split]["accuracy"]
        assert metrics["srun"][split]["loss"] == pytest.approx(metrics["torchrun"][split]["loss"], rel=1e-5)


def _running_trials(url: str) -> int:
    import optuna

    try:
        trials = optuna.load_study(study_name="faultllm", storage=url).trials
    except KeyError:  # the study is not made yet
        return 0
    return sum(t.state.name == "RUNNING" for t in trials)


@pytest.mark.slow
def test_a_worker_cancelled_mid_trial_is_resumed_by_resubmitting(
    slurm_cluster, postgres_server, tiny_cache, easy_csv, tmp_path
):
    import optuna

    postgres_server.createdb("slurm_cancel")
    url = postgres_server.url("slurm_cancel")
    study_url = url.replace("://", "+psycopg://")
    command = [
        "hpo", *hpo_overrides(tiny_cache, easy_csv, 2), "hpo.launcher=slurm", "hpo.refit=false", f"hpo.storage={url}",
        "hpo.heartbeat_interval=1", "hpo.grace_period=3", *ONE_NODE, f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = faultllm(*command)  # submits and returns
    assert done.returncode == 0, done.stderr[-3000:]
    (array_id,) = re.findall(r"SLURM array job (\d+)", done.stdout + done.stderr)
    deadline = time.time() + 300
    while time.time() < deadline and not _running_trials(study_url):
        time.sleep(0.5)
    subprocess.run(["scancel", array_id], check=True)  # mid-trial
    while time.time() < deadline and any(job.startswith(array_id) for job in queued()):
        time.sleep(0.5)
    assert _running_trials(study_url) == 1  # left behind by the cancelled worker
    done = faultllm(*command, "hpo.wait=true")  # the same command again: resubmitted, the study resumed
    assert done.returncode == 0, done.stderr[-3000:]
    states = [t.state.name for t in optuna.load_study(study_name="faultllm", storage=study_url).trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 2 and "RUNNING" not in states and "FAIL" in states


@pytest.mark.slow
def test_a_job_killed_without_a_result_is_seen_ended_through_squeue_without_sacct(slurm_cluster, tmp_path):
    """The test cluster has no accounting (sacct fails): submitit alone would wait for ever on this job."""
    import submitit

    import faultllm.run.slurm  # noqa: F401  (its watcher asks squeue where sacct fails)

    assert subprocess.run(["sacct"], capture_output=True).returncode != 0
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1)
    job = executor.submit(time.sleep, 300)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / job.job_id / f"{job.job_id}_0_log.out").exists():
        time.sleep(0.5)  # running
    subprocess.run(["scancel", "--signal=KILL", job.job_id], check=True)  # dies without writing its result
    deadline = time.time() + 60
    while time.time() < deadline and not job.done():
        time.sleep(1)
    assert job.done()  # submitit's own watcher says RUNNING for ever
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        job.result()
