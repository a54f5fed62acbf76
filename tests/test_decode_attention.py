"""decode_attention.py's Triton kernel without a GPU: its numbers through Triton's interpreter (in a child
process: the interpreter is chosen when the kernels are defined), and its compilation for an H100 (sm_90)
ahead of time. tests/test_gpu.py runs it on a GPU. Needs Triton (`bash scripts/setup.sh --dev` installs it
next to a CPU-only torch)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_model
from loranlg import decode_attention
from loranlg.beam import BeamSettings, beam_search

pytest.importorskip("triton", reason="Triton is not installed (bash scripts/setup.sh --dev)")

CHILD = """
import sys, torch
sys.path.insert(0, {src!r})
from loranlg import decode_attention
from loranlg.beam import beam_search
job = torch.load(sys.argv[1], weights_only=False)
if job["kind"] == "attention":
    result = [decode_attention.decode_attention(*case) for case in job["cases"]]
else:
    calls, kernel = [], decode_attention.decode_attention
    decode_attention.decode_attention = lambda *args: calls.append(1) or kernel(*args)
    result = (beam_search(job["model"], job["contexts"], job["settings"], attention="triton"), len(calls))
torch.save(result, sys.argv[2])
"""


def interpreted(tmp_path, job):
    """Run `job` in a child process with TRITON_INTERPRET=1; its result."""
    job_path, out_path = tmp_path / "job.pt", tmp_path / "out.pt"
    torch.save(job, job_path)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD.format(src=str(REPO / "src")), str(job_path),
                           str(out_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out_path, weights_only=False)


def attention_case(gen, contexts, heads, queries, width, slots=256):
    """q as the model hands it over (a strided view of q|k|v), one layer's cache slice, a random mask with
    each query's first key allowed; context 0 allows nothing past key 63 (key blocks with no key allowed)."""
    dtype = torch.float16  # the interpreter computes bf16 products wrongly (numpy has no bf16); fp16 it does
    kv = torch.randn(contexts, 3, 2, heads, slots, 64, generator=gen).to(dtype)[:, 1]
    q = torch.randn(contexts, queries, 3, heads, 64, generator=gen).to(dtype).permute(2, 0, 3, 1, 4)[0]
    allowed = torch.rand(contexts, queries, width, generator=gen) < 0.4
    allowed[:, :, 0] = True
    allowed[0, :, 64:] = False
    mask = torch.zeros(contexts, queries, width, dtype=dtype).masked_fill_(~allowed, float("-inf"))[:, None]
    return q, kv[:, 0, :, :width], kv[:, 1, :, :width], mask


def test_kernel_matches_attention_in_float64(tmp_path):
    gen = torch.Generator().manual_seed(0)
    cases = [attention_case(gen, 3, 2, 10, 192),   # few (context, head) pairs: keys split among 3 programs
             attention_case(gen, 2, 3, 7, 200),    # a width that is not a multiple of the key block
             attention_case(gen, 1, 1, 16, 40)]    # 16 queries, one partial block
    cases.append(attention_case(gen, 530, 1, 4, 64, slots=64))  # enough pairs for one program each
    assert [decode_attention.splits_for(q.shape[0] * q.shape[1], -(-k.shape[2] // 64)) for q, k, _, _ in cases] \
        == [3, 4, 1, 1]
    results = interpreted(tmp_path, {"kind": "attention", "cases": cases})
    for (q, k, v, mask), out in zip(cases, results):
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
        half = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # PyTorch's, in the same type
        assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()
        error, theirs = (out.double() - exact).abs().max(), (half.double() - exact).abs().max()
        assert error <= 2 * theirs + 1e-4, (error, theirs)


def test_beam_search_with_the_kernel_equals_sdpa(tmp_path):
    model = tiny_model(5, n_embd=64, n_positions=256).to(torch.float16)  # heads of 16: the kernel's smallest
    model.pad_head_for_inference()
    gen = torch.Generator().manual_seed(5)
    contexts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in (3, 11, 7)]
    s = BeamSettings(beam=4, eval_len=12, length_penalty=0.8, no_repeat_ngram_size=3, eos_ids=(5,))
    expected = beam_search(model, contexts, s)
    got, calls = interpreted(tmp_path, {"kind": "beam", "model": model, "contexts": contexts, "settings": s})
    assert calls == 2 * (s.eval_len - 1)  # every decode step of both layers went through the kernel
    assert got == expected


def test_kernels_compile_for_an_h100():
    """Triton compiles the kernels for sm_90 without a GPU (a compile error would otherwise show only on
    one): both types, with and without split keys."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from loranlg import decode_attention_kernels as kernels

    def signature(fn, pointers, constants):
        return {name: "constexpr" if name in constants else pointers.get(name, "fp32" if name == "scale_log2"
                                                                        else "i32") for name in fn.arg_names}

    target = GPUTarget("cuda", 90, 32)
    for dtype in ("bf16", "fp16"):
        pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "out_ptr")}
        pointers.update(partial_ptr="*fp32", stats_ptr="*fp32")
        for split in (False, True):
            constants = dict(HEAD_DIM=64, BLOCK_Q=16, BLOCK_K=64, SPLIT=split)
            compiled = triton.compile(ASTSource(kernels.attend_split, signature(kernels.attend_split, pointers,
                                                                                constants), constants), target=target)
            assert compiled.asm["cubin"]
        constants = dict(HEAD_DIM=64, BLOCK_Q=16)
        compiled = triton.compile(ASTSource(kernels.combine, signature(kernels.combine, pointers, constants),
                                            constants), target=target)
        assert compiled.asm["cubin"]


def test_without_a_gpu_the_cache_keeps_pytorchs_attention(monkeypatch):
    from loranlg.kv_cache import attention_usable

    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # where the kernel runs on the CPU, for these shapes only
    assert attention_usable("triton", torch.float16, cpu, 10, 64)
    assert not attention_usable("triton", torch.float32, cpu, 10, 64)
    assert not attention_usable("triton", torch.float16, cpu, 17, 64)  # more beams than a tile's rows
    assert not attention_usable("triton", torch.float16, cpu, 10, 8)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not attention_usable("triton", torch.bfloat16, cpu, 10, 64)  # not interpreted here: no GPU
    assert attention_usable("sdpa", torch.bfloat16, cpu, 10, 64)
    with pytest.raises(ValueError, match="attention must be one of"):
        attention_usable("flash", torch.bfloat16, cpu, 10, 64)
