"""packed_attention.py on the CPU: the kernel choice, and the variable-length path through a stand-in that
keeps torch.nn.attention.varlen's contract (a custom operator, as PyTorch's is, with its own backward), so
that tracing and compiling the path are checked without flash attention. tests/test_gpu.py runs the real
kernel; tests/test_train.py checks the packed batch's loss and gradients through the stand-in."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from loranlg import checkpoint, data, packed_attention


def reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, window_size=None, is_causal=False):
    """torch.nn.attention.varlen.varlen_attn's contract for causal masking, one example at a time: q, k, v
    [rows, H, hd]; the rows cu[i]..cu[i+1]-1 form example i and attend among themselves."""
    assert window_size == (-1, 0) or (window_size is None and is_causal)
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    bounds = cu_seq_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0] and max_q >= max(b - a for a, b in zip(bounds, bounds[1:]))
    parts = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True)
             .transpose(0, 1) for a, b in zip(bounds, bounds[1:]) if b > a]
    return torch.cat(parts)


@torch.library.custom_op("loranlg_test::varlen_attn", mutates_args=())
def varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_q: int) -> torch.Tensor:
    return reference_varlen_attn(q, k, v, cu, cu, max_q, max_q, window_size=(-1, 0)).contiguous()


@varlen_op.register_fake
def _(q, k, v, cu, max_q):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("loranlg_test::varlen_attn_backward", mutates_args=())
def varlen_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                       max_q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal softmax attention's gradients, written out per example (P = softmax(S), O = P V)."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    bounds, scale = cu.tolist(), q.shape[-1] ** -0.5
    for a, b in zip(bounds, bounds[1:]):
        query, key, value, grad_out = (t[a:b].transpose(0, 1) for t in (q, k, v, grad))  # [H, n, hd]
        later = torch.ones(b - a, b - a, dtype=torch.bool).triu(1)
        p = (query @ key.transpose(-1, -2) * scale).masked_fill(later, float("-inf")).softmax(-1)
        dp = grad_out @ value.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq[a:b] = (ds @ key * scale).transpose(0, 1)
        dk[a:b] = (ds.transpose(-1, -2) @ query * scale).transpose(0, 1)
        dv[a:b] = (p.transpose(-1, -2) @ grad_out).transpose(0, 1)
    return dq, dk, dv


@varlen_backward_op.register_fake
def _(grad, q, k, v, cu, max_q):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _save(ctx, inputs, output):
    q, k, v, cu, max_q = inputs
    ctx.save_for_backward(q, k, v, cu)
    ctx.max_q = max_q


def _backward(ctx, grad):
    q, k, v, cu = ctx.saved_tensors
    return (*varlen_backward_op(grad, q, k, v, cu, ctx.max_q), None, None)


varlen_op.register_autograd(_backward, setup_context=_save)


def varlen_stand_in(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, window_size=None):
    assert window_size == (-1, 0) and cu_seq_q is cu_seq_k and max_q == max_k
    return varlen_op(q, k, v, cu_seq_q, max_q)


@pytest.fixture
def varlen_on_the_cpu(monkeypatch):
    """KERNEL = "varlen", with the stand-in for PyTorch's kernel (the CPU has none)."""
    monkeypatch.setattr(packed_attention, "VARLEN_ATTN", varlen_stand_in)
    monkeypatch.setattr(packed_attention, "CAUSAL", {"window_size": (-1, 0)})
    monkeypatch.setattr(packed_attention, "varlen_usable", lambda qkv, n_head: True)
    monkeypatch.setattr(packed_attention, "KERNEL", "varlen")


def test_the_varlen_kernel_is_chosen_only_where_it_runs(monkeypatch):
    monkeypatch.setattr(packed_attention, "KERNEL", packed_attention.KERNEL)  # restored afterwards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert packed_attention.set_kernel("varlen") == "gather" == packed_attention.KERNEL
    with pytest.raises(ValueError, match="one of"):
        packed_attention.set_kernel("flash")


def test_a_compiled_block_with_the_varlen_kernel_is_one_graph_with_the_eager_numbers(varlen_on_the_cpu):
    """As training compiles its blocks (dynamic shapes), with the kernel a custom operator as PyTorch's is:
    one graph (fullgraph), the eager block's output and input gradient, and those of the gathered path."""
    torch.manual_seed(0)
    model = checkpoint.build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    batch = data.collate_packed([([1 + i] * (n + 1), 1) for i, n in enumerate((5, 9, 3))], 40,
                                length_multiple=16, tokens_multiple=64)  # 17 real rows, 47 of padding
    packing = {name: batch[name] for name in data.PACKING_KEYS}
    block = model.transformer.h[0]
    x = torch.randn(1, batch["input"].shape[1], model.config.n_embd, requires_grad=True)

    def output_and_gradient(fn):
        out = fn(x, packing=packing)
        return out, torch.autograd.grad(out.square().sum(), x)[0]

    eager = output_and_gradient(block)
    compiled = output_and_gradient(torch.compile(block, backend="aot_eager", fullgraph=True, dynamic=True))
    packed_attention.KERNEL = "gather"
    gathered = output_and_gradient(block)
    real = batch["pack_valid"].bool()
    for mine, theirs in ((compiled, eager), (eager, gathered)):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a[0, real], b[0, real], rtol=1e-5, atol=1e-6)
    assert eager[0].isfinite().all() and eager[1].isfinite().all()  # the padding rows too
