"""Processes and GPUs: one process on one GPU, or the ranks of `torchrun` / `accelerate launch` (DDP).

A process started without a launcher uses exactly one GPU, the first visible one, so
transformers never wraps the model in DataParallel (which TRL refuses). Under a launcher
each rank puts its model on its local GPU, the ranks share one run directory, and only the
main process writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TypeVar

from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_text

T = TypeVar("T")


def world_size(environ: MutableMapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))


def local_rank(environ: MutableMapping[str, str] = os.environ) -> int:
    return int(environ.get("LOCAL_RANK", "0"))


def is_main_process(environ: MutableMapping[str, str] = os.environ) -> bool:
    return int(environ.get("RANK", "0")) == 0


def ranks_from_srun(environ: MutableMapping[str, str] = os.environ) -> None:
    """Under `srun -n N` (a job step of N > 1 tasks, no torchrun around it): the torchrun variables from
    SLURM's, the rendezvous on the step's first node at a port drawn from the job id."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))  # srun's; a batch script's own SLURM_NTASKS is not
    if tasks < 2 or "WORLD_SIZE" in environ:
        return
    import subprocess

    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split()
    environ.update({
        "RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks), "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_STEP_TASKS_PER_NODE", str(tasks)).split("(")[0].split(",")[0],
        "MASTER_ADDR": environ.get("MASTER_ADDR", hosts[0] if hosts else nodes),
        "MASTER_PORT": environ.get("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)),
    })  # fmt: skip


GPU_LIST = "FAULTLLM_GPUS"  # the GPUs this process was given, kept when it pins itself to the first one
ALL_GPUS = "all"  # GPU_LIST when CUDA_VISIBLE_DEVICES was unset: every GPU nvidia-smi lists


def pin_first_gpu(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Outside a launcher, make only the first visible GPU visible; returns its id. Call it once per process,
    before anything (transformers, peft, bitsandbytes) asks CUDA: torch counts the devices only once.

    The GPUs visible before stay listed (`visible_gpus`) for hpo to hand to its worker processes.
    Under a launcher every rank keeps all GPUs and picks `local_rank`.
    """
    if world_size(environ) > 1:
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    environ[GPU_LIST] = ALL_GPUS if visible is None else visible
    first = "0" if visible is None else visible.split(",")[0].strip()
    if first:
        environ["CUDA_VISIBLE_DEVICES"] = first
    return first or None


def visible_gpus(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """The ids of the GPUs this process may hand out to worker processes ([] without CUDA): those it was
    given before `pin_first_gpu`. Never asks torch, which would fix this process's device count for good."""
    listed = environ.get(GPU_LIST, environ.get("CUDA_VISIBLE_DEVICES", ALL_GPUS))
    if listed != ALL_GPUS:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout if smi else ""
    except (OSError, subprocess.SubprocessError):
        listing = ""
    return [str(index) for index, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


DDP_TIMEOUT = 1800  # seconds; transformers' default for trainer.ddp_timeout


def start_process_group(timeout_s: float = DDP_TIMEOUT):
    """The process group accelerate would start (NCCL on GPUs, gloo on CPUs), started early with the
    configured collective timeout (accelerate reuses the group, so its own timeout never applies)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        device = None
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank())
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device is not None else "gloo", timeout=timedelta(seconds=timeout_s), device_id=device
        )
    return dist


def agree_on_run_dir(parent: str, timeout_s: float = DDP_TIMEOUT) -> str:
    """`parent/<date>` chosen by the main process and shared with every rank (each would read its own clock)."""
    from datetime import datetime

    dist = start_process_group(timeout_s)
    chosen = [f"{parent}/{datetime.now():%Y-%m-%d_%H-%M-%S}" if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


def _group():
    """The started process group with more than one rank, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist


def main_decides(decide: Callable[[], T]) -> T:
    """`decide()` run by the main rank only, its answer given to every rank (run here outside a launcher)."""
    dist = _group()
    if dist is None:
        return decide()
    answer = [decide() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(answer, src=0)
    return answer[0]


SHARED_MARKER = ".faultllm-shared"


def check_shared_dir(directory: Path, wait_s: float = 10.0) -> None:
    """Every rank sees `directory` as the main rank does (checkpoints are written by all ranks and read back
    by all on resume), else one line, on every rank, saying what to do. The main rank writes a marker
    that every rank reads (waiting `wait_s` for a network file system's caches)."""
    import socket
    import time
    import uuid

    dist = _group()
    if dist is None:
        return
    token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
    marker = directory / SHARED_MARKER
    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        write_text(marker, token[0])
    dist.broadcast_object_list(token, src=0)  # sent after the write
    deadline = time.monotonic() + wait_s
    while not (seen := _holds(marker, token[0])) and time.monotonic() < deadline:
        time.sleep(0.5)
    views: list = [None] * dist.get_world_size()
    dist.all_gather_object(views, (seen, socket.gethostname()))
    if dist.get_rank() == 0:
        marker.unlink(missing_ok=True)
    blind = [(rank, host) for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        rank, host = blind[0]
        raise FaultLLMError(
            f"rank {rank} (on {host}) does not see the run directory {directory} of rank 0: ranks on several "
            "nodes need it on a file system every node mounts; pass hydra.run.dir=DIR on shared storage"
        )


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:  # not there (yet), or a stale network file handle
        return False


def gather(items: list) -> list:
    """Every rank's items, concatenated in rank order (the items themselves outside a launcher)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def shard(n: int) -> range:
    """The positions 0..n-1 this rank handles (all of them outside a launcher)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return range(n)
    return range(dist.get_rank(), n, dist.get_world_size())
