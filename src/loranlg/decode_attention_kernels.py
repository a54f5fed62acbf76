"""The Triton kernels of decode_attention.py (a module of their own: importing Triton costs every run that
does not use them)."""

import triton
import triton.language as tl

LOG2_E = tl.constexpr(1.4426950408889634)  # globals a kernel reads must be constexpr


@triton.jit
def attend_split(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, partial_ptr, stats_ptr,
                  q_sn, q_sh, q_sq, q_sd, k_sn, k_sh, k_sw, v_sn, v_sh, v_sw, m_sn, m_sq,
                  o_sn, o_sq, o_sh,
                  heads, queries, split_len, width, scale_log2,
                  HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
    pair = tl.program_id(0)  # (context, head)
    split = tl.program_id(1)
    n = (pair // heads).to(tl.int64)  # a context's offset in the cache passes 2**31 elements at batch 128
    h = pair % heads
    rows = tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    real = rows < queries
    q = tl.load(q_ptr + n * q_sn + h * q_sh + rows[:, None] * q_sq + dims[None, :] * q_sd,
                mask=real[:, None], other=0.0)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, width)
    for first in range(start, end, BLOCK_K):
        cols = first + tl.arange(0, BLOCK_K)
        inside = cols < width
        k = tl.load(k_ptr + n * k_sn + h * k_sh + cols[:, None] * k_sw + dims[None, :], mask=inside[:, None],
                    other=0.0)
        v = tl.load(v_ptr + n * v_sn + h * v_sh + cols[:, None] * v_sw + dims[None, :], mask=inside[:, None],
                    other=0.0)
        # Rows past the queries read a mask of 0: finite scores, never stored. Every block has a column
        # inside the width.
        bias = tl.load(mask_ptr + n * m_sn + rows[:, None] * m_sq + cols[None, :],
                       mask=real[:, None] & inside[None, :], other=0.0).to(tl.float32)
        bias = tl.where(inside[None, :], bias, float("-inf"))
        s = tl.dot(q, tl.trans(k)) * scale_log2 + bias * LOG2_E  # log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key allowed yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if SPLIT:
        base = (pair * tl.num_programs(1) + split)
        tl.store(partial_ptr + base * BLOCK_Q * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :], acc)
        tl.store(stats_ptr + base * 2 * BLOCK_Q + rows, m_i)
        tl.store(stats_ptr + base * 2 * BLOCK_Q + BLOCK_Q + rows, l_i)
    else:
        result = acc / l_i[:, None]
        tl.store(out_ptr + n * o_sn + h * o_sh + rows[:, None] * o_sq + dims[None, :],
                 result.to(out_ptr.dtype.element_ty), mask=real[:, None])

@triton.jit
def combine(partial_ptr, stats_ptr, out_ptr, o_sn, o_sq, o_sh, heads, queries, splits,
             HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr):
    pair = tl.program_id(0)
    n = (pair // heads).to(tl.int64)
    h = pair % heads
    rows = tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)
    m_all = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    for split in range(0, splits):
        m_all = tl.maximum(m_all, tl.load(stats_ptr + (pair * splits + split) * 2 * BLOCK_Q + rows))
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    l_all = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    for split in range(0, splits):
        base = pair * splits + split
        weight = tl.exp2(tl.load(stats_ptr + base * 2 * BLOCK_Q + rows) - m_safe)
        l_all += weight * tl.load(stats_ptr + base * 2 * BLOCK_Q + BLOCK_Q + rows)
        acc += weight[:, None] * tl.load(partial_ptr + base * BLOCK_Q * HEAD_DIM + rows[:, None] * HEAD_DIM
                                         + dims[None, :])
    result = acc / l_all[:, None]
    tl.store(out_ptr + n * o_sn + h * o_sh + rows[:, None] * o_sq + dims[None, :],
             result.to(out_ptr.dtype.element_ty), mask=(rows < queries)[:, None])
