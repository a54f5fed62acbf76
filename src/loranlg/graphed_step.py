"""Training steps replayed as CUDA graphs, one graph per padded batch shape.

Eager PyTorch launches about 1,300 kernels for one GPT-2 medium step; at E2E's ~600 token positions a step
the GPU finishes each faster than the CPU can launch the next (SPEC 11: 54-63 ms eager). A CUDA graph
replays the whole step (forward, loss, backward, optimizer update) with one launch. The batch is copied into
the graph's static buffers, all in one copy (batch_transfer.py). The batch comes packed
(data.collate_packed) and padded to multiples of 64 tokens and 64 loss positions (with weight 0), its
longest example to a multiple of 16: with causal attention within each example and a weighted loss,
neither packing nor padding changes a number (tests/test_train.py proves it on the CPU), and E2E needs a few
dozen graphs.

Requirements on the pieces captured: no host-device synchronisation, and an optimizer whose learning rate
and step count live in device tensors (optim.py's capturable mode).
"""

import torch

from . import batch_transfer


class _Captured:
    def __init__(self, graph, flat, loss, grads):
        self.graph, self.flat, self.loss = graph, flat, loss  # flat: the bytes the graph's inputs view
        self.grads = grads  # keeps the graph's gradient buffers alive while the shared pool is reused


class GraphedTrainStep:
    """step(batch) -> loss tensor (valid until the next call), one optimizer update per call.

    train_step_fn(batch) must do forward, loss, backward and optimizer.step() and return the loss tensor;
    it gets the graph's copies of the batch's tensors (all but those named in `unused`), and is captured once
    per shape of the batch (a batch_transfer.Batch, or a dict of tensors that becomes one; collate pads
    lengths and loss positions to multiples, so few shapes occur).
    `protect` lists the tensors the warm-up runs would change (parameters, optimizer state): they are
    restored before the first real step, and after a failed capture.
    """

    def __init__(self, train_step_fn, params, protect, unused=(), warmup_iters=2):
        self.train_step_fn = train_step_fn
        self.unused = set(unused)
        self.params = [p for p in params if p.requires_grad]
        self.device = self.params[0].device
        self.protect = list(protect)
        self.warmup_iters = warmup_iters
        self.pool = torch.cuda.graph_pool_handle()
        self.captured = {}

    def __call__(self, batch):
        if not isinstance(batch, batch_transfer.Batch):
            batch = batch_transfer.to_device(batch, self.device)
        entry = self.captured.get(batch.layout) or self._capture(batch)
        entry.flat.copy_(batch.flat)  # all the graph's inputs in one copy
        entry.graph.replay()
        return entry.loss

    def _capture(self, batch):
        flat = batch.flat.clone()  # real indices for the warm-up
        inputs = {name: view for name, view in batch_transfer.views(flat, batch.layout).items()
                  if name not in self.unused}
        saved = [t.detach().clone() for t in self.protect]
        device = flat.device
        rng = torch.cuda.get_rng_state(device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS handles, autotuning, compilation
                for _ in range(self.warmup_iters):
                    self._clear_grads()
                    self.train_step_fn(inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            self._clear_grads()
            graph = torch.cuda.CUDAGraph()
            # "thread_local": other threads may use CUDA meanwhile (NCCL's watchdog polls its events, the
            # checkpoint writer waits for its copies)
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                loss = self.train_step_fn(inputs)
        finally:
            with torch.no_grad():
                for tensor, value in zip(self.protect, saved):
                    tensor.copy_(value)
            torch.cuda.set_rng_state(rng, device)
        entry = _Captured(graph, flat, loss, [p.grad for p in self.params])
        self.captured[batch.layout] = entry
        return entry

    def _clear_grads(self):
        for p in self.params:
            p.grad = None
