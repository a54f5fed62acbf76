"""Causal attention over a packed training batch: the examples of a batch end to end in one row
(data.collate_packed), so that the matrix products skip the padding, each example attending only to itself.

Attention gathers each example into a padded row of its own, runs model.causal_attention's kernel on the
padded rows, and scatters the outputs back: the numbers of the reference forward (tests/test_model.py).
"""

import torch
import torch.nn.functional as F

from .model import merge_heads, split_heads


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


def packed_causal_attention(qkv, packing, n_head):
    """qkv [1, P, 3d] of the packed rows (q|k|v along the last dimension) -> attention output [1, P, d].
    packing: data.collate_packed's pad_index / pack_index / pad_valid / pack_valid."""
    pad_index = packing["pad_index"]  # [B, L]
    padded = move_rows(qkv.reshape(-1, qkv.shape[-1]), pad_index.reshape(-1), packing["pack_index"],
                       packing["pack_valid"])
    heads = split_heads(padded.view(*pad_index.shape, -1), n_head)  # [B, q|k|v, H, L, hd]
    y = merge_heads(F.scaled_dot_product_attention(heads[:, 0], heads[:, 1], heads[:, 2], is_causal=True))
    width = y.shape[-1]
    return move_rows(y.reshape(-1, width), packing["pack_index"], pad_index.reshape(-1),
                     packing["pad_valid"].reshape(-1)).view(*qkv.shape[:-1], width)


class PackedAttention:
    """The `attend` of model.py for one packed batch."""

    def __init__(self, packing):
        self.packing = packing

    def __call__(self, qkv, n_head, layer=None):
        return packed_causal_attention(qkv, self.packing, n_head)
