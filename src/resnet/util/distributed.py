"""torch.distributed, when launched by torchrun; a no-op single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # the processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Topology:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology()
    topology = Topology(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                        int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(topology.local_rank)
    return topology


Rows = TypeVar("Rows")


def shard(rows: Rows, topology: Topology) -> Rows:
    """This rank's disjoint, strided share of a global batch (an index tensor, or the
    batch's augmentation draws): anything sliceable by rows."""
    return rows[topology.rank::topology.world_size]


def barrier(topology: Topology) -> None:
    if topology.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, topology: Topology) -> torch.Tensor:
    if topology.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: object, topology: Topology) -> list:
    if not topology.enabled:
        return [obj]
    gathered: list = [None] * topology.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: object, topology: Topology) -> object:
    """Rank 0's ``obj`` on every rank (picklable; the others pass anything, e.g. None)."""
    if not topology.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(topology: Topology) -> None:
    if topology.enabled and dist.is_initialized():
        dist.destroy_process_group()
