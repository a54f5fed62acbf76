"""One process or many: torch.distributed.launch (--local-rank / --local_rank), torchrun (LOCAL_RANK, RANK,
WORLD_SIZE env), or a plain `python` run. NCCL on GPUs, gloo on the CPU."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .grad_sync import collectives_captured


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup_distributed(args=None):
    """Start the process group when launched with several processes; pick this rank's device."""
    env = os.environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = getattr(args, "local_rank", None)
    if local_rank is None:
        local_rank = int(env.get("LOCAL_RANK", "0"))
    requested = getattr(args, "device", None)
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(ctx):
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(value, ctx):
    """Mean of a float over ranks (one value per rank)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.item() / ctx.world_size


def gather_objects(obj, ctx):
    """Every rank's picklable object, as a list on rank 0 (None elsewhere)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj, ctx):
    """Every rank's picklable object, as a list on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


_host_groups = []


def host_group():
    """A gloo group of all ranks, for integers exchanged on the host (the default group's own when it is gloo)."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if not _host_groups:
        _host_groups.append(dist.new_group(backend="gloo"))
    return _host_groups[0]


def cleanup(ctx):
    while _host_groups:
        dist.destroy_process_group(_host_groups.pop())
    if collectives_captured():
        # Once a CUDA graph holds an NCCL collective, destroy_process_group hangs (pytorch/pytorch#115388,
        # seen on torch 2.11): the process ends instead, and its communicators with it.
        return
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
