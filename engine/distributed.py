"""torch.distributed glue: process-group setup from torchrun's environment, and the few collectives methods use.

Every function is the identity (or a no-op) in a single process, so methods and the trainer call them
unconditionally. Collectives never read values back to the host.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, world size and local rank (the GPU index on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, reports and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> World:
    """The World torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a single process when they are unset)."""
    try:
        return World(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as error:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them): {error}") from error


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank along dim 0, in rank order (U2PL's memory-queue keys).

    Every rank must pass the same shape; use `all_gather_varying` when the first dimension differs.
    """
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of `tensor` over ranks, returned as a new tensor (the input is left unchanged)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of `tensor` over ranks (U2PL divides its all-reduced contrastive loss by the world size)."""
    if world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / world_size()


# ----------------------------------------------------------------------------------------------- job lifecycle
def init(backend: str = "auto", device_type: str = "cpu", timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes (once per process); a single process returns World() untouched.

    Args:
        backend: "auto" (NCCL on CUDA, gloo on CPU), "nccl" or "gloo".
        device_type: the training device's type.
        timeout_s: how long a collective may wait for a missing rank before raising instead of hanging.
    """
    world = env_world()
    if not world.distributed or is_initialized():
        return world
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"train.dist_backend = {backend!r}: expected 'auto', 'nccl' or 'gloo'")
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    import datetime

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world


def shutdown() -> None:
    """Leave the process group (end of a torchrun job); a no-op in a single process.

    Every rank waits for the others first, so none tears down its side while a peer is still in a collective.
    Note: with torch 2.13 a process that ever built a DistributedDataParallel keeps the gloo process group's threads
    (gloo_tcp_loop, pt_gloo_runloop) running after destroy_process_group (measured: they stay even after the module
    is deleted and collected; without DDP they end). They then race the interpreter's teardown, which aborted a rank
    of a finished job under load ("terminate called without an active exception"); `exit_process` ends the job.
    """
    if is_initialized():
        dist.barrier()
        gc.collect()  # modules that reference the group (DDP) go before it
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun worker after `shutdown`: flush the streams and leave without running C++ static destructors,
    which the threads torch leaves behind (see `shutdown`) may still be using."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def ddp_wrapper(device: torch.device):
    """The `wrap` a method's `distribute` receives: DistributedDataParallel around one module.

    find_unused_parameters is on because methods run several forward/backward pairs per step and not every pair
    reaches every parameter (a frozen discriminator, an unused aux head before a loss weight turns on).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # nothing to average (e.g. an EMA teacher)
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    return wrap
