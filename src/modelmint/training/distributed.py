"""Data-parallel training under ``torchrun`` with the same recipe code as one process.

Under torchrun (``WORLD_SIZE`` > 1) recipes wrap their model in
DistributedDataParallel over the CPU ``gloo`` backend and train on their rank's
shard of the rows; alone, every helper here is a no-op, so recipes never branch.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray

__all__ = ["barrier", "init", "is_main", "rank", "shard", "world_size", "wrap"]


def init() -> None:
    """Join the process group torchrun describes in the environment, once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes checkpoints, exports and registers versions."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running distributed; else ``model``."""
    if dist.is_initialized():
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def shard(indices: NDArray[np.int64]) -> NDArray[np.int64]:
    """This rank's rows of an epoch's (already shuffled, same-seeded) index order.

    Every rank gets the same number of rows (the tail is padded by wrapping around),
    because DDP's all-reduce waits for every rank at each step.
    """
    size = world_size()
    if size == 1:
        return indices
    per_rank = -(-len(indices) // size)
    padded = np.resize(indices, per_rank * size)
    return padded[rank() :: size]
