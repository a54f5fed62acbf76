"""Two torchrun nodes on 127.0.0.1 (CPU, gloo), each started through scripts/train_e2e.sh with a work_dir of
its own, as on two machines: node 0 holds the checkpoints, node 1 ends cleanly, and they train as one node
with two processes does. Node 0 takes the multi-node settings as variables, node 1 as flags.
A node that never meets the other stops after RDZV_TIMEOUT with a one-line reason; --resume on nodes with a
work_dir each needs node 0's resume.pt on every node. Stand-in interpreters check what needs no real run."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, encoded_e2e_sample, run_script, stand_in_gpu, stand_in_python
from test_train import write_jsonl

slow = pytest.mark.slow

# A few steps of gpt2.tiny with a rate high enough to move the LoRA weights; a save and a validation every 2 steps.
TRAIN_FLAGS = ["--device", "cpu", "--max_step", "4", "--train_batch_size", "2", "--valid_batch_size", "2",
               "--seq_len", "64", "--lr", "0.01", "--warmup_step", "1", "--log_interval", "1",
               "--save_interval", "2", "--eval_interval", "2"]
WAIT_S = 180  # past this a node is taken as hung: the test fails instead of waiting forever


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def run_env(shared_dir, vocab_dir, tmp_path_factory):
    data = write_jsonl(tmp_path_factory.mktemp("data") / "e2e.jsonl",
                       encoded_e2e_sample(shared_dir, vocab_dir, stride=500, count=8))
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", TRAIN_DATA=str(data), VALID_DATA=str(data),
                INIT_CHECKPOINT="none", MODEL_CARD="gpt2.tiny")


def start_train(env, *args, **variables):
    return subprocess.Popen(["bash", str(REPO / "scripts" / "train_e2e.sh"), *map(str, args)],
                            env=dict(env, **{k: str(v) for k, v in variables.items()}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def start_nodes(env, work0, work1, port0, port1=None, extra=(), node0_flags=()):
    """Node 0 from the variables, node 1 from the flags (and an own port when port1 is given)."""
    node0 = start_train(env, *node0_flags, "--", *TRAIN_FLAGS, *extra, NNODES=2, NODE_RANK=0,
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port0, WORK_DIR=work0)
    node1 = start_train(env, "--nnodes", 2, "--node_rank", 1, "--master_addr", "127.0.0.1", "--master_port",
                        port1 or port0, "--ngpu", 1, "--work_dir", work1, "--", *TRAIN_FLAGS, *extra)
    return finish(node0), finish(node1)


def finish(process):
    """(exit status, stdout, stderr); a process still running after WAIT_S is killed and the test fails."""
    try:
        out, err = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"a node still ran after {WAIT_S} s: {err[-2000:]}")
    return process.returncode, out, err


@pytest.fixture(scope="module")
def two_nodes(run_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    port = free_port()
    node0, node1 = start_nodes(run_env, root / "node0", root / "node1", port)
    return root, port, node0, node1


@pytest.fixture(scope="module")
def one_node(run_env, tmp_path_factory):
    """The reference: one node, two processes (torchrun --standalone)."""
    work = tmp_path_factory.mktemp("one_node") / "run"
    done = start_train(run_env, "--ngpu", 2, "--work_dir", work, "--", *TRAIN_FLAGS)
    status, _, err = finish(done)
    assert status == 0, err[-3000:]
    return work


def records(work):
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def lora_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


@slow
def test_node_0_holds_the_checkpoints_and_node_1_ends_cleanly(two_nodes):
    root, port, (status0, out0, err0), (status1, out1, err1) = two_nodes
    assert status0 == 0, err0[-3000:] + out0[-3000:]
    assert status1 == 0, err1[-3000:] + out1[-3000:]
    node0, node1 = root / "node0", root / "node1"
    assert sorted(os.listdir(node0)) == ["metrics.jsonl", "model.2.pt", "model.4.pt", "resume.pt", "train.done",
                                         "train.log"]
    assert (node0 / "train.done").read_text() == "model.4.pt\n"
    assert sorted(os.listdir(node1)) == ["train.node1.done", "train.node1.log"]
    assert "rank 0 of 2 on cpu" in (node0 / "train.log").read_text()
    assert "[train] done on node 1 (node 0 holds the checkpoints)" in err1
    for rank, out in ((0, out0), (1, out1)):
        assert (f"[train] running: {sys.executable} -m torch.distributed.run --nproc_per_node=1 --nnodes=2 "
                f"--node_rank={rank} --master_addr=127.0.0.1 --master_port={port} ") in out
    assert [r["step"] for r in records(node0) if "loss" in r] == [1, 2, 3, 4]


@slow
def test_two_nodes_train_as_one_node_with_two_processes(two_nodes, one_node):
    root = two_nodes[0]
    nodes, one = records(root / "node0"), records(one_node)
    assert [r["step"] for r in nodes] == [r["step"] for r in one] == [1, 2, 2, 3, 4, 4]
    for a, b in zip(one, nodes):
        for key in ("loss", "valid_loss", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), (a, b)
    assert len({r["valid_loss"] for r in one if "valid_loss" in r}) == 2  # the weights moved between the evals
    w_one, w_nodes = lora_tensors(one_node / "model.4.pt"), lora_tensors(root / "node0" / "model.4.pt")
    assert sorted(w_one) == sorted(w_nodes)
    assert all(w_one[k].abs().sum() > 0 for k in w_one if k.endswith("lora_B"))  # lora_B starts at zero
    for key in w_one:
        torch.testing.assert_close(w_nodes[key], w_one[key], rtol=1e-5, atol=1e-7)


@slow
def test_a_second_start_skips_on_every_node(run_env, two_nodes):
    """Each node sees its own marker: none launches torchrun (node 1 alone would wait for node 0)."""
    root, port = two_nodes[:2]
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("node*/*")}
    for (status, _, err), marker in zip(start_nodes(run_env, root / "node0", root / "node1", port),
                                        ("train.done", "train.node1.done")):
        assert status == 0 and "[train] skipped" in err and marker in err and "running:" not in err, err
    assert {p: p.stat().st_mtime_ns for p in root.glob("node*/*")} == stamps


@slow
def test_resume_needs_node_0s_resume_file_on_every_node(run_env, two_nodes, tmp_path):
    """Node 1's work_dir has no resume.pt: its rank would start from step 0 while rank 0 goes on."""
    shutil.copytree(two_nodes[0] / "node0", tmp_path / "node0")
    results = start_nodes(run_env, tmp_path / "node0", tmp_path / "node1", free_port(), extra=["--resume"],
                          node0_flags=["--force"])
    for status, _, err in results:
        assert status != 0
        assert ("--resume: rank(s) 1 (another node) do not see this file, which rank 0 resumes from: copy node 0's "
                "resume.pt into every node's work_dir") in err  # repeated after torchrun's report
        assert "--resume --resume" not in err  # the command it suggests names --resume once
    assert not (tmp_path / "node0" / "train.done").exists()


@slow
def test_a_node_that_never_meets_the_other_stops_with_the_reason(run_env, tmp_path):
    """Node 1 given another port than node 0's: each waits RDZV_TIMEOUT (node 0: --rdzv_timeout), then stops."""
    port0, port1 = free_port(), free_port()
    node0, node1 = start_nodes(dict(run_env, RDZV_TIMEOUT="3"), tmp_path / "node0", tmp_path / "node1", port0,
                               port1, node0_flags=["--rdzv_timeout", 3])
    for (status, out, err), rank, port in ((node0, 0, port0), (node1, 1, port1)):
        assert status == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: train: node {rank} of 2 did not meet the other nodes at 127.0.0.1:{port} "
                               "within 3 s ("), last
        assert "RDZV_TIMEOUT (--rdzv_timeout) sets the wait" in last
        assert "--rdzv_conf=timeout=3 " in out
    assert not (tmp_path / "node0" / "train.done").exists()
    assert not (tmp_path / "node1" / "train.node1.done").exists()


def test_node_1_leaves_node_0s_files_alone_in_a_shared_work_dir(tmp_path):
    """Node 1 through a stand-in interpreter, in a work_dir node 0 is training in."""
    fake = stand_in_python(tmp_path, 'echo "node 1 trained"')
    (tmp_path / "data.jsonl").write_text("{}\n")
    work = tmp_path / "run"
    work.mkdir()
    node0_files = {"train.log": "node 0 training\n", ".train.started": "", "model.2.pt": "x"}
    for name, text in node0_files.items():
        (work / name).write_text(text)
    done = run_script("train_e2e.sh", "--nnodes", "2", "--node_rank", "1", "--master_port", "1",
                      env=dict(PYTHON=str(fake), TRAIN_DATA=str(tmp_path / "data.jsonl"),
                               VALID_DATA=str(tmp_path / "data.jsonl"), INIT_CHECKPOINT="none", WORK_DIR=str(work),
                               PATH=stand_in_gpu(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert {name: (work / name).read_text() for name in node0_files} == node0_files
    assert (work / "train.node1.log").read_text().endswith("\nnode 1 trained\n")
    assert sorted(os.listdir(work)) == sorted([*node0_files, "train.node1.log", "train.node1.done"])


def test_beam_sh_says_when_the_nodes_never_met(tmp_path):
    """beam.sh on several nodes reads its launcher's log as train.sh does (a stand-in launcher here)."""
    fake = stand_in_python(tmp_path, "echo 'torch.distributed.DistStoreError: Timed out after 5 seconds waiting "
                                     "for clients. 1/2 clients joined.'\nexit 1")
    for name in ("test.jsonl", "base.bin", "lora.pt"):
        (tmp_path / name).write_text("x\n")
    done = run_script("beam_e2e.sh", "--nnodes", "2", "--master_port", "29511", "--rdzv_timeout", "5",
                      env=dict(PYTHON=str(fake), TEST_DATA=str(tmp_path / "test.jsonl"), MODEL_CARD="gpt2.tiny",
                               INIT_CHECKPOINT=str(tmp_path / "base.bin"), CHECKPOINT=str(tmp_path / "lora.pt"),
                               WORK_DIR=str(tmp_path / "run")))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: beam: node 0 of 2 did not meet the other nodes at 127.0.0.1:29511 within 5 s (Timed out after 5 "
        "seconds waiting for clients. 1/2 clients joined). Start every node with the same NNODES, MASTER_ADDR and "
        "MASTER_PORT (node 0's address, reachable from the others); RDZV_TIMEOUT (--rdzv_timeout) sets the wait")
