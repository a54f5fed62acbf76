"""Causal attention over a packed training batch: the examples of a batch end to end in one row
(data.collate_packed), each attending only to itself.

Two ways, the same numbers up to the kernels' rounding:
  "gather"  each example is gathered into a padded row of its own, attended with PyTorch's
            scaled_dot_product_attention, and scattered back (works everywhere);
  "varlen"  flash attention straight on the packed rows, cut into examples by their cumulative lengths
            (torch.nn.attention.varlen, PyTorch 2.10+, fp16/bf16 on a GPU): no gathers, no padded
            positions attended. Elsewhere "gather" runs instead.
KERNEL picks one (set it with set_kernel): "gather" until "varlen" has been measured on a GPU
(bench/bench_train.py, BENCHMARKS.md).
"""

import inspect

import torch
import torch.nn.functional as F

KERNELS = ("gather", "varlen")
KERNEL = "gather"


def _find_varlen():
    """(varlen_attn, its keyword for causal masking) or (None, None) where this PyTorch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, None
    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:  # PyTorch 2.11+: causal is a window reaching no later key
        return varlen_attn, {"window_size": (-1, 0)}
    if "is_causal" in parameters:  # PyTorch 2.10
        return varlen_attn, {"is_causal": True}
    return None, None


VARLEN_ATTN, CAUSAL = _find_varlen()


class _MoveRows(torch.autograd.Function):
    """rows[i] = x[index[i]], between a packed and a padded layout. index reaches every real row exactly once
    and the other rows get no gradient, so the backward is a gather too (`back`: for each row of x, the row
    of the result that holds it; `real`: 1.0 for real rows of x), not index_select's scatter-add."""

    @staticmethod
    def forward(ctx, x, index, back, real):
        ctx.save_for_backward(back, real)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        back, real = ctx.saved_tensors
        return grad.index_select(0, back) * real[:, None].to(grad.dtype), None, None, None


def move_rows(x, index, back, real):
    return _MoveRows.apply(x, index, back, real)


def set_kernel(name):
    """KERNEL = name; "varlen" only where this PyTorch has the kernel and the GPU runs flash attention (sm80+);
    returns the kernel set. Decided here once, not in the forward pass that torch.compile traces."""
    global KERNEL
    if name not in KERNELS:
        raise ValueError(f"packed attention kernel must be one of {KERNELS}, got {name!r}")
    usable = VARLEN_ATTN is not None and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    KERNEL = "varlen" if name == "varlen" and usable else "gather"
    return KERNEL


def varlen_usable(qkv, n_head):
    """Whether this pass can use the variable-length kernel (KERNEL == "varlen" checked the GPU)."""
    head_dim = qkv.shape[-1] // 3 // n_head
    return (VARLEN_ATTN is not None and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
            and head_dim % 8 == 0 and head_dim <= 256)


def packed_causal_attention(qkv, packing, n_head):
    """qkv [1, P, 3d] of the packed rows (q|k|v along the last dimension) -> attention output [1, P, d].
    packing: data.collate_packed's position_ids / pad_index / pack_index / pad_valid / pack_valid /
    cu_seqlens."""
    if KERNEL == "varlen" and varlen_usable(qkv, n_head):
        return varlen_causal_attention(qkv, packing["cu_seqlens"], n_head)
    return gathered_causal_attention(qkv, packing, n_head)


def varlen_causal_attention(qkv, cu_seqlens, n_head):
    """cu_seqlens [E + 1] (int32): where each example starts in the row, then where the row ends. The last
    "example" is the row's padding: it attends to itself alone, so every row gets finite values."""
    rows, width = qkv.shape[-2], qkv.shape[-1] // 3
    heads = qkv.reshape(rows, 3, n_head, width // n_head)
    # The bound on an example's length only sizes the kernel's grid: the row length always holds.
    out = VARLEN_ATTN(heads[:, 0], heads[:, 1], heads[:, 2], cu_seqlens, cu_seqlens, rows, rows, **CAUSAL)
    return out.reshape(*qkv.shape[:-1], width)


def gathered_causal_attention(qkv, packing, n_head):
    pad_index = packing["pad_index"]  # [B, L]
    padded = move_rows(qkv.reshape(-1, qkv.shape[-1]), pad_index.reshape(-1), packing["pack_index"],
                       packing["pack_valid"])
    batch, length, width = pad_index.shape[0], pad_index.shape[1], qkv.shape[-1] // 3
    heads = padded.view(batch, length, 3, n_head, width // n_head).permute(0, 2, 3, 1, 4)  # [B, q|k|v, H, L, hd]
    y = F.scaled_dot_product_attention(heads[:, 0], heads[:, 1], heads[:, 2], is_causal=True)
    y = y.transpose(1, 2).reshape(batch * length, width)
    return move_rows(y, packing["pack_index"], pad_index.reshape(-1),
                     packing["pad_valid"].reshape(-1)).view(*qkv.shape[:-1], width)
