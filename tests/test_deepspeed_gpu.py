"""--deepspeed on GPUs against our own data-parallel step (grad_sync.py) (skipped without CUDA or without deepspeed; bench/gpu_deepspeed.sh
installs deepspeed from wheels, runs this and prints a table).

Each DeepSpeed run goes through the `deepspeed` launcher (which passes --local_rank=N) on 2 GPUs (1 where there is
one), each reference through torchrun with the same flags: the same global batch, the same data on each rank. The
sample configs scripts/ds_zero{1,2,3}_bf16.json against DDP under --precision bf16 (DeepSpeed holds bf16 weights,
we fp32 weights under autocast: equal to bf16's rounding), ZeRO-3 in fp32 against DDP in fp32 (equal to fp32's
rounding, weights included); gpt2_beam.py reads the model.{step}.pt of a ZeRO-3 run. With
LORANLG_DEEPSPEED_REPORT=path each comparison adds a JSON line there (the script's table).
"""

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from test_deepspeed import free_port, with_src_path
from test_train import write_jsonl

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")]

GPUS = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 0
STEPS = 24  # micro-batches: 12 updates of --grad_acc 2
SCRIPT = str(REPO / "src" / "gpt2_ft.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> finished run, each launched once for the whole module."""
    root = tmp_path_factory.mktemp("deepspeed_gpu")
    rng = random.Random(11)
    examples = []
    for _ in range(96):  # the completion is the context reversed: learnt within a few updates
        context = [rng.randrange(2000) for _ in range(rng.randint(6, 24))]
        examples.append((context + [50256], context[::-1] + [50256]))
    data = write_jsonl(root / "train.jsonl", examples)
    return Runs(root, data)


class Runs:
    def __init__(self, root, data):
        self.root, self.data, self.done = root, data, {}

    def flags(self, work, precision):
        """gpt2.mini fully fine-tuned (every matrix large enough for ZeRO-3 to split it)."""
        return [str(a) for a in ["--train_data", self.data, "--valid_data", self.data, "--model_card", "gpt2.mini",
                                 "--train_batch_size", 4, "--grad_acc", 2, "--seq_len", 64, "--max_step", STEPS,
                                 "--warmup_step", 4, "--lr", 1e-3, "--weight_decay", 0.01, "--correct_bias",
                                 "--clip", 1.0, "--label_smooth", 0.1, "--log_interval", 8, "--save_interval",
                                 STEPS, "--eval_interval", STEPS, "--random_seed", 3, "--precision", precision,
                                 "--no_cuda_graph", "--compile", "off", "--work_dir", work]]

    def ddp(self, precision):
        return self.launch(f"ddp_{precision}", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc_per_node={GPUS}", SCRIPT], precision)

    def deepspeed(self, name, config, precision):
        launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(GPUS), "--master_port",
                    str(free_port()), SCRIPT, "--deepspeed", "--deepspeed_config", str(config)]
        return self.launch(name, launcher, precision)

    def launch(self, name, command, precision):
        if name not in self.done:
            work = self.root / name
            done = subprocess.run(command + self.flags(work, precision), capture_output=True, text=True,
                                  cwd=self.root, timeout=300, env=with_src_path(os.environ))
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert f"rank 0 of {GPUS}" in done.stdout
            self.done[name] = Run(work)
        return self.done[name]


class Run:
    def __init__(self, work):
        records = [json.loads(line) for line in open(work / "metrics.jsonl")]
        self.losses = [r["loss"] for r in records if "loss" in r]
        self.valid_loss = [r["valid_loss"] for r in records if "valid_loss" in r]
        self.ms = statistics.median(r["ms"] for r in records[len(records) // 2:] if "ms" in r)  # after warm-up
        self.checkpoint = work / f"model.{STEPS}.pt"

    def weights(self):
        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)["model_state_dict"]


def compare(name, ds, ddp):
    """The largest loss difference (training and validation); a report line when asked for."""
    assert len(ds.losses) == len(ddp.losses) == STEPS // 2 and len(ds.valid_loss) == len(ddp.valid_loss) == 1
    assert ddp.losses[-1] < ddp.losses[0] - 0.5  # learning: the schedule and every update show in the losses
    diff = max(abs(a - b) for a, b in zip(ds.losses + ds.valid_loss, ddp.losses + ddp.valid_loss))
    report = os.environ.get("LORANLG_DEEPSPEED_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(json.dumps({"run": name, "gpus": GPUS, "max_abs_diff": diff, "ms": ds.ms, "ddp_ms": ddp.ms,
                                     "first_loss": ddp.losses[0], "last_loss": ddp.losses[-1]}) + "\n")
    return diff


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_bf16_losses_match_ddp(runs, stage):
    """bf16 both ways, rounded in different places (DeepSpeed: bf16 weights, layer norms, residual stream; ours:
    fp32 ones under autocast): the losses agree to a few hundredths of a nat (0.005 on the CPU)."""
    ds = runs.deepspeed(f"zero{stage}_bf16", REPO / "scripts" / f"ds_zero{stage}_bf16.json", "bf16")
    assert compare(f"ZeRO-{stage} bf16", ds, runs.ddp("bf16")) < 0.05


def test_zero3_fp32_matches_ddp_to_rounding(runs, tmp_path):
    """fp32: the same arithmetic up to the order of the gradient sums; model.{step}.pt holds the same weights."""
    config = tmp_path / "ds_zero3_fp32.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds, ddp = runs.deepspeed("zero3_fp32", config, "fp32"), runs.ddp("fp32")
    assert compare("ZeRO-3 fp32", ds, ddp) < 2e-3
    got, want = ds.weights(), ddp.weights()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert (got[name] - tensor).abs().max().item() <= 1e-3 * tensor.abs().max().item(), name


def test_gpt2_beam_reads_the_zero3_checkpoint(runs, tmp_path):
    ds = runs.deepspeed("zero3_bf16", REPO / "scripts" / "ds_zero3_bf16.json", "bf16")
    contexts = [json.loads(line)["context"] for line in open(runs.data)][:6]
    data = write_jsonl(tmp_path / "test.jsonl", [(context, []) for context in contexts])
    command = [sys.executable, REPO / "src" / "gpt2_beam.py", "--data", data, "--init_checkpoint", ds.checkpoint,
               "--model_card", "gpt2.mini", "--beam", 2, "--eval_len", 8, "--batch_size", 6, "--work_dir", tmp_path,
               "--output_file", "predictions.jsonl"]
    done = subprocess.run([str(a) for a in command], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="0"))
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert len(predictions) == 6 and all(len(p["predict"]) > 0 for p in predictions)
