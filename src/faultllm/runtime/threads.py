"""One thread budget for every pool in a process: torch, BLAS/OpenMP, tokenizers and joblib.

Each library sizes its pool as if it owned every core of the machine; stacked (torch's intra-op
threads, OpenMP in HistGradientBoosting, a random forest's n_jobs=-1, OpenBLAS, tokenizers' Rayon
pool) and on cores shared with other processes, they made the same commands 3-10x slower. Here:

- the budget is the cores this process may use: the `threads` config key when > 0, else the user's
  OMP_NUM_THREADS when set, else the least of the CPU affinity, the cgroup CPU quota, SLURM_CPUS_PER_TASK
  and the CPUs other processes leave idle when it starts (a team spread over a busy core waits for it);
- the process's own pools (torch intra-op, BLAS/OpenMP, tokenizers) get the whole budget, torch's
  inter-op pool 1 thread: they run one after another, never at once;
- a loop of independent work (models, folds) runs in min(tasks, budget) worker processes with
  budget // workers threads each, and 1 thread each on tables under SMALL_TABLE_ROWS rows (OpenMP teams
  that spin-wait on a few hundred rows cost more than they gain). Pools never nest.

Imports nothing heavy: the CLI sets the environment from here before numpy and torch load.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

CGROUP = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
SMALL_TABLE_ROWS = 20_000  # below: single-threaded models inside the workers
PARALLEL_MIN_ROWS = 200  # below: the whole loop runs in this process (starting workers costs more than it saves)
# Read once, when a library loads: set before numpy, scikit-learn and torch are imported.
POOL_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS",
)  # fmt: skip


@dataclass(frozen=True)
class Cores:
    """The cores this process may use, and what limited them."""

    affinity: int  # CPUs this process may run on (os.sched_getaffinity)
    quota: float | None = None  # the cgroup's CPU quota in cores (cpu.max; v1: cfs_quota_us / cfs_period_us)
    slurm: int | None = None  # SLURM_CPUS_PER_TASK
    omp: int | None = None  # the user's OMP_NUM_THREADS
    requested: int = 0  # the `threads` config key; 0: automatic
    idle: float | None = None  # how many of the affinity's CPUs other processes left idle at the start

    @property
    def count(self) -> int:
        if self.requested > 0:
            return self.requested
        if self.omp:
            return self.omp
        limits = [self.affinity, self.slurm, max(1, math.floor(self.quota)) if self.quota else None]
        count = min(limit for limit in limits if limit)
        # cores another process keeps busy: a team spread over them waits for its slowest thread
        return max(1, min(count, round(self.idle)) if self.idle is not None else count)

    def describe(self) -> str:
        """The run log's line: the budget, where it came from, and what each pool gets."""
        n = self.count
        source = f"threads={self.requested}" if self.requested else f"OMP_NUM_THREADS={self.omp}" if self.omp else (
            f"affinity {self.affinity}, cgroup quota {_shown(self.quota)}, SLURM_CPUS_PER_TASK {_shown(self.slurm)}, "
            f"idle {'unknown' if self.idle is None else f'{self.idle:.1f}'}"
        )  # fmt: skip
        return (
            f"threads: {n} core{'s' * (n > 1)} ({source}) -> torch {n} intra-op + 1 inter-op, BLAS/OpenMP {n}, "
            f"tokenizers {n}; loops over models/folds: up to {n} worker processes, 1 thread each on tables "
            f"under {SMALL_TABLE_ROWS} rows"
        )


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def available_cores(
    requested: int = 0, environ: Mapping[str, str] = os.environ, cgroup: Path = CGROUP, stat: Path | None = PROC_STAT
) -> Cores:
    """The budget of this process; `requested` (the `threads` key) > 0 overrides every other source.
    Without `requested` or OMP_NUM_THREADS, the CPUs' idleness is measured (`stat`; None: not measured)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    omp = _positive_int(environ.get("OMP_NUM_THREADS"))
    return Cores(
        affinity=len(cpus),
        quota=cgroup_quota(cgroup),
        slurm=_positive_int(environ.get("SLURM_CPUS_PER_TASK")),
        omp=omp,
        requested=requested,
        idle=idle_cpus(cpus, stat) if stat and not requested and not omp else None,
    )


def idle_cpus(cpus: set[int], stat: Path = PROC_STAT, seconds: float = 0.2) -> float | None:
    """How many of `cpus` were idle over the next `seconds` (Linux's /proc/stat); None where it cannot be read."""
    try:
        before = _cpu_times(stat, cpus)
        time.sleep(seconds)
        after = _cpu_times(stat, cpus)
    except (OSError, ValueError):
        return None
    if not before:
        return None
    shares = [
        (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1]) if after[cpu][1] > before[cpu][1] else 1.0
        for cpu in before.keys() & after.keys()
    ]
    return sum(shares)


def _cpu_times(stat: Path, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """cpu -> (idle + iowait ticks, all ticks) since boot, for the given CPUs."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(tick) for tick in ticks[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))
    return times


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs per period the cgroup allows (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return int(quota) / int(period)


def loop_plan(cores: int, tasks: int, rows: int) -> tuple[int, int]:
    """(worker processes, threads inside each) for `tasks` independent pieces of work on a table of `rows`."""
    if rows < PARALLEL_MIN_ROWS:
        return 1, 1
    workers = max(1, min(cores, tasks))
    return workers, 1 if rows < SMALL_TABLE_ROWS else max(1, cores // workers)


def pool_environment(count: int) -> dict[str, str]:
    """The environment variables that size every pool to `count` threads when their library loads."""
    environment = dict.fromkeys(POOL_VARIABLES, str(count))
    if count == 1:
        environment["TOKENIZERS_PARALLELISM"] = "false"
    return environment


def apply(cores: Cores, environ: MutableMapping[str, str] = os.environ) -> int:
    """Size this process's pools to the budget and log it; returns the thread count. Call it before numpy
    and torch load (the CLI does): pools already loaded are limited too, but only for this process."""
    from threadpoolctl import threadpool_limits

    count = cores.count
    environ.update(pool_environment(count))
    threadpool_limits(limits=count)  # only what is loaded already; the rest reads the environment
    log.info(cores.describe())
    return count


def limit_torch(count: int) -> None:
    """torch's intra-op pool to `count` threads, its inter-op pool (unused by training) to 1."""
    import torch

    torch.set_num_threads(count)
    with suppress(RuntimeError):  # allowed once per process, before any inter-op work: an earlier call decided
        torch.set_num_interop_threads(1)


@contextmanager
def limited(count: int) -> Iterator[None]:
    """BLAS and OpenMP pools at `count` threads inside the block (a worker of a parallel loop)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=count):
        yield


def parallel_map(function: Callable[[T], R], tasks: list[T], workers: int, threads: int) -> Iterator[R]:
    """function(task) for each task, in order, each as soon as it is done: in `workers` processes of `threads`
    threads each (`loop_plan`), or in this process when workers == 1. The pools inside are limited either way."""
    if workers <= 1:
        with limited(threads):
            yield from map(function, tasks)
        return
    from joblib import Parallel, delayed, parallel_config

    # inner_max_num_threads: the workers' OMP_NUM_THREADS & co. (else they would inherit this process's budget)
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        calls = (delayed(_call_limited)(function, threads, task) for task in tasks)
        yield from Parallel(n_jobs=workers, return_as="generator")(calls)


def _call_limited(function: Callable[[T], R], threads: int, task: T) -> R:
    with limited(threads):  # a reused worker may have started with another budget
        return function(task)
