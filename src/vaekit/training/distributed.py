"""Multi-process context from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

WEIGHT_HASH_ENV = "VAEKIT_DEBUG_WEIGHT_HASH_FILE"


@dataclass
class DistContext:
    """This process's place among the training processes: its rank, their number and its GPU index on
    the machine; one process (rank 0 of 1) when not launched by torchrun. The collectives are no-ops then.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes (the collectives do something)."""
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        """Whether this is rank 0, the process that writes files and prints."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over every rank, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`'s elementwise maximum over every rank, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def any_of(self, flags: list[bool] | list[torch.Tensor], device: torch.device) -> list[bool]:
        """Each flag True on every rank if it is True on any rank, in one all-reduce.

        A signal reaches only some processes and a NaN shows up in only one shard; every
        rank must take the same branch, or the others wait forever in the next collective.
        """
        t = torch.stack([torch.as_tensor(f, dtype=torch.float32, device=device) for f in flags])
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if any rank raised it."""
        return self.any_of([flag], device)[0]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere: each rank's last forward updated its own."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order; every rank must call it."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Waits until every rank has reached this call."""
        if self.enabled:
            dist.barrier()


def init_distributed(device_kind: str) -> DistContext:
    """Starts the process group when launched by torchrun; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # Before the group exists: torch.distributed.nn (which DDP imports) takes group.WORLD as
        # a default argument when it is imported, and would keep the group alive for good.
        import torch.distributed.nn  # noqa: F401

        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return ctx


def shutdown_distributed(ctx: DistContext) -> None:
    """Ends the process group; with nothing else holding it (drop the DDP wrapper first), its
    threads end here. A gloo thread still alive at interpreter exit can abort the process
    (SIGABRT) when it frees a collective's tensors."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class WeightHashLog:
    """Debug aid: with VAEKIT_DEBUG_WEIGHT_HASH_FILE=PATH set, each rank appends
    "<step> <sha256 of its parameters>" to PATH.rank<r> after every optimizer step, so a
    test can check that data-parallel ranks never drift apart. Off (one attribute test) by default.
    """

    def __init__(self, rank: int) -> None:
        base = os.environ.get(WEIGHT_HASH_ENV)
        self.path = Path(f"{base}.rank{rank}") if base else None

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        if self.path is None:
            return
        digest = hashlib.sha256()
        for p in model.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        with open(self.path, "a") as f:
            f.write(f"{step} {digest.hexdigest()}\n")


def process_device(device: torch.device, ctx: DistContext) -> torch.device:
    """The device this process trains on: with several processes on GPUs, its own GPU."""
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device
