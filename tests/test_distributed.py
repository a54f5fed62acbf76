"""Several processes (torchrun, gloo, on the CPU) against one: --global_batch reproduces the one-process run
step for step (losses, validation losses and final weights), with gradient accumulation, a resumed run and the CUDA-graph step's
packed layout (its function run uncaptured); the ranks' batches of that step agree on one shape."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, encoded_e2e_sample
from test_train import write_jsonl
from test_train_runs import lora_tensors, records

pytestmark = pytest.mark.slow

# gpt2_ft.main with the step chosen by the test: "eager", or "packed" (GraphedStep's function, uncaptured); it ends
# as gpt2_ft.py does.
DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {src!r})
    import gpt2_ft
    from loranlg.train_step import SpeedOptions
    speed = {{"eager": SpeedOptions(cuda_graphs=False, compile="off"),
              "packed": SpeedOptions(capture=False, compile="off")}}[os.environ["STEP"]]
    stop = int(os.environ.get("STOP_AFTER", "0")) or None
    if os.environ.get("FAIL_WRITE"):  # rank 0's writer fails on this file, as on a full disk
        from loranlg import checkpoint_writer
        write = checkpoint_writer.write_torch
        def failing(obj, path):
            if path.endswith(os.environ["FAIL_WRITE"]):
                raise OSError(28, "No space left on device")
            write(obj, path)
        checkpoint_writer.write_torch = failing
    from loranlg.errors import run_cli
    run_cli(lambda argv: gpt2_ft.main(argv, stop_after_step=stop, speed=speed), sys.argv[1:], exit_at_once=True)
""")


@pytest.fixture(scope="module")
def train_file(shared_dir, vocab_dir, tmp_path_factory):
    """21 E2E examples of unequal lengths: a global batch of 4 gives its two ranks different numbers of loss
    positions, and 21 is no multiple of 4 (the padding examples drawn at random must match too)."""
    examples = encoded_e2e_sample(shared_dir, vocab_dir, stride=200, count=21)
    path = write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", examples)
    return path


def flags(data, work, batch_flag, grad_acc=1, resume=False, save_interval=100):
    argv = ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny", "--lora_dim", 4,
            "--lora_alpha", 32, *batch_flag, "--grad_acc", grad_acc, "--valid_batch_size", 4, "--max_epoch", 2,
            "--lr", 2e-2, "--clip", 0.5, "--correct_bias", "--label_smooth", 0.1, "--log_interval", 1,
            "--save_interval", save_interval, "--eval_interval", 100, "--work_dir", work, "--random_seed", 7,
            "--device", "cpu"]
    return [str(a) for a in argv] + (["--resume"] if resume else [])


def run(tmp_path, nproc, argv, step="eager", stop_after=None, fail_write="", check=True):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(src=str(REPO / "src")))
    env = dict(os.environ, OMP_NUM_THREADS="1", STEP=step, STOP_AFTER=str(stop_after or 0), FAIL_WRITE=fail_write)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    done = subprocess.run(launcher + [str(driver)] + argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0 or not check, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def assert_same_run(one, two, final_step):
    losses_one = [(r["step"], r["loss"]) for r in records(one) if "loss" in r]
    losses_two = [(r["step"], r["loss"]) for r in records(two) if "loss" in r]
    assert [s for s, _ in losses_one] == [s for s, _ in losses_two] and losses_one
    for (_, a), (_, b) in zip(losses_one, losses_two):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    valid_one = [r["valid_loss"] for r in records(one) if "valid_loss" in r]
    valid_two = [r["valid_loss"] for r in records(two) if "valid_loss" in r]
    assert len(valid_one) == len(valid_two) >= 1 and valid_two == pytest.approx(valid_one, rel=1e-5)
    w1, w2 = lora_tensors(one / f"model.{final_step}.pt"), lora_tensors(two / f"model.{final_step}.pt")
    assert any(w1[k].abs().sum() > 0 for k in w1 if k.endswith("lora_B"))
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("step, grad_acc", [("eager", 1), ("eager", 2), ("packed", 1)])
def test_two_processes_of_a_global_batch_equal_one_process(tmp_path, train_file, step, grad_acc):
    one, two = tmp_path / "one", tmp_path / "two"
    run(tmp_path, 1, flags(train_file, one, ["--train_batch_size", 4], grad_acc), step)
    done = run(tmp_path, 2, flags(train_file, two, ["--global_batch", 4], grad_acc), step)
    assert "2 on each of 2 ranks" in done.stdout
    # 21 examples make 6 batches of 4 an epoch, 2 epochs
    assert_same_run(one, two, final_step=12)


def test_a_resumed_two_process_run_equals_one_uninterrupted_process(tmp_path, train_file):
    one, two = tmp_path / "one", tmp_path / "two"
    run(tmp_path, 1, flags(train_file, one, ["--train_batch_size", 4], save_interval=4), "packed")
    resumable = flags(train_file, two, ["--global_batch", 4], resume=True, save_interval=4)
    run(tmp_path, 2, resumable, "packed", stop_after=6)  # as if killed after step 6: resume.pt is step 4's
    assert (two / "model.4.pt").exists() and not (two / "model.8.pt").exists()
    done = run(tmp_path, 2, resumable, "packed")
    assert "resumed from" in done.stdout
    assert_same_run(one, two, final_step=12)


def test_a_failed_checkpoint_write_stops_every_rank(tmp_path, train_file):
    """Only rank 0 writes; when its background write fails, every rank stops at the next wait with the same
    one-line error (none is left waiting in a collective)."""
    argv = flags(train_file, tmp_path / "two", ["--global_batch", 4], save_interval=4)
    done = run(tmp_path, 2, argv, "eager", fail_write="model.4.pt", check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ") and "model.4.pt" in line]
    assert len(errors) == 2 and all("No space left on device" in line for line in errors), done.stderr[-3000:]
    assert not (tmp_path / "two" / "model.8.pt").exists()


def test_per_process_batches_average_the_rank_losses(tmp_path, train_file):
    """Without --global_batch each rank's loss is its own batch's mean (the original's DDP): on these unequal
    examples that differs from the one-process loss of the same examples, which is what --global_batch fixes."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(tmp_path, 1, flags(train_file, one, ["--train_batch_size", 4]), "packed")
    run(tmp_path, 2, flags(train_file, two, ["--train_batch_size", 2]), "packed")
    first_one = next(r["loss"] for r in records(one) if "loss" in r)
    first_two = next(r["loss"] for r in records(two) if "loss" in r)
    assert abs(first_one - first_two) > 1e-3  # the same examples at step 1, averaged differently


def test_refuses_a_global_batch_that_does_not_split(tmp_path, train_file):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "src" / "gpt2_ft.py")] + flags(train_file, tmp_path / "w", ["--global_batch", 5])
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          cwd=tmp_path, timeout=300)
    assert done.returncode != 0
    assert "--global_batch 5 does not split evenly over 2 processes" in done.stderr
    assert "InputError" not in done.stderr  # a one-line error from each rank (torchrun adds its own report)


def test_a_train_batch_size_must_agree_with_the_global_batch(monkeypatch):
    """--train_batch_size beside --global_batch only when it is the share (an abbreviated flag included)."""
    from gpt2_ft import build_parser, check_args
    from loranlg.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    base = ["--train_data", "t.jsonl", "--valid_data", "v.jsonl", "--model_card", "gpt2.tiny", "--max_step", "2"]
    args = build_parser().parse_args(base + ["--global_batch", "8", "--train_batch_size", "4"])
    check_args(args)
    assert args.train_batch_size == 4
    args = build_parser().parse_args(base + ["--global_batch", "8", "--train_batch", "3"])
    with pytest.raises(InputError, match="--train_batch_size 3 and --global_batch 8 over 2 process"):
        check_args(args)
    args = build_parser().parse_args(base)
    check_args(args)
    assert args.train_batch_size == 8  # the original's default


RANK_SHAPES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {src!r})
    import torch
    from loranlg import data
    from loranlg.distributed import cleanup, setup_distributed
    from loranlg.rank_batches import make_batches
    from loranlg.train_step import GRAPH_LAYOUTS
    ctx = setup_distributed()
    examples = [([1] * (2 + i % 5), [2] * (1 + (7 * i) % 11)) for i in range(40)]
    dataset = data.FTDataset(examples, 4, 64)
    batches = make_batches(dataset, ctx, 3, 4, layout=GRAPH_LAYOUTS["packed"], same_shapes={same})
    shapes = [{{k: list(batch[k].shape) for k in batch}} for _, batch in batches.epoch(1)]
    json.dump(shapes, open(sys.argv[1] + f"/shapes{{ctx.rank}}.json", "w"))
    cleanup(ctx)
""")


def rank_shapes(tmp_path, same):
    script = tmp_path / "shapes.py"
    script.write_text(RANK_SHAPES.format(src=str(REPO / "src"), same=same))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"shapes{rank}.json").read_text()) for rank in (0, 1)]


def test_ranks_of_the_graph_step_agree_on_each_batch_shape(tmp_path):
    """Per-process batches of unequal lengths, padded to the largest of the ranks' sizes every step; without the
    agreement, the ranks' shapes differ (so the check can fail)."""
    zero, one = rank_shapes(tmp_path, same=True)
    assert len(zero) == len(one) == 5  # 40 examples, 2 ranks, batches of 4
    assert zero == one
    zero, one = rank_shapes(tmp_path, same=False)
    assert zero != one
