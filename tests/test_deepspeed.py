"""--deepspeed on the CPU: the config checked against the flags and filled from them, the errors of a wrong
config or a missing deepspeed (these run everywhere, CI included); and, where deepspeed is installed, DeepSpeed's
engine (ZeRO 0-3, gloo) against our eager step: same losses, same weights in model.{step}.pt. GPU runs against
our torchrun step in bf16: tests/test_deepspeed_gpu.py."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_script
from gpt2_ft import build_parser, check_args
from loranlg import deepspeed_config
from loranlg.errors import InputError
from test_train import write_jsonl

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed)")


def flag_args(train_batch_size=8, grad_acc=2, clip=1.0, precision="bf16"):
    return argparse.Namespace(train_batch_size=train_batch_size, grad_acc=grad_acc, clip=clip, precision=precision)


def resolve(config, world_size=2, **flags):
    return deepspeed_config.resolve(config, flag_args(**flags), world_size, "ds.json")


def refused(config, match, world_size=2, **flags):
    with pytest.raises(InputError, match=match) as err:
        resolve(config, world_size, **flags)
    assert err.value.path == "ds.json"
    return err.value


# ---------------------------------------------------------------- the config against the flags

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sample_configs_are_filled_from_the_flags(stage):
    path = REPO / "scripts" / f"ds_zero{stage}_bf16.json"
    config = deepspeed_config.resolve(deepspeed_config.read_config(path), flag_args(), 2, path)
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 8 * 2 * 2  # DeepSpeed's global batch: per process x accumulation x processes
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"]["stage"] == stage and config["zero_allow_untested_optimizer"] is True
    assert deepspeed_config.describe(config) == f"ZeRO-{stage}, bf16"


def test_absent_keys_take_the_flags_values_not_deepspeeds_defaults():
    """Absent, DeepSpeed would clip at 1.0; here --clip 0 (no clipping) and fp32 are what the run gets."""
    config = resolve({"zero_optimization": {"stage": 2}}, world_size=1, train_batch_size=4, grad_acc=1, clip=0.0,
                     precision="fp32")
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"], config["gradient_clipping"]) == (4, 1, 4, 0.0)
    assert config["bf16"] == {"enabled": False} and config["zero_allow_untested_optimizer"] is True


def test_values_equal_to_the_flags_are_kept():
    given = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2, "train_batch_size": 32,
             "gradient_clipping": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}
    config = resolve(given)
    assert {k: config[k] for k in given} == given


@pytest.mark.parametrize("key, value, flag", [
    ("train_micro_batch_size_per_gpu", 4, "--train_batch_size gives 8"),
    ("gradient_accumulation_steps", 1, "--grad_acc gives 2"),
    ("train_batch_size", 16, "--train_batch_size 8 x --grad_acc 2 x 2 process"),
    ("gradient_clipping", 0.5, "--clip gives 1"),
    ("gradient_accumulation_steps", "2", "--grad_acc gives 2"),  # a string is not the number
])
def test_a_value_other_than_the_flags_is_refused_naming_the_key(key, value, flag):
    err = refused({key: value, "zero_optimization": {"stage": 1}}, key)
    assert flag in str(err) and "\n" not in str(err)


def test_bf16_must_agree_with_precision_and_needs_zero():
    refused({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}, "bf16.enabled is true but --precision "
            "is fp32", precision="fp32")
    refused({"bf16": {"enabled": False}, "zero_optimization": {"stage": 1}}, "bf16.enabled is false")
    refused({"zero_optimization": {"stage": 0}}, "bf16 needs zero_optimization.stage 1, 2 or 3")
    assert resolve({"zero_optimization": {"stage": 0}}, precision="fp32")["zero_optimization"] == {"stage": 0}


@pytest.mark.parametrize("config, match", [
    ({"optimizer": {"type": "AdamW"}}, 'the "optimizer" section is not used.*--lr'),
    ({"scheduler": {"type": "WarmupLR"}}, 'the "scheduler" section is not used.*--scheduler'),
    ({"fp16": {"enabled": True}}, "fp16 is not supported"),
    ({"zero_optimization": {"stage": 4}}, "stage must be 0, 1, 2 or 3, got 4"),
    ({"zero_optimization": {"stage": True}}, "stage must be 0, 1, 2 or 3, got true"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, "offload_param: offloading"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer: offloading"),
    ({"zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": False}, "must be true"),
    ({"zero_optimization": {"stage": 1, "reduce_bucket_size": "auto"}}, "zero_optimization.reduce_bucket_size"),
    ({"zero_optimization": "3"}, '"zero_optimization" is an object'),
])
def test_what_the_run_cannot_take_is_refused(config, match):
    refused(config, match)


def test_switched_off_sections_are_accepted():
    config = resolve({"fp16": {"enabled": "auto"}, "torch_autocast": {"enabled": False},
                      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}}})
    assert config["fp16"] == {"enabled": False}


def test_unreadable_or_broken_config_files_are_named(tmp_path):
    with pytest.raises(InputError, match="cannot read the DeepSpeed config") as err:
        deepspeed_config.read_config(tmp_path / "missing.json")
    assert err.value.path == tmp_path / "missing.json"
    (tmp_path / "broken.json").write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(InputError, match="not valid JSON") as err:
        deepspeed_config.read_config(tmp_path / "broken.json")
    assert err.value.line == 2
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="a JSON object"):
        deepspeed_config.read_config(tmp_path / "list.json")


# ---------------------------------------------------------------- gpt2_ft.py's flags

def ft_args(tmp_path, *extra):
    args = build_parser().parse_args([str(a) for a in ["--train_data", "t.jsonl", "--valid_data", "v.jsonl",
                                                       "--model_card", "gpt2.tiny", "--max_step", 2, *extra]])
    check_args(args)
    return args


def test_flags_without_deepspeed_leave_the_run_as_it_was(tmp_path):
    assert ft_args(tmp_path).deepspeed_settings is None


@pytest.mark.parametrize("extra, match", [
    (["--deepspeed"], "--deepspeed needs --deepspeed_config FILE"),
    (["--deepspeed_config", "ds.json"], "--deepspeed_config is read only with --deepspeed"),
    (["--deepspeed", "--deepspeed_config", "ds.json", "--resume"], "--resume does not work with --deepspeed"),
    (["--deepspeed", "--deepspeed_config", "ds.json", "--fp16"], "not --precision fp16"),
])
def test_deepspeed_flags_are_checked(tmp_path, extra, match):
    with pytest.raises(InputError, match=match):
        ft_args(tmp_path, *extra)


def test_a_missing_deepspeed_says_how_to_install_it(tmp_path, monkeypatch):
    """The config is read and checked first (its errors show without deepspeed too), then the package looked for."""
    sample = REPO / "scripts" / "ds_zero2_bf16.json"
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what find_spec and import see when it is not installed
    with pytest.raises(InputError, match=r"needs the deepspeed package.*pip install deepspeed"):
        ft_args(tmp_path, "--deepspeed", "--deepspeed_config", sample, "--precision", "bf16")
    with pytest.raises(InputError, match="bf16.enabled is true but --precision is fp32"):
        ft_args(tmp_path, "--deepspeed", "--deepspeed_config", sample)
    with pytest.raises(InputError, match=r"cannot be imported.*pip install deepspeed"):
        deepspeed_config.import_deepspeed()


def test_a_config_error_is_one_line_and_exit_code_2(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [([1, 2], [3, 50256])] * 4)
    (tmp_path / "ds.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    done = run_script("gpt2_ft.py", "--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                      "--max_step", 2, "--work_dir", tmp_path / "run", "--deepspeed", "--deepspeed_config",
                      tmp_path / "ds.json")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {tmp_path / 'ds.json'}: train_micro_batch_size_per_gpu is 2 but "
                                   '--train_batch_size gives 8 (make them equal, or write "auto")')
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the engine (where deepspeed is installed)

def copy_task(path, count=24, seed=3):
    """Examples whose completion is the context reversed: a task a small model starts to learn in a few steps."""
    import random
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        context = [rng.randrange(1000) for _ in range(rng.randint(3, 8))]
        examples.append((context + [50256], context[::-1] + [50256]))
    return write_jsonl(path, examples)


def train_flags(data, work, lora_dim, precision="fp32"):
    return [str(a) for a in ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                             "--lora_dim", lora_dim, "--lora_alpha", 32, "--train_batch_size", 2, "--grad_acc", 2,
                             "--max_step", 12, "--warmup_step", 3, "--lr", 1e-2, "--weight_decay", 0.01,
                             "--correct_bias", "--clip", 0.05, "--label_smooth", 0.1, "--log_interval", 4,
                             "--save_interval", 12, "--eval_interval", 12, "--random_seed", 7, "--device", "cpu",
                             "--precision", precision, "--work_dir", work]]


def outcome(work, step=12):
    """(training losses, validation losses, the tensors of model.{step}.pt)."""
    import torch
    records = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    tensors = torch.load(os.path.join(work, f"model.{step}.pt"), map_location="cpu", weights_only=True)
    return ([r["loss"] for r in records if "loss" in r], [r["valid_loss"] for r in records if "valid_loss" in r],
            tensors["model_state_dict"])


def assert_same_run(got, want, rel, weights_rel=1e-3):
    """Losses equal to `rel`; each saved tensor within weights_rel of its largest value (the clipping factor is
    rounded differently, and Adam turns that into differences of about 5e-5 of a tensor's scale)."""
    assert len(got[0]) == len(want[0]) == 6 and len(got[1]) == len(want[1]) == 1
    assert got[0] == pytest.approx(want[0], rel=rel) and got[1] == pytest.approx(want[1], rel=rel)
    assert want[0][-1] < want[0][0] - 0.05  # the run learns something: the schedule and the updates matter
    assert got[2].keys() == want[2].keys()
    for name, tensor in want[2].items():
        assert (got[2][name] - tensor).abs().max().item() <= weights_rel * tensor.abs().max().item(), name


@pytest.fixture(scope="module")
def eager_runs(tmp_path_factory):
    """Our eager step's runs, LoRA and full fine-tuning, computed once."""
    from gpt2_ft import main
    root = tmp_path_factory.mktemp("eager")
    data = copy_task(root / "train.jsonl")
    runs = {}
    for lora_dim in (4, 0):
        main(train_flags(data, root / f"r{lora_dim}", lora_dim))
        runs[lora_dim] = outcome(root / f"r{lora_dim}")
    return data, runs


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage, lora_dim", [(0, 4), (1, 4), (2, 4), (3, 4), (3, 0)])
def test_deepspeed_zero_on_the_cpu_equals_the_eager_step(tmp_path, eager_runs, stage, lora_dim, capsys):
    """fp32, one process: ZeRO partitions nothing across ranks but its engine, optimizer wrapper, accumulation,
    clipping and (ZeRO-3) parameter hooks all run; the losses and saved weights are the eager step's up to
    rounding. (3, 0) is full fine-tuning: the tied embedding trains through both of its uses under ZeRO-3."""
    from gpt2_ft import main
    data, runs = eager_runs
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    main(train_flags(data, tmp_path / "ds", lora_dim) + ["--deepspeed", "--deepspeed_config", tmp_path / "ds.json"])
    assert f"DeepSpeed: ZeRO-{stage}, fp32" in capsys.readouterr().out
    assert_same_run(outcome(tmp_path / "ds"), runs[lora_dim], rel=1e-4)
    assert not (tmp_path / "ds" / "resume.pt").exists()


@needs_deepspeed
def test_ctrl_c_under_deepspeed_names_the_last_checkpoint_and_writes_no_resume_file(tmp_path, monkeypatch):
    import signal
    from gpt2_ft import main
    from loranlg import train
    from loranlg.errors import Interrupted
    data = copy_task(tmp_path / "train.jsonl")
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    original = train.TrainingRun.train_batch

    def interrupted_at_step_6(self, number, batch):
        original(self, number, batch)
        if self.train_step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train.TrainingRun, "train_batch", interrupted_at_step_6)
    flags = train_flags(data, tmp_path / "ds", 4) + ["--deepspeed", "--deepspeed_config", tmp_path / "ds.json"]
    flags[flags.index("--save_interval") + 1] = "4"
    with pytest.raises(Interrupted) as caught:
        main(flags)
    assert caught.value.exit_code == 130
    assert str(caught.value) == (f"SIGINT: training stopped at step 6 of 12; a --deepspeed run does not resume: the "
                                 f"last good checkpoint is kept: {tmp_path / 'ds' / 'model.4.pt'}")
    assert sorted(os.listdir(tmp_path / "ds")) == ["metrics.jsonl", "model.4.pt"]


@pytest.fixture(scope="module")
def eager_bf16_run(eager_runs, tmp_path_factory):
    from gpt2_ft import main
    data, _ = eager_runs
    work = tmp_path_factory.mktemp("eager_bf16") / "run"
    main(train_flags(data, work, 0, "bf16"))
    return outcome(work)


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sample_bf16_configs_on_the_cpu_stay_near_the_eager_bf16_step(tmp_path, eager_runs, eager_bf16_run, stage):
    """DeepSpeed's bf16 holds bf16 weights (fp32 masters in the optimizer), ours fp32 weights under autocast: the
    losses agree to bf16's rounding, and model.{step}.pt holds the fp32 masters (not bf16-rounded values)."""
    import torch
    from gpt2_ft import main
    data, _ = eager_runs
    main(train_flags(data, tmp_path / "ds", 0, "bf16") + ["--deepspeed", "--deepspeed_config",
                                                          REPO / "scripts" / f"ds_zero{stage}_bf16.json"])
    eager, ds = eager_bf16_run, outcome(tmp_path / "ds")
    assert max(abs(a - b) for a, b in zip(eager[0] + eager[1], ds[0] + ds[1])) < 0.03
    assert eager[0][-1] < eager[0][0] - 0.05
    assert ds[2].keys() == eager[2].keys()
    for name in ("module.transformer.h.0.mlp.c_fc.weight", "module.transformer.wte.weight"):
        weight = ds[2][name]
        assert weight.dtype == torch.float32 and not torch.equal(weight, weight.bfloat16().float()), name


@needs_deepspeed
@pytest.mark.slow
def test_deepspeed_launcher_with_two_processes_equals_ddp(tmp_path):
    """The `deepspeed` launcher (it passes --local_rank=N), 2 processes with gloo, ZeRO-3 partitioning every
    weight across them, against torchrun + our data-parallel step on the same global batch (2 x 2 x accumulation 2)."""
    data = copy_task(tmp_path / "train.jsonl")
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3,
                                                                        "stage3_param_persistence_threshold": 0}}))
    env = with_src_path(dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"))
    script = str(REPO / "src" / "gpt2_ft.py")
    runs = {"ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script],
            "ds": [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                   str(free_port()), script, "--deepspeed", "--deepspeed_config", str(tmp_path / "ds.json")]}
    for name, launcher in runs.items():
        done = subprocess.run(launcher + train_flags(data, tmp_path / name, 0), capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "rank 0 of 2" in done.stdout
    assert_same_run(outcome(tmp_path / "ds"), outcome(tmp_path / "ddp"), rel=1e-4)


def with_src_path(env):
    """env with src/ first on PYTHONPATH, what was there kept (deepspeed may be installed with --target there)."""
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])))


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
