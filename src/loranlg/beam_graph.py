"""Beam search's decode steps replayed as CUDA graphs.

The model's part of a step (key mask, 24 blocks, head: about 400 kernels for GPT-2 medium) takes the host
longer to launch from Python than the GPU to run at batch 128. A CUDA graph replays it with one launch.
A graph is bound to one cache's tensors and one key width (kv_cache.KEY_BLOCK slots: 6 or 7 steps at beam
10); the first step at a width runs eagerly, which also warms the kernels up, and the graph is captured
then for the steps that follow at that width.

A replay runs the captured kernels on the same memory: it sees what the cache's tensors hold then, but any
number the host computed during the capture stays as it was. So the step reads everything that changes from
step to step from device tensors (kv_cache.py). tests/graph_emulation.py replays recorded operations the
same way on the CPU, so the tests check this without a GPU.
"""

import sys

import torch


class CUDAGraphs:
    """Captures CUDA graphs on a side stream, all in one memory pool. Sharing the pool is safe here because
    a step's logits are used up (top-k taken) before the next replay, which may reuse the memory of another
    graph's intermediates."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()

    def capture(self, fn):
        """-> (graph, fn's output): graph.replay() runs fn's kernels again and rewrites that output."""
        graph = torch.cuda.CUDAGraph()
        # Not torch.cuda.graph(): it also synchronises, collects garbage and empties the cache at every
        # capture, which costs more than the few steps a graph serves here.
        self.stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self.stream):
                graph.capture_begin(pool=self.pool)
                try:
                    output = fn()
                finally:
                    graph.capture_end()
        finally:
            torch.cuda.current_stream().wait_stream(self.stream)
        return graph, output


class GraphedDecode:
    """decode(tokens [N, B], cache) -> padded logits [N, B, V'], as model.decode_step(tokens, cache,
    padded=True) computes them (the same kernels, so the same numbers). graphs: what captures them
    (CUDAGraphs by default)."""

    def __init__(self, model, graphs=None):
        self.model = model
        self.graphs = graphs if graphs is not None else CUDAGraphs()
        self.broken = False  # a capture failed: the rest runs eagerly
        self.captures = self.replays = 0

    def __call__(self, tokens, cache):
        cache.begin_step()
        entry = cache.graphs.get(cache.width)
        if entry is not None:
            static_tokens, graph, logits = entry
            static_tokens.copy_(tokens)
            graph.replay()
            self.replays += 1
        else:
            logits = self.model.decode_logits(tokens, cache)
            if not self.broken and self.later_steps_at_width(cache):
                self.capture(tokens, cache)
        cache.end_step()
        return logits

    @staticmethod
    def later_steps_at_width(cache):
        """Whether a later step attends to as many slots as this one (only then a graph can pay)."""
        later = cache.steps + 1
        return later < cache.ancestors.shape[2] and cache.width_at(later) == cache.width

    def capture(self, tokens, cache):
        static_tokens = tokens.clone()
        try:
            graph, logits = self.graphs.capture(lambda: self.model.decode_logits(static_tokens, cache))
        except Exception as err:  # e.g. an operation this PyTorch cannot capture
            self.broken = True
            print(f"beam search: CUDA graph capture failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                  "going on without graphs", file=sys.stderr)
            return
        cache.graphs[cache.width] = (static_tokens, graph, logits)
        self.captures += 1
