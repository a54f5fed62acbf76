"""A batch moved to the GPU as one block of bytes.

A packed training batch is 11 small tensors (data.collate_packed). Moved one by one, each costs a copy of a
few microseconds on the GPU's stream, and a CUDA-graphed step then copies each again into the graph's inputs:
22 copies a step, about 2% of a 5 ms step. Here the tensors are laid out in one byte buffer (pinned on the
host), moved with one copy, and read through views; a graph's inputs are views into a buffer of the same
layout, filled with one more copy (graphed_step.py).
"""

import torch

ALIGN = 16  # bytes; every view starts at a multiple of its element size


class Batch(dict):
    """name -> tensor, every tensor a view into `flat` (uint8) at the places `layout` gives."""

    def __init__(self, flat, layout):
        super().__init__(views(flat, layout))
        self.flat = flat
        self.layout = layout


def byte_layout(tensors):
    """((name, dtype, shape, offset), ...) and the total size in bytes, for tensors laid out one after
    another (sorted by name, so that the same shapes always give the same layout)."""
    layout, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        layout.append((name, tensor.dtype, tuple(tensor.shape), offset))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    return tuple(layout), offset


def views(flat, layout):
    """The tensors of `layout` as views into the byte buffer `flat`."""
    out = {}
    for name, dtype, shape, offset in layout:
        size = torch.Size(shape).numel() * dtype.itemsize
        out[name] = flat[offset:offset + size].view(dtype).view(shape)
    return out


def to_device(tensors, device):
    """A Batch on `device` holding the values of `tensors` (CPU tensors; others are read back first): one
    copy, asynchronous on a GPU (the host buffer is pinned, so the copy is queued without waiting for the
    GPU's earlier work)."""
    layout, size = byte_layout(tensors)
    host = torch.empty(size, dtype=torch.uint8, pin_memory=device.type == "cuda")
    for name, view in views(host, layout).items():
        view.copy_(tensors[name])
    return Batch(host.to(device, non_blocking=True), layout)
