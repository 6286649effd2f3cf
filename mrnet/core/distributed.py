"""Data-parallel training under ``torchrun``: process-group setup and rank information."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device_name: str) -> torch.device | None:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns:
        This process's device under torchrun (``cuda:LOCAL_RANK`` with NCCL, or CPU with gloo),
        or None when not launched by torchrun.
    """
    if "LOCAL_RANK" not in os.environ or dist.is_initialized():
        return None
    local = int(os.environ["LOCAL_RANK"])
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group, if in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
