"""Data parallelism by hand: the trainable weights start equal on every rank, and after each backward their
gradients are averaged over the ranks with one flat all-reduce.

This is what DistributedDataParallel does for our step, without its hooks and buckets. LoRA's gradients are
small (gpt2.md, r = 4 on q, v: 1.5 MB), so overlapping their reduction with the backward gains nothing; and
plain tensor operations plus one collective can be captured in the CUDA-graph step with the rest of it (NCCL
collectives can be captured), so that several processes replay whole steps as one process does.
"""

import torch
import torch.distributed as dist


_captured = False  # whether a CUDA graph captured average_gradients' collective


def collectives_captured():
    return _captured


def broadcast_parameters(parameters):
    """Rank 0's values of `parameters` on every rank (DDP does this when it wraps a model)."""
    for param in parameters:
        dist.broadcast(param.data, src=0)


def average_gradients(parameters, world_size):
    """p.grad := mean over the ranks of p.grad, for every parameter (a missing gradient counts as zeros):
    one all-reduce per gradient dtype, over the gradients flattened into one buffer."""
    global _captured
    _captured = _captured or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
    by_dtype = {}
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        torch._foreach_copy_(grads, [part.view_as(grad) for part, grad in
                                     zip(flat.split([grad.numel() for grad in grads]), grads)])
