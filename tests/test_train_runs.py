"""Whole runs of gpt2_ft.py on the CPU: outputs, resume, overfitting, bad input, and two processes under
torchrun against one process with the same global batch."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, encoded_e2e_sample, run_script, tiny_config
from gpt2_ft import build_parser, check_args, main
from loranlg import checkpoint, train
from loranlg.model import build_model
from loranlg.distributed import DistContext
from loranlg.errors import InputError
from test_train import write_jsonl


@pytest.fixture(scope="module")
def e2e_examples(shared_dir, vocab_dir):
    """The first lines of E2E valid.txt, encoded."""
    return encoded_e2e_sample(shared_dir, vocab_dir, stride=500, count=9)


def records(work_dir):
    return [json.loads(line) for line in open(os.path.join(work_dir, "metrics.jsonl"))]


def lora_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def quiet_main(argv, **kwargs):
    return main([str(a) for a in argv], **kwargs)


def test_run_writes_checkpoints_metrics_and_log(tmp_path, e2e_examples, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", e2e_examples[:6])
    work = tmp_path / "run"
    quiet_main(["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny", "--lora_dim", 4,
                "--lora_alpha", 32, "--train_batch_size", 2, "--max_epoch", 2, "--warmup_step", 2, "--lr", 1e-3,
                "--log_interval", 2, "--save_interval", 4, "--eval_interval", 5, "--work_dir", work, "--device", "cpu"])
    out = capsys.readouterr().out
    assert "random weights" in out and "trainable parameters: 2,048" in out  # 2 * 2 * r * d * layers
    assert re.search(r"\| epoch +1 step +2 \| +2 batches \| lr \S+ \| ms/batch +\S+ \| loss +\S+ \| "
                     r"avg loss +\S+ \| ppl +\S+", out)
    assert sorted(os.listdir(work)) == ["metrics.jsonl", "model.4.pt", "model.6.pt", "resume.pt"]
    final = lora_tensors(work / "model.6.pt")
    assert sorted(final) == sorted(f"module.transformer.h.{i}.attn.c_attn.lora_{m}" for i in (0, 1) for m in "AB")
    log = records(work)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # max_step = 2 epochs * 3 batches
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert [r["lr"] for r in steps] == pytest.approx([0, 5e-4, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert all(r["ms"] > 0 and r["loss"] > 0 for r in steps)
    assert [r["valid_ppl"] for r in log if "valid_loss" in r] == \
        pytest.approx([math.exp(r["valid_loss"]) for r in log if "valid_loss" in r], rel=1e-12)
    assert [r["step"] for r in log if "valid_loss" in r] == [5, 6]
    # Log lines are printed once the next step is queued (train_log.py), but carry their own step's numbers
    # (the loss of that step, the average of the two steps since the last line), before that step's save.
    lines = re.findall(r"\| epoch +(\d+) step +(\d+) \| +(\d+) batches \| lr (\S+) \| ms/batch +\S+ \| "
                       r"loss +(\S+) \| avg loss +(\S+)", out)
    loss = {r["step"]: r["loss"] for r in steps}
    assert [(int(e), int(s), int(b)) for e, s, b, *_ in lines] == [(1, 2, 2), (2, 4, 1), (2, 6, 3)]
    for _, step, _, lr, last, avg in lines:
        step = int(step)
        # as the original: the rate after the schedule's step, that of the next update (0 after the last)
        assert float(lr) == pytest.approx(steps[step]["lr"] if step < 6 else 0.0, rel=1e-2)
        assert last == f"{loss[step]:.2f}" and avg == f"{(loss[step - 1] + loss[step]) / 2:.2f}"
    assert out.index(" step        4 |") < out.index("model.4.pt")


def test_resume_ends_with_the_same_weights(tmp_path, e2e_examples):
    """Dropout on, gradient accumulation, a save in the middle of an accumulation and of an epoch, and a
    dataset whose last batch is filled with random examples: all must come back exactly."""
    data = write_jsonl(tmp_path / "train.jsonl", e2e_examples[:7])
    common = ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny", "--lora_dim", 4,
              "--lora_alpha", 32, "--lora_dropout", 0.2, "--train_batch_size", 2, "--grad_acc", 2,
              "--max_epoch", 2, "--warmup_step", 2, "--lr", 5e-3, "--label_smooth", 0.1, "--correct_bias",
              "--log_interval", 1, "--save_interval", 3, "--eval_interval", 100, "--device", "cpu"]
    quiet_main(common + ["--work_dir", tmp_path / "whole"])
    first = quiet_main(common + ["--work_dir", tmp_path / "parts"], stop_after_step=5)
    assert first["stopped"] and not os.path.exists(tmp_path / "parts" / "model.8.pt")
    quiet_main(common + ["--work_dir", tmp_path / "parts", "--resume"])
    whole, parts = lora_tensors(tmp_path / "whole" / "model.8.pt"), lora_tensors(tmp_path / "parts" / "model.8.pt")
    start = build_model("gpt2.tiny", 4, 32)
    assert not torch.equal(whole["module.transformer.h.0.attn.c_attn.lora_B"],
                           start.transformer.h[0].attn.c_attn.lora_B)
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key
    strip = lambda log: [{k: v for k, v in r.items() if k != "ms"} for r in log]  # noqa: E731
    assert strip(records(tmp_path / "whole")) == strip(records(tmp_path / "parts"))
    assert [r["step"] for r in records(tmp_path / "parts") if "loss" in r] == [2, 4, 6, 8]


@pytest.mark.slow
def test_small_model_overfits_a_handful_of_e2e_examples(tmp_path, e2e_examples):
    """8 E2E examples, their ~100 distinct tokens renumbered into a small vocabulary, a small GPT-2 fully
    fine-tuned from random weights: the loss starts near ln(vocab) and must fall below 0.5 in 40 steps."""
    examples = e2e_examples[:8]
    vocab = {t: i for i, t in enumerate(sorted({t for c, x in examples for t in c + x}))}
    renumbered = [([vocab[t] for t in c], [vocab[t] for t in x]) for c, x in examples]
    data = write_jsonl(tmp_path / "train.jsonl", renumbered)
    args = build_parser().parse_args([str(a) for a in [
        "--train_data", data, "--valid_data", data, "--train_batch_size", 8, "--max_step", 40, "--lr", 1e-2,
        "--scheduler", "constant", "--weight_decay", 0, "--correct_bias", "--log_interval", 10,
        "--eval_interval", 1000, "--save_interval", 1000, "--work_dir", tmp_path / "run"]])
    check_args(args)
    torch.manual_seed(0)
    model = build_model(tiny_config(vocab_size=len(vocab)), lora_dim=0)
    train_set, valid_set, _ = train.load_datasets(args, len(vocab))
    result = train.train(args, DistContext(), model, train_set, valid_set, checkpoint.full_state,
                         log=lambda *a, **k: None)
    losses = [r["loss"] for r in records(tmp_path / "run") if "loss" in r]
    assert losses[0] > 4.0  # about ln(len(vocab)) at random weights
    assert losses[-1] < 0.5 and result["valid_loss"] < 0.5
    assert "module.transformer.wte.weight" in lora_tensors(tmp_path / "run" / "model.40.pt")


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun, 2 processes x batch 2 (gloo) against 1 process x batch 4. Every example has the same number
    of loss positions, so the mean of the per-rank losses (what DDP averages) is the global batch's loss."""
    gen = torch.Generator().manual_seed(5)
    examples = [(torch.randint(0, 50257, (4,), generator=gen).tolist(),
                 torch.randint(0, 50257, (5,), generator=gen).tolist()) for _ in range(8)]
    data = write_jsonl(tmp_path / "train.jsonl", examples)

    def flags(batch, work):
        return [str(a) for a in ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                                 "--lora_dim", 4, "--lora_alpha", 32, "--train_batch_size", batch,
                                 "--valid_batch_size", batch, "--max_epoch", 2, "--lr", 2e-2, "--clip", 0.5,
                                 "--correct_bias", "--log_interval", 1, "--save_interval", 100,
                                 "--eval_interval", 2, "--work_dir", work, "--random_seed", 7]]

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "src" / "gpt2_ft.py")] + flags(2, tmp_path / "two") + ["--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stdout
    quiet_main(flags(4, tmp_path / "one") + ["--device", "cpu"])
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 2, 3, 4, 4]
    for a, b in zip(one, two):
        for key in ("loss", "valid_loss", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a, b)
    w1, w2 = lora_tensors(tmp_path / "one" / "model.4.pt"), lora_tensors(tmp_path / "two" / "model.4.pt")
    assert any(w1[k].abs().sum() > 0 for k in w1 if k.endswith("lora_B"))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ bad input, before the first step

def base_flags(tmp_path, train_data, valid_data=None):
    return ["--train_data", train_data, "--valid_data", valid_data or train_data, "--model_card", "gpt2.tiny",
            "--lora_dim", 4, "--max_step", 2, "--work_dir", tmp_path / "run", "--device", "cpu"]


def test_bad_data_files_are_refused_with_their_place(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [([1, 2], [3, 50256])] * 4)
    with pytest.raises(InputError, match="file not found") as err:
        quiet_main(base_flags(tmp_path, tmp_path / "missing.jsonl", good))
    assert str(tmp_path / "missing.jsonl") in str(err.value)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="no examples"):
        quiet_main(base_flags(tmp_path, good, tmp_path / "empty.jsonl"))
    long = write_jsonl(tmp_path / "long.jsonl", [([1, 2], [3]), (list(range(20)), [3])])
    with pytest.raises(InputError, match="context has 20 tokens") as err:
        quiet_main(base_flags(tmp_path, long) + ["--seq_len", 16])
    assert err.value.line == 2
    outside = write_jsonl(tmp_path / "outside.jsonl", [([1, 2], [50257])])
    with pytest.raises(InputError, match="outside the vocabulary"):
        quiet_main(base_flags(tmp_path, outside))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_other_card_checkpoint_and_unwritable_work_dir_are_refused(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [([1, 2], [3, 50256])] * 4)
    small = build_model("gpt2.tiny", lora_dim=4)
    checkpoint.save_lora(small, tmp_path / "tiny_lora.pt")
    flags = base_flags(tmp_path, good)
    flags[flags.index("gpt2.tiny")] = "gpt2.mini"
    with pytest.raises(InputError, match="model_card"):
        quiet_main(flags + ["--lora_checkpoint", tmp_path / "tiny_lora.pt"])
    (tmp_path / "a_file").write_text("")
    flags = base_flags(tmp_path, good)
    flags[flags.index("--work_dir") + 1] = tmp_path / "a_file" / "run"
    with pytest.raises(InputError, match="cannot create the directory"):
        quiet_main(flags)


def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    done = run_script("gpt2_ft.py", *base_flags(tmp_path, tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing.jsonl'}: file not found")
