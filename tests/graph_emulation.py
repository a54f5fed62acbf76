"""CUDA-graph semantics on the CPU, for tests: a capture records the operations a function runs, and a
replay runs those operations again on the same tensors.

What a CUDA graph keeps from its capture, this keeps too: the tensors each kernel reads and writes (inputs
by identity, intermediates and outputs rewritten in place at every replay) and every number the host
computed during the capture (shapes, Python ints, scalars passed to kernels). So code that reads a value
on the host during a capture, or swaps a tensor for a new one between replays, gives stale results here as
on a GPU. Reading a tensor's value on the host (a sync) raises, as it would during a CUDA capture.

Not emulated: the shared memory pool (here every intermediate has memory of its own), and capture
running nothing (here the capture runs the operations once, like the eager step it follows).
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class RecordedGraph:
    def __init__(self):
        self.operations = []  # (aten op, args, kwargs, output) with the capture's tensors

    def replay(self):
        for op, args, kwargs, output in self.operations:
            fresh = op(*args, **kwargs)
            for old, new in zip(tensors(output), tensors(fresh)):
                if new.data_ptr() != old.data_ptr():  # not a view or an in-place result: rewrite it
                    old.copy_(new)


def tensors(value):
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


class _Recorder(TorchDispatchMode):
    def __init__(self, operations):
        super().__init__()
        self.operations = operations

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if op is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("a tensor's value was read on the host during a graph capture")
        output = op(*args, **kwargs)
        self.operations.append((op, args, kwargs, output))
        return output


class EmulatedGraphs:
    """beam_graph.CUDAGraphs' interface on any device."""

    def capture(self, fn):
        graph = RecordedGraph()
        with _Recorder(graph.operations):
            output = fn()
        return graph, output
