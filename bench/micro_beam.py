"""Microbenchmarks of one beam-search step's two largest parts at batch 128, beam 10, GPT-2 medium shapes:

1. attention of one layer over the beam cache (10 queries per context, an additive key mask) for the SDPA
   backends and a plain matmul-softmax-matmul (at batch 128 and 16), against the floor of reading the keys
   and values once;
2. the scores: from the logits [1280, 50,304] (bf16, padded head) to each context's 10 best candidates,
   the first session's way (log-softmax of everything, top-k over 502,570 candidates a context) against
   beam.top_log_probs (softmax once, each beam's 10 best logits, one torch.topk a row).

    python bench/micro_beam.py
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
from loranlg import beam  # noqa: E402

CONTEXTS, HEADS, BEAMS, HEAD_DIM, VOCAB, PADDED_VOCAB = 128, 16, 10, 64, 50257, 50304
BANDWIDTH = 3.0e12  # bytes/s, this H100's copy bandwidth (BENCHMARKS.md)


def gpu_us(fn, iterations=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations * 1000


def matmul_attention(q, k, v, mask):
    scores = torch.matmul(q, k.transpose(-1, -2)) * HEAD_DIM ** -0.5 + mask
    return torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), v)


def attention_table(contexts):
    slots = 704
    kv = torch.randn(contexts, 2, HEADS, slots, HEAD_DIM, device="cuda", dtype=torch.bfloat16)  # one layer
    print(f"{contexts} contexts")
    print("| keys | efficient (sdpa) | cuDNN | math | matmul, softmax, matmul | floor (K, V read once) |")
    print("|---|---|---|---|---|---|")
    for width in (128, 384, 704):
        k, v = kv[:, 0, :, :width], kv[:, 1, :, :width]
        qkv = torch.randn(contexts, BEAMS, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        q = qkv.permute(2, 0, 3, 1, 4)[0]  # a view, as the model hands it over
        mask = torch.zeros(contexts, 1, BEAMS, width, device="cuda", dtype=torch.bfloat16)
        mask.masked_fill_(torch.rand(mask.shape, device="cuda") < 0.3, float("-inf"))
        mask[..., 0] = 0
        cells = []
        for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel([backend]):
                    cells.append(f"{gpu_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)):.0f} us")
            except RuntimeError as err:
                cells.append(f"fails ({str(err)[:40]})")
        cells.append(f"{gpu_us(lambda: matmul_attention(q, k, v, mask)):.0f} us")
        floor = 2 * contexts * HEADS * width * HEAD_DIM * 2 / BANDWIDTH * 1e6
        print(f"| {width} | " + " | ".join(cells) + f" | {floor:.0f} us |")


def scores_table():
    rows = CONTEXTS * BEAMS
    logits = torch.randn(rows, PADDED_VOCAB, device="cuda", dtype=torch.bfloat16)
    logits[:, VOCAB:] = float("-inf")
    beam_scores = torch.randn(CONTEXTS, BEAMS, device="cuda")
    settings = beam.BeamSettings(beam=BEAMS, no_repeat_ngram_size=0, eos_ids=())

    def first_session():
        logp = torch.log(torch.softmax(logits[:, :VOCAB].float(), dim=-1))
        candidates = (beam_scores.reshape(-1, 1) + logp).view(CONTEXTS, BEAMS * VOCAB)
        return torch.topk(candidates, BEAMS, dim=1)

    def rows_then_contexts(row_logits):
        """softmax once; each row's 10 largest logits by a plain torch.topk; top-k over 100 per context"""
        probs = torch.softmax(logits[:, :VOCAB].float(), dim=-1)
        ids = torch.topk(row_logits, BEAMS, dim=1).indices
        logp = torch.log(probs.gather(1, ids))
        candidates = (beam_scores.reshape(-1, 1) + logp).view(CONTEXTS, BEAMS * BEAMS)
        return torch.topk(candidates, BEAMS, dim=1)

    def now():
        logp, ids = beam.top_log_probs(logits, None, settings, torch.float32, BEAMS)  # no processing here
        candidates = (beam_scores.reshape(-1, 1) + logp).view(CONTEXTS, BEAMS * BEAMS)
        return torch.topk(candidates, BEAMS, dim=1)

    difference = (first_session()[0] - now()[0]).abs().max().item()
    print("| scores of a step | GPU time |")
    print("|---|---|")
    print(f"| log-softmax of all, top-k over B x V (first session) | {gpu_us(first_session):.0f} us |")
    fp32_rows = logits[:, :VOCAB].float()
    print(f"| softmax once, torch.topk of each fp32 row, top-k over B x B | "
          f"{gpu_us(lambda: rows_then_contexts(logits[:, :VOCAB].float())):.0f} us |")
    print(f"| the same, torch.topk of each bf16 row | {gpu_us(lambda: rows_then_contexts(logits[:, :VOCAB])):.0f} us |")
    print(f"| beam.top_log_probs + top-k over B x B (now; largest score difference: {difference:.1e}) | "
          f"{gpu_us(now):.0f} us |")
    print(f"| parts: conversion to fp32 | {gpu_us(lambda: logits[:, :VOCAB].float()):.0f} us |")
    print(f"| parts: softmax of fp32 rows | {gpu_us(lambda: torch.softmax(fp32_rows, -1)):.0f} us |")
    print(f"| parts: torch.topk of each row (bf16 / fp32) | {gpu_us(lambda: torch.topk(logits, BEAMS, dim=1)):.0f} / "
          f"{gpu_us(lambda: torch.topk(fp32_rows, BEAMS, dim=1)):.0f} us |")
    softmax = gpu_us(lambda: torch.softmax(logits, -1, dtype=torch.float32))
    print(f"| parts: softmax, bf16 in, fp32 out | {softmax:.0f} us |")


def main():
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    attention_table(CONTEXTS)
    print()
    attention_table(16)
    print()
    scores_table()


if __name__ == "__main__":
    main()
