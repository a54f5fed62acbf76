"""Training steps replayed as CUDA graphs, one graph per padded length bucket.

Eager PyTorch launches about 1,300 kernels for one GPT-2 medium step; at E2E's ~600 token positions a step
the GPU finishes each faster than the CPU can launch the next (SPEC 11: 54-63 ms eager). A CUDA graph
replays the whole step (forward, loss, backward, optimizer update) with one launch. The batch is copied into
the graph's static buffers, padded on the right to the bucket length: with causal attention and a masked
loss that padding changes no number (tests/test_train_* prove padding-invariance on the CPU).

Requirements on the pieces captured: no host-device synchronisation, and an optimizer whose learning rate
and step count live in device tensors (optim.py's capturable mode).
"""

import torch


def round_up(value, multiple):
    return -(-value // multiple) * multiple


class _Captured:
    def __init__(self, graph, ids, targets, mask, loss, grads):
        self.graph, self.ids, self.targets, self.mask, self.loss = graph, ids, targets, mask, loss
        self.grads = grads  # keeps the graph's gradient buffers alive while the shared pool is reused


class GraphedTrainStep:
    """step(ids, targets, mask) -> loss tensor (valid until the next call), one optimizer update per call.

    train_step_fn(ids, targets, mask) must do forward, loss, backward and optimizer.step(), and return the
    loss tensor; it is captured once per (batch, bucket length) shape. `protect` lists the tensors the
    warm-up runs would change (parameters, optimizer state): they are restored before the first real step.
    """

    def __init__(self, train_step_fn, params, protect, bucket=16, warmup_iters=2):
        self.train_step_fn = train_step_fn
        self.params = [p for p in params if p.requires_grad]
        self.protect = list(protect)
        self.bucket = bucket
        self.warmup_iters = warmup_iters
        self.pool = torch.cuda.graph_pool_handle()
        self.captured = {}

    def __call__(self, ids, targets, mask):
        batch, length = ids.shape
        key = (batch, round_up(length, self.bucket))
        entry = self.captured.get(key) or self._capture(*key, ids.device)
        for static, value in ((entry.ids, ids), (entry.targets, targets), (entry.mask, mask)):
            static[:, length:].zero_()
            static[:, :length].copy_(value)
        entry.graph.replay()
        return entry.loss

    def _capture(self, batch, length, device):
        ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        targets = torch.zeros_like(ids)
        mask = torch.zeros(batch, length, dtype=torch.float32, device=device)
        saved = [t.detach().clone() for t in self.protect]
        rng = torch.cuda.get_rng_state(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS handles, autotuning
            for _ in range(self.warmup_iters):
                self._clear_grads()
                self.train_step_fn(ids, targets, mask)
        torch.cuda.current_stream(device).wait_stream(side)
        self._clear_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss = self.train_step_fn(ids, targets, mask)
        grads = [p.grad for p in self.params]
        with torch.no_grad():
            for tensor, value in zip(self.protect, saved):
                tensor.copy_(value)
        torch.cuda.set_rng_state(rng, device)
        entry = _Captured(graph, ids, targets, mask, loss, grads)
        self.captured[(batch, length)] = entry
        return entry

    def _clear_grads(self):
        for p in self.params:
            p.grad = None
