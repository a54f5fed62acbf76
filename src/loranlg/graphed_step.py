"""Training steps replayed as CUDA graphs, one graph per padded batch shape.

Eager PyTorch launches about 1,300 kernels for one GPT-2 medium step; at E2E's ~600 token positions a step
the GPU finishes each faster than the CPU can launch the next (SPEC 11: 54-63 ms eager). A CUDA graph
replays the whole step (forward, loss, backward, optimizer update) with one launch. The batch is copied into
the graph's static buffers. collate pads it on the right to a multiple of 16 tokens and its loss positions to
a multiple of 64 (with weight 0): with causal attention and a weighted loss that padding changes no number
(tests/test_train_* prove padding-invariance on the CPU), and E2E needs about a dozen graphs.

Requirements on the pieces captured: no host-device synchronisation, and an optimizer whose learning rate
and step count live in device tensors (optim.py's capturable mode).
"""

import torch

INPUTS = ("input", "target", "positions", "weights")


class _Captured:
    def __init__(self, graph, inputs, loss, grads):
        self.graph, self.inputs, self.loss = graph, inputs, loss
        self.grads = grads  # keeps the graph's gradient buffers alive while the shared pool is reused


class GraphedTrainStep:
    """step(batch) -> loss tensor (valid until the next call), one optimizer update per call.

    train_step_fn(input, target, positions, weights) must do forward, loss, backward and optimizer.step(),
    and return the loss tensor; it is captured once per shape of the batch (collate pads lengths and loss
    positions to multiples, so few shapes occur). `protect` lists the tensors the warm-up runs would change
    (parameters, optimizer state): they are restored before the first real step, and after a failed capture.
    """

    def __init__(self, train_step_fn, params, protect, warmup_iters=2):
        self.train_step_fn = train_step_fn
        self.params = [p for p in params if p.requires_grad]
        self.protect = list(protect)
        self.warmup_iters = warmup_iters
        self.pool = torch.cuda.graph_pool_handle()
        self.captured = {}

    def __call__(self, batch):
        key = tuple(tuple(batch[name].shape) for name in INPUTS)
        entry = self.captured.get(key) or self._capture(key, batch)
        for static, name in zip(entry.inputs, INPUTS):
            static.copy_(batch[name])
        entry.graph.replay()
        return entry.loss

    def _capture(self, key, batch):
        inputs = [batch[name].clone() for name in INPUTS]  # a real batch: the warm-up must see real indices
        saved = [t.detach().clone() for t in self.protect]
        device = inputs[0].device
        rng = torch.cuda.get_rng_state(device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS handles, autotuning, compilation
                for _ in range(self.warmup_iters):
                    self._clear_grads()
                    self.train_step_fn(*inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            self._clear_grads()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                loss = self.train_step_fn(*inputs)
        finally:
            with torch.no_grad():
                for tensor, value in zip(self.protect, saved):
                    tensor.copy_(value)
            torch.cuda.set_rng_state(rng, device)
        entry = _Captured(graph, inputs, loss, [p.grad for p in self.params])
        self.captured[key] = entry
        return entry

    def _clear_grads(self):
        for p in self.params:
            p.grad = None
