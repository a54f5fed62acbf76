"""GPU-only parity of the fast paths (skipped without CUDA; run on the device machine, see BENCHMARKS.md).

The CUDA-graph training step, with and without torch.compile, must give the numbers of the eager step: same
losses, same LoRA weights. Beam search on the GPU (its attention kernels read the beam cache through a
mask) must give the reference's outputs."""

import json

import pytest
import torch

from gpt2_ft import main
from loranlg import packed_attention
from conftest import encoded_e2e_sample
from test_train import write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def e2e_records(shared_dir, vocab_dir):
    return encoded_e2e_sample(shared_dir, vocab_dir, stride=37, count=64)  # lengths over several graph buckets


def run(tmp_path, name, data, extra, stop_after_step=None):
    """24 steps of gpt2.tiny with LoRA; (losses, final LoRA tensors), or None when stopped early."""
    work = tmp_path / name
    main([str(a) for a in ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                           "--lora_dim", 4, "--lora_alpha", 32, "--train_batch_size", 8, "--max_step", 24,
                           "--warmup_step", 3, "--lr", 2e-3, "--weight_decay", 0.01, "--correct_bias",
                           "--label_smooth", 0.1, "--clip", 1.0, "--log_interval", 8, "--save_interval", 24,
                           "--eval_interval", 24, "--random_seed", 5, "--work_dir", work] + extra],
         stop_after_step=stop_after_step)
    if stop_after_step is not None:
        return None
    losses = [r["loss"] for r in map(json.loads, open(work / "metrics.jsonl")) if "loss" in r]
    weights = torch.load(work / "model.24.pt", map_location="cpu", weights_only=True)["model_state_dict"]
    return losses, weights


@pytest.mark.parametrize("precision, compile, tolerance", [
    ("fp32", "off", 1e-5), ("fp32", "auto", 1e-4), ("bf16", "off", 2e-2), ("bf16", "auto", 2e-2)])
def test_cuda_graph_step_matches_eager(tmp_path, e2e_records, precision, compile, tolerance):
    """fp32 without compile: the same kernels in the same order, so rounding-level equality; compiled kernels
    fuse and reorder sums (fp32: 1e-4 over 24 steps); bf16 rounds differently along either path."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    eager_losses, eager_weights = run(tmp_path, "eager", data,
                                      ["--precision", precision, "--no_cuda_graph", "--compile", "off"])
    graph_losses, graph_weights = run(tmp_path, "graph", data, ["--precision", precision, "--compile", compile])
    assert len(graph_losses) == len(eager_losses) == 24
    assert graph_losses == pytest.approx(eager_losses, rel=tolerance)
    assert eager_losses[-1] < eager_losses[0]  # the run learns something
    for name, tensor in eager_weights.items():
        scale = tensor.abs().max().item()
        assert (graph_weights[name] - tensor).abs().max().item() <= tolerance * max(scale, 1e-3), name


def test_a_failing_compilation_falls_back_to_the_plain_graph(tmp_path, e2e_records, monkeypatch, capsys):
    """--compile auto must not end a run: a compiler failure at the first capture is reported, and the run
    goes on with the uncompiled graph, with the numbers of --compile off."""
    from loranlg import train as train_module

    def broken(objective):
        def fail(*args, **kwargs):
            raise RuntimeError("simulated compiler failure")
        objective.loss_fn = fail
        return True

    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    plain_losses, plain_weights = run(tmp_path, "plain", data, ["--compile", "off"])
    monkeypatch.setattr(train_module, "compile_objective", broken)
    losses, weights = run(tmp_path, "fallback", data, [])
    assert "torch.compile failed (RuntimeError: simulated compiler failure)" in capsys.readouterr().out
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    for name, tensor in plain_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_cuda_graph_run_resumed_ends_with_the_same_weights(tmp_path, e2e_records):
    """Stopped at step 12 and resumed (the optimizer state goes through the resume file), a graphed run ends
    where an uninterrupted one does."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    _, whole = run(tmp_path, "whole", data, [])
    flags = ["--save_interval", 6]
    run(tmp_path, "resumed", data, flags, stop_after_step=12)
    _, resumed = run(tmp_path, "resumed", data, flags + ["--resume"])
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_beam_search_on_the_gpu_matches_the_reference(dtype):
    from loranlg.beam import beam_search
    from test_beam import CASES, reference_beam, reference_case

    for case in range(len(CASES)):
        s, model, contexts = reference_case(case)
        expected = [reference_beam(model, c, s) for c in contexts]
        stats = {}
        assert beam_search(model.to("cuda", dtype), contexts, s, stats=stats, cuda_graphs=True) == expected, \
            f"case {case}"
        assert stats["replays"] > 0, f"case {case}: no step was replayed as a CUDA graph"


def test_graphed_beam_search_equals_eager_in_bf16():
    """gpt2_beam.py's GPU setting (bf16, the head padded with -inf logits, top-k over 50,304 columns,
    beam 10 over many key widths): the CUDA graphs replay the eager kernels, so the outputs are identical."""
    from conftest import tiny_model
    from loranlg.beam import BeamSettings, beam_search

    model = tiny_model(3, vocab_size=50257, n_positions=1024).to("cuda", torch.bfloat16)
    model.pad_head_for_inference()
    gen = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (5, 40, 17, 33, 9, 26)]
    s = BeamSettings(beam=10, eval_len=40, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    stats = {}
    graphed = beam_search(model, contexts, s, stats=stats, cuda_graphs=True)
    assert graphed == beam_search(model, contexts, s)
    assert stats["replays"] > stats["captures"] > 1


needs_triton = pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None, reason="needs Triton (PyTorch's CUDA builds have it)")


@needs_triton
def test_triton_decode_attention_on_the_gpu_is_as_close_as_pytorchs():
    """decode_attention.py's kernel in bf16 at gpt2.md's head shape, batch 128 (one program a pair) and 4
    (keys split among programs): as close to float64 attention as PyTorch's memory-efficient kernel."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from loranlg.decode_attention import decode_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    for contexts, width in ((128, 384), (4, 704), (4, 64)):
        kv = torch.randn(contexts, 2, 16, 704, 64, device="cuda", generator=gen).bfloat16()
        q = torch.randn(contexts, 10, 3, 16, 64, device="cuda", generator=gen).bfloat16().permute(2, 0, 3, 1, 4)[0]
        allowed = torch.rand(contexts, 10, width, device="cuda", generator=gen) < 0.4
        allowed[..., 0] = True
        mask = torch.zeros(contexts, 1, 10, width, device="cuda", dtype=torch.bfloat16)
        mask.masked_fill_(~allowed[:, None], float("-inf"))
        k, v = kv[:, 0, :, :width], kv[:, 1, :, :width]
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ours = decode_attention(q, k, v, mask)
        error, reference_error = (ours.double() - exact).abs().max(), (theirs.double() - exact).abs().max()
        assert error <= 2 * reference_error + 1e-3, (contexts, width, error, reference_error)


@needs_triton
def test_beam_search_with_triton_attention_and_graphs():
    """--attention triton: the outputs of PyTorch's attention, and CUDA graphs replaying the kernel change
    nothing. In fp16 (the kernel's other type), with embeddings 30x the initial ones: a random model's
    next-token distributions are nearly flat, so in bf16 one rounding step flips its near-ties (half the
    outputs differed, fifth session) whichever kernel is right."""
    from conftest import tiny_model
    from loranlg.beam import BeamSettings, beam_search

    model = tiny_model(3, n_embd=128, n_head=2, vocab_size=50257, n_positions=1024)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)
    model = model.to("cuda", torch.float16)
    model.pad_head_for_inference()
    gen = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in range(5, 45, 2)]
    s = BeamSettings(beam=10, eval_len=40, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    sdpa = beam_search(model, contexts, s)
    triton = beam_search(model, contexts, s, attention="triton")
    assert sum(a == b for a, b in zip(sdpa, triton)) >= 0.9 * len(contexts)
    stats = {}
    assert beam_search(model, contexts, s, attention="triton", cuda_graphs=True, stats=stats) == triton
    assert stats["replays"] > 0


needs_varlen = pytest.mark.skipif(packed_attention.VARLEN_ATTN is None,
                                  reason="needs torch.nn.attention.varlen (PyTorch 2.10+)")


@needs_varlen
@pytest.mark.parametrize("lengths", ["e2e", [64] * 8])
def test_varlen_packed_attention_is_as_close_as_the_gathered_one(lengths):
    """packed_attention.py's two kernels on a packed bf16 batch of gpt2.md's head shape, 8 examples of E2E
    lengths then the row's padding (or 8 x 64 tokens: no padding, an empty last example): output and input
    gradient as close to float64 as each other, and finite everywhere."""
    from loranlg.data import PACKING_KEYS, collate_packed

    gen = torch.Generator().manual_seed(0)
    if lengths == "e2e":
        lengths = torch.randint(20, 126, (8,), generator=gen).tolist()
    batch = collate_packed([([7] * (n + 1), 1) for n in lengths], seq_len=512, length_multiple=16,
                           tokens_multiple=64)
    rows = batch["input"].shape[1]
    packing = {name: batch[name].cuda() for name in PACKING_KEYS}
    real = packing["pack_valid"].bool()
    qkv64 = torch.randn(1, rows, 3 * 1024, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    grad_out = torch.randn(1, rows, 1024, generator=gen, dtype=torch.float64).cuda()
    exact = packed_attention.gathered_causal_attention(qkv64, packing, 16)
    exact_grad, = torch.autograd.grad(exact, qkv64, grad_out)
    kernels = {"gather": lambda qkv: packed_attention.gathered_causal_attention(qkv, packing, 16),
               "varlen": lambda qkv: packed_attention.varlen_causal_attention(qkv, packing["cu_seqlens"], 16)}
    errors = {}
    for name, kernel in kernels.items():
        qkv = qkv64.detach().bfloat16().requires_grad_()
        out = kernel(qkv)
        grad, = torch.autograd.grad(out, qkv, grad_out.bfloat16())
        assert out.float().isfinite().all() and grad.float().isfinite().all(), name
        errors[name] = ((out.double() - exact)[0, real].abs().max().item(),
                        (grad.double() - exact_grad)[0, real].abs().max().item())
    assert errors["varlen"][0] <= 2 * errors["gather"][0] + 1e-3, errors
    assert errors["varlen"][1] <= 2 * errors["gather"][1] + 1e-3, errors


@needs_varlen
def test_graphed_training_with_varlen_attention_matches_the_gathered_one(tmp_path, e2e_records, monkeypatch):
    """The CUDA-graph step (compiled, bf16, packed) with packed_attention.KERNEL = "varlen": the losses of the
    gathered attention within bf16 rounding."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    gather_losses, _ = run(tmp_path, "gather", data, ["--precision", "bf16"])
    monkeypatch.setattr(packed_attention, "KERNEL", packed_attention.KERNEL)  # restored afterwards
    assert packed_attention.set_kernel("varlen") == "varlen"
    varlen_losses, _ = run(tmp_path, "varlen", data, ["--precision", "bf16"])
    assert varlen_losses == pytest.approx(gather_losses, rel=2e-2)
