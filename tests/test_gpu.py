"""GPU-only parity of the fast paths (skipped without CUDA; run on the device machine, see BENCHMARKS.md).

The CUDA-graph training step, with and without torch.compile, must give the numbers of the eager step: same
losses, same LoRA weights. Beam search on the GPU (its attention kernels read the beam cache through a
mask) must give the reference's outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2_ft import main
from conftest import REPO, encoded_e2e_sample
from test_train import write_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def e2e_records(shared_dir, vocab_dir):
    return encoded_e2e_sample(shared_dir, vocab_dir, stride=37, count=64)  # lengths over several graph buckets


def run(tmp_path, name, data, extra, stop_after_step=None, nproc=1):
    """24 steps of gpt2.tiny with LoRA; (losses, final LoRA tensors), or None when stopped early. nproc > 1:
    under torchrun, with the batch of 8 as --global_batch."""
    work = tmp_path / name
    batch = ["--train_batch_size", 8] if nproc == 1 else ["--global_batch", 8]
    argv = [str(a) for a in ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                             "--lora_dim", 4, "--lora_alpha", 32, *batch, "--max_step", 24,
                             "--warmup_step", 3, "--lr", 2e-3, "--weight_decay", 0.01, "--correct_bias",
                             "--label_smooth", 0.1, "--clip", 1.0, "--log_interval", 8, "--save_interval", 24,
                             "--eval_interval", 24, "--random_seed", 5, "--work_dir", work] + extra]
    if nproc == 1:
        main(argv, stop_after_step=stop_after_step)
    else:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", str(REPO / "src" / "gpt2_ft.py"), *argv],
                              capture_output=True, text=True, timeout=600, env=dict(os.environ))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        assert "CUDA graphs: on" in done.stdout, done.stdout[-2000:]
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


@pytest.mark.parametrize("precision, tolerance, variant", [
    ("fp32", 1e-4, ["--lora_targets", "q,k,v,o", "--dora", "--lora_plus_ratio", "4"]),
    ("bf16", 2e-2, ["--lora_targets", "all", "--lora_scaling", "rs", "--dora"])])
def test_cuda_graph_step_with_lora_variants_matches_eager(tmp_path, e2e_records, precision, tolerance, variant):
    """The variants (docs/lora-variants.md) through the compiled CUDA-graph step: the eager step's numbers."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    eager_losses, eager_weights = run(tmp_path, "eager", data,
                                      ["--precision", precision, "--no_cuda_graph", "--compile", "off", *variant])
    graph_losses, graph_weights = run(tmp_path, "graph", data, ["--precision", precision, *variant])
    assert graph_losses == pytest.approx(eager_losses, rel=tolerance) and eager_losses[-1] < eager_losses[0]
    assert any(name.endswith("lora_magnitude") for name in eager_weights)
    for name, tensor in eager_weights.items():
        scale = tensor.abs().max().item()
        assert (graph_weights[name] - tensor).abs().max().item() <= tolerance * max(scale, 1e-3), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("precision, compile, tolerance", [("fp32", "off", 1e-4), ("bf16", "auto", 2e-2)])
def test_two_gpus_of_a_global_batch_match_one_gpu(tmp_path, e2e_records, precision, compile, tolerance):
    """torchrun with 2 processes, each replaying the CUDA-graph step with the gradient all-reduce captured in
    it, --global_batch 8: the losses and weights of one GPU's batch of 8 (the matrix products differ in size,
    so rounding differs)."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    flags = ["--precision", precision, "--compile", compile]
    one_losses, one_weights = run(tmp_path, "one", data, flags)
    two_losses, two_weights = run(tmp_path, "two", data, flags, nproc=2)
    assert len(two_losses) == 24 and two_losses == pytest.approx(one_losses, rel=tolerance)
    for name, tensor in one_weights.items():
        scale = tensor.abs().max().item()
        assert (two_weights[name] - tensor).abs().max().item() <= tolerance * max(scale, 1e-3), name


def test_a_failing_compilation_falls_back_to_the_plain_graph(tmp_path, e2e_records, monkeypatch, capsys):
    """--compile auto must not end a run: a compiler failure at the first capture is reported, and the run
    goes on with the uncompiled graph, with the numbers of --compile off."""
    from loranlg import train_step

    def broken(objective, options):
        def fail(*args, **kwargs):
            raise RuntimeError("simulated compiler failure")
        objective.loss_fn = fail
        return True

    data = write_jsonl(tmp_path / "train.jsonl", e2e_records)
    plain_losses, plain_weights = run(tmp_path, "plain", data, ["--compile", "off"])
    monkeypatch.setattr(train_step, "compile_objective", broken)
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
    from loranlg.decoder import Decoder
    from test_beam import CASES, reference_beam, reference_case

    for case in range(len(CASES)):
        s, model, contexts = reference_case(case)
        expected = [reference_beam(model, c, s) for c in contexts]
        assert beam_search(Decoder(model.to("cuda", dtype)), contexts, s) == expected, f"case {case}"


def test_beam_search_with_the_padded_head_in_bf16_gives_well_formed_outputs():
    """gpt2_beam.py's GPU setting (bf16, the head padded with -inf logits, top-k over 50,304 columns, beam 10):
    well-formed outputs, and the padding never chosen."""
    from conftest import tiny_model
    from loranlg.beam import BeamSettings, beam_search
    from loranlg.decoder import Decoder

    model = tiny_model(3, vocab_size=50257, n_positions=1024).to("cuda", torch.bfloat16)
    decoder = Decoder(model, pad_head=True)
    gen = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (5, 40, 17, 33, 9, 26)]
    s = BeamSettings(beam=10, eval_len=40, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    outputs = beam_search(decoder, contexts, s)
    assert len(outputs) == len(contexts) and all(len(ids) == 40 and max(ids) < 50257 for ids in outputs)


def test_auto_batch_size_fits_the_free_memory(monkeypatch):
    """--batch_size auto: every context when they fit, else as many as GPU_MEMORY_SHARE of the free memory
    holds at beam.bytes_per_context each, at least one."""
    from conftest import tiny_model
    from gpt2_beam import GPU_MEMORY_SHARE, auto_batch_size
    from loranlg.beam import BeamSettings, bytes_per_context
    from loranlg.decoder import Decoder

    decoder = Decoder(tiny_model(3, vocab_size=50257, n_positions=1024).to("cuda", torch.bfloat16), pad_head=True)
    s = BeamSettings(beam=10, eval_len=64, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    contexts = [tuple(range(n)) for n in (40, 30, 20)]
    assert auto_batch_size(decoder, contexts, s)[0] == 3
    each = bytes_per_context(decoder, 40, s)
    total = torch.cuda.mem_get_info()[1]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(2.5 * each / GPU_MEMORY_SHARE), total))
    size, why = auto_batch_size(decoder, contexts, s)
    assert size == 2 and "2 batch(es)" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, total))
    assert auto_batch_size(decoder, contexts, s)[0] == 1
