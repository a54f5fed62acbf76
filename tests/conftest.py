"""Shared fixtures. Real data comes from ../shared (or $LORANLG_SHARED); models are tiny and built here."""

import os
import pathlib
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from loranlg.model import GPT2Config, GPT2LMModel  # noqa: E402


def shared_path():
    return pathlib.Path(os.environ.get("LORANLG_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir():
    path = shared_path()
    if not (path / "vocab" / "encoder.json").is_file():
        pytest.skip(f"shared data not found at {path} (set LORANLG_SHARED)")
    return path


@pytest.fixture(scope="session")
def vocab_dir(shared_dir):
    return shared_dir / "vocab"


def tiny_config(**overrides):
    """A small GPT-2 with a short vocabulary: fast on the CPU, same code paths as the real cards."""
    base = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=128)
    base.update(overrides)
    return GPT2Config(**base)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT2LMModel(tiny_config(**overrides)).eval()


def encoded_e2e_sample(shared_dir, vocab_dir, stride, count):
    """Every `stride`-th line of E2E valid.txt (at most `count`), encoded as SPEC 2 says:
    (bpe(MR) + [50256], bpe(" " + text) + [50256]); written out here as an independent reference."""
    from loranlg.tokenizer import EOT_ID, GPT2BPE
    bpe = GPT2BPE(vocab_dir)
    lines = (shared_dir / "data" / "e2e" / "valid.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("||") for line in lines[::stride][:count]]
    return [(bpe.encode(mr) + [EOT_ID], bpe.encode(" " + text.strip()) + [EOT_ID]) for mr, text in pairs]


def run_script(name, *args, env=None, cwd=None, check=False):
    """Run one of src/*.py or scripts/*.sh as a user would; returns the CompletedProcess."""
    import subprocess
    script = REPO / ("src" if name.endswith(".py") else "scripts") / name
    cmd = [sys.executable, str(script)] if name.endswith(".py") else ["bash", str(script)]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          cwd=cwd or REPO, check=check)


def stand_in_gpu(directory):
    """PATH with an `nvidia-smi` that lists one GPU, for the scripts' launch tests on machines without one."""
    bin_dir = pathlib.Path(directory) / "gpu-bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-stand-in)"\n')
    tool.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


RECORD_ARGS = 'echo "$@" >> "$LOG"'  # a stand-in python that writes its command line to $LOG


def stand_in_python(directory, body=RECORD_ARGS):
    """An executable `python` in `directory` running the shell `body`: what the scripts start, seen or faked."""
    fake = pathlib.Path(directory) / "python"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return fake


def assert_rerun_skips_every_stage(script, work, env):
    """A second `script --demo` over a finished work dir runs nothing and touches no file."""
    stamps = {p.name: p.stat().st_mtime_ns for p in work.iterdir() if p.is_file()}
    again = run_script(script, "--demo", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("[train] skipped", "[beam] skipped", "[decode] skipped", "[eval] skipped"):
        assert stage in again.stderr
    assert "running:" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir() if p.is_file()} == stamps
