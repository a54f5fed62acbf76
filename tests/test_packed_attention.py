"""packed_attention.py under torch.compile, as training compiles its blocks: one graph for every packed batch
(dynamic shapes, a new PackedAttention each step), with the eager block's numbers. Its numbers against the
reference forward: tests/test_model.py; the loss of packed batches: tests/test_train.py."""

import torch

from conftest import tiny_config
from loranlg import data
from loranlg.model import build_model
from loranlg.packed_attention import PackedAttention


def packed_batch(lengths):
    batch = data.collate_packed([([1 + i] * (n + 1), 1) for i, n in enumerate(lengths)], 40,
                                length_multiple=16, tokens_multiple=64)
    return batch, PackedAttention({name: batch[name] for name in data.PACKING_KEYS})


def test_a_compiled_block_is_one_graph_for_every_batch_with_the_eager_numbers():
    torch.manual_seed(0)
    model = build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    block = model.transformer.h[0]
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for lengths in ((5, 9, 3), (30, 2, 17, 11)):  # 17 real rows and 47 of padding; 60 and 4
        batch, attend = packed_batch(lengths)
        x = torch.randn(1, batch["input"].shape[1], model.config.n_embd, requires_grad=True)

        def output_and_gradient(fn):
            out = fn(x, attend, 0)
            return out, torch.autograd.grad(out.square().sum(), x)[0]

        eager, fast = output_and_gradient(block), output_and_gradient(compiled)
        real = batch["pack_valid"].bool()
        for a, b in zip(fast, eager):
            torch.testing.assert_close(a[0, real], b[0, real], rtol=1e-5, atol=1e-6)
        assert eager[0].isfinite().all() and eager[1].isfinite().all()  # the padding rows too
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
