"""DistributedDataParallel under ``torchrun``: process group set-up and rank queries.

``torchrun --nproc_per_node N -m compress run pipeline.yaml`` starts N
processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. ``init_from_env``
joins them into one process group (NCCL when each process has a CUDA device,
gloo on CPU). ``fit`` then shards every batch across the ranks and wraps the
model in ``DistributedDataParallel``; only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the job (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files (rank 0)."""
    return rank() == 0


def local_device(device: str) -> torch.device:
    """The device this process trains on: ``cuda:<LOCAL_RANK>`` under torchrun with CUDA, else ``device``."""
    if device.startswith("cuda") and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def init_from_env() -> bool:
    """Join the process group that torchrun describes in the environment; no-op otherwise.

    Returns:
        True when running distributed (``WORLD_SIZE`` > 1).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("COMPRESS_DDP_BACKEND", "") != "gloo"
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
