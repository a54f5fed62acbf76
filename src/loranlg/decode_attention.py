"""Beam search's decode attention as one Triton kernel (opt-in: gpt2_beam.py --attention triton).

A decode step asks, per context and head, for B = beam queries (one new token per beam) against the
context's W cached keys, with kv_cache.py's additive ancestry mask. PyTorch's attention kernels are built
for many queries: the memory-efficient one pads the 10 queries to a tile of 64 and runs at about half the
bandwidth of reading the keys once (BENCHMARKS.md), and FlexAttention would compile at every start. This
kernel holds the B queries of one (context, head) in a tile of 16 rows and streams the keys and values in
blocks of 64, with the online softmax of flash attention; when there are few (context, head) pairs, the keys
are split among several programs whose partial results a second kernel combines (flash-decoding).

Same arithmetic as the usual kernels: scores and softmax in float32, the probabilities rounded to the
values' type for the second product. For bf16 and fp16 caches on a GPU; the rest stays with PyTorch's
scaled_dot_product_attention (fp32 and fp64 keep the exact reference arithmetic).

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1): that is how the CPU tests check
them.
"""

import importlib.util
import math
import os

import torch

BLOCK_KEYS = 64
BLOCK_QUERIES = 16
TARGET_PROGRAMS = 528  # split the keys until about 4 programs an SM of an H100 (132 SMs)


def available(dtype, device):
    """Whether the kernel can run on tensors of this dtype and device: Triton present, bf16/fp16, on a GPU
    (or in Triton's interpreter)."""
    if importlib.util.find_spec("triton") is None or dtype not in (torch.bfloat16, torch.float16):
        return False
    return torch.device(device or "cpu").type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def supports(queries, head_dim):
    """Whether the kernel handles this many queries per (context, head) and this head size."""
    return queries <= BLOCK_QUERIES and head_dim in (16, 32, 64, 128)


def splits_for(programs, blocks):
    """How many programs share one (context, head)'s key blocks."""
    if programs >= TARGET_PROGRAMS:
        return 1
    return max(1, min(blocks, TARGET_PROGRAMS // programs))


def decode_attention(q, keys, values, mask):
    """softmax(q k^T / sqrt(hd) + mask) v for q [N, H, Q, hd] (Q <= 16), keys and values [N, H, W, hd]
    (any strides, the last dimension contiguous), mask [N, 1, Q, W] additive (0 or -inf), its last dimension
    contiguous. Returns [N, H, Q, hd], laid out as [N, Q, H, hd] (so the model's transpose back to tokens is
    a view)."""
    n, heads, queries, head_dim = q.shape
    width = keys.shape[2]
    if not supports(queries, head_dim) or width < 1:
        raise ValueError(f"decode_attention: unsupported shape q {tuple(q.shape)}, {width} keys")
    if keys.stride(-1) != 1 or values.stride(-1) != 1 or mask.stride(-1) != 1:
        raise ValueError("decode_attention: keys, values and mask need a contiguous last dimension")
    out = torch.empty(n, queries, heads, head_dim, dtype=q.dtype, device=q.device)
    blocks = math.ceil(width / BLOCK_KEYS)
    splits = splits_for(n * heads, blocks)
    blocks_per_split = math.ceil(blocks / splits)
    splits = math.ceil(blocks / blocks_per_split)
    if splits > 1:
        partial = torch.empty(n * heads, splits, BLOCK_QUERIES, head_dim, dtype=torch.float32, device=q.device)
        stats = torch.empty(n * heads, splits, 2, BLOCK_QUERIES, dtype=torch.float32, device=q.device)
    else:
        partial = stats = out  # unused
    scale = 1.0 / math.sqrt(head_dim)
    from .decode_attention_kernels import attend_split, combine

    attend_split[(n * heads, splits)](
        q, keys, values, mask, out, partial, stats,
        *q.stride(), *keys.stride()[:3], *values.stride()[:3], mask.stride(0), mask.stride(2),
        *out.stride()[:3],
        heads, queries, blocks_per_split * BLOCK_KEYS, width, scale / math.log(2),
        HEAD_DIM=head_dim, BLOCK_Q=BLOCK_QUERIES, BLOCK_K=BLOCK_KEYS, SPLIT=splits > 1)
    if splits > 1:
        combine[(n * heads,)](partial, stats, out, *out.stride()[:3], heads, queries, splits,
                               HEAD_DIM=head_dim, BLOCK_Q=BLOCK_QUERIES)
    return out.permute(0, 2, 1, 3)
