"""SLURM through submitit: the values of the `hydra/launcher=slurm` preset (hydra_plugins.faultllm_slurm)
and HPO workers as one array job (docs/slurm.md); faultllm.preflight checks that a job's files are
reachable from the compute nodes.

submitit learns that a job ended from `sacct`; on a cluster without accounting `sacct` fails and a job
that died without writing its result (cancelled, out of time or memory) would be waited on for ever, so
a job that `squeue` no longer lists counts as ended there too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from faultllm.config.groups import SlurmConfig
from faultllm.config.load import build
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.progress import Progress


class SqueueFallbackWatcher(SlurmInfoWatcher):
    """submitit's sacct watcher; where sacct fails, a registered job that squeue no longer lists has ended."""

    def update(self) -> None:
        if shutil.which("sacct") and subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True).returncode == 0:
            return super().update()
        pending = {job_id for job_id in self._registered - self._finished}
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True)
        if listed.returncode != 0:
            return None  # the controller does not answer: ask again later
        states = dict(line.split("|", 1) for line in listed.stdout.split())
        for job_id in pending:
            self._info_dict[job_id] = {"JobID": job_id, "State": states.get(job_id, "ENDED")}
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)
        return None


SlurmJob.watcher = SqueueFallbackWatcher(delay_s=5)
SIGNAL_DELAY_S = 90  # SLURM sends SIGUSR2 this long before the time limit: submitit checkpoints and requeues


def launcher_parameters(slurm: SlurmConfig) -> dict[str, Any]:
    """The cluster's values as the parameters of Hydra's submitit launcher."""
    return {
        "partition": slurm.partition,
        "timeout_min": slurm.time_min,
        "gpus_per_node": slurm.gpus or None,  # no --gpus-per-node on a CPU partition (it needs a GPU GRES)
        "cpus_per_task": slurm.cpus,
        "mem_gb": slurm.mem_gb,
        "array_parallelism": slurm.array_parallelism,
        "additional_parameters": dict(slurm.sbatch),
        "setup": list(slurm.setup),
        "signal_delay_s": SIGNAL_DELAY_S,
        "max_num_timeout": slurm.requeues,
    }


def executor_parameters(slurm: SlurmConfig) -> dict[str, Any]:
    """The same values as `submitit.AutoExecutor.update_parameters` takes them (HPO workers are not requeued:
    a stopped worker's trial is retried through the study's heartbeat)."""
    common = {"timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"}
    parameters = launcher_parameters(slurm)
    del parameters["max_num_timeout"]
    return {key if key in common else f"slurm_{key}": value for key, value in parameters.items()}


def slurm_config(config) -> SlurmConfig:
    """The typed `slurm` slice of a composed job config."""
    return build(SlurmConfig, _plain(config.slurm))


def _plain(value: Any) -> Any:
    """A value of Hydra's config as a plain list, dict or scalar."""
    if hasattr(value, "items"):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def submit_array(commands: list[list[str]], slurm: SlurmConfig, folder: Path, name: str) -> list:
    """One SLURM array job, one task per command (each a process started on its node); its submitit jobs.
    The tasks inherit this process's environment (sbatch exports it), so a password never goes to disk."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(name=name, **executor_parameters(slurm))
    return executor.map_array(run_command, commands)


def run_command(command: list[str]) -> None:
    """What an array task runs: the command, failing the task when it fails."""
    done = subprocess.run(command)
    if done.returncode != 0:
        raise FaultLLMError(f"{' '.join(command[:4])}...: exit code {done.returncode}")


def wait_for(jobs: list, what: str, poll_s: float = 2.0) -> list[str]:
    """Wait until every job ended, with progress lines; the one-line failure of each job that failed."""
    progress = Progress(what, len(jobs))
    while (done := sum(job.done() for job in jobs)) < len(jobs):
        progress.update(done)
        time.sleep(poll_s)
    progress.update(done)
    progress.close()
    return [f"job {job.job_id}: {_last_line(job.exception())}" for job in jobs if job.exception() is not None]


def _last_line(err: BaseException) -> str:
    """The last non-empty line of a job's error: where a remote traceback names what failed."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
