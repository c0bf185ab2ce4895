"""Processes and GPUs: one process on one GPU, or the ranks of `torchrun` / `accelerate launch` (DDP).

A process started without a launcher uses exactly one GPU, the first visible one, so
transformers never wraps the model in DataParallel (which TRL refuses). Under a launcher
each rank puts its model on its local GPU, the ranks share one run directory, and only the
main process writes files.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def world_size(environ: MutableMapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))


def local_rank(environ: MutableMapping[str, str] = os.environ) -> int:
    return int(environ.get("LOCAL_RANK", "0"))


def is_main_process(environ: MutableMapping[str, str] = os.environ) -> bool:
    return int(environ.get("RANK", "0")) == 0


def pin_first_gpu(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Outside a launcher, make only the first visible GPU visible (before CUDA starts); returns its id.

    Under a launcher every rank keeps all GPUs and picks `local_rank`.
    """
    if world_size(environ) > 1:
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    first = "0" if visible is None else visible.split(",")[0].strip()
    if first:
        environ["CUDA_VISIBLE_DEVICES"] = first
    return first or None


def visible_gpus(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """The ids of the GPUs this process may hand out to worker processes ([] without CUDA)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def start_process_group():
    """The process group accelerate would start (NCCL on GPUs, gloo on CPUs), started early; it reuses it."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist


def agree_on_run_dir(parent: str) -> str:
    """`parent/<date>` chosen by the main process and shared with every rank (each would read its own clock)."""
    from datetime import datetime

    dist = start_process_group()
    chosen = [f"{parent}/{datetime.now():%Y-%m-%d_%H-%M-%S}" if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


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
