"""Issue 19: every fault ends loudly (a one-line `error: ...`, a non-zero exit) or keeps working correctly."""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import gpt2_beam
import gpt2_decode
import gpt2_ft
from conftest import REPO, run_script, stand_in_gpu, stand_in_python
from loranlg import checkpoint, flags, train
from loranlg.errors import DiskFull, InputError, Interrupted, RunError
from loranlg.files import atomic_output
from loranlg.loading import load_model
from loranlg.model import build_model
from loranlg.run_guard import LOCK_FILE
from test_train import write_jsonl

EXAMPLES = [([5, 6, 7, 50256], [8, 9, 10, 50256]), ([11, 12, 50256], [13, 14, 15, 16, 50256]),
            ([17, 18, 19, 20, 50256], [21, 50256]), ([22, 50256], [23, 24, 50256])] * 2


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", EXAMPLES)


def ft_flags(data, work, *extra):
    return [str(a) for a in ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny",
                             "--lora_dim", 4, "--lora_alpha", 32, "--train_batch_size", 2, "--lr", 1e-3,
                             "--log_interval", 1, "--save_interval", 2, "--eval_interval", 1000,
                             "--work_dir", work, "--device", "cpu", *extra]]


def quiet(argv, **kwargs):
    return gpt2_ft.main([str(a) for a in argv], **kwargs)


def one_line_error(done):
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), done.stderr[-3000:]
    return lines[-1]


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def spawn_ft(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, str(REPO / "src" / "gpt2_ft.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def lora_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


# ------------------------------------------------------------------ 1. one training per work_dir

def test_a_second_training_in_the_same_work_dir_is_refused(tmp_path, data):
    work = tmp_path / "run"
    first = spawn_ft(ft_flags(data, work, "--max_step", 100000, "--save_interval", 100000))
    try:
        wait_for(lambda: (work / "metrics.jsonl").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()[1][-3000:]
        second = run_script("gpt2_ft.py", *ft_flags(data, work, "--max_step", 2))
        assert second.returncode == 2
        line = one_line_error(second)
        assert "another training" in line and f"process {first.pid}" in line and str(work) in line
    finally:
        first.kill()
        first.communicate()
    assert not (work / "model.2.pt").exists()


def test_a_stale_lock_of_a_dead_run_is_taken_over_and_the_lock_goes_at_the_end(tmp_path, data):
    work = tmp_path / "run"
    work.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / LOCK_FILE).write_text(f"{dead.pid}\n")  # as a run killed with kill -9 leaves it
    quiet(ft_flags(data, work, "--max_step", 2))
    assert sorted(os.listdir(work)) == ["metrics.jsonl", "model.2.pt", "resume.pt"]


# ------------------------------------------------------------------ 2. Ctrl-C / SIGTERM

def test_sigint_saves_a_resumable_state_and_the_resumed_run_ends_bit_exact(tmp_path, data, monkeypatch):
    common = ["--grad_acc", 2, "--max_step", 12, "--lora_dropout", 0.1, "--save_interval", 4]
    quiet(ft_flags(data, tmp_path / "whole", *common))
    original = train.TrainingRun.train_batch

    def interrupted_at_step_7(self, number, batch):  # mid-accumulation, between two saves
        original(self, number, batch)
        if self.train_step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train.TrainingRun, "train_batch", interrupted_at_step_7)
    parts = tmp_path / "parts"
    with pytest.raises(Interrupted) as caught:
        quiet(ft_flags(data, parts, *common))
    assert caught.value.exit_code == 130
    assert "SIGINT: training stopped at step 7 of 12" in str(caught.value)
    command = str(caught.value).split("Continue with: ")[1]
    assert command.endswith("--resume") and "--work_dir " + str(parts) in command
    assert torch.load(parts / "resume.pt", weights_only=False)["train_step"] == 7
    assert not (parts / "model.8.pt").exists() and not (parts / "model.7.pt").exists()
    monkeypatch.setattr(train.TrainingRun, "train_batch", original)
    quiet(shlex.split(command)[2:])  # the printed command, in this process
    for key, value in lora_of(tmp_path / "whole" / "model.12.pt").items():
        assert torch.equal(value, lora_of(parts / "model.12.pt")[key]), key


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_command_exits_with_128_plus_its_number(tmp_path, data, sig, code):
    work = tmp_path / "run"
    run = spawn_ft(ft_flags(data, work, "--max_step", 100000, "--save_interval", 100000))
    wait_for(lambda: (work / "metrics.jsonl").exists() and (work / "metrics.jsonl").stat().st_size > 0
             or run.poll() is not None)
    run.send_signal(sig)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code, stderr[-3000:]
    line = one_line_error(subprocess.CompletedProcess([], code, "", stderr))
    assert f"{signal.Signals(sig).name}: training stopped at step" in line and line.endswith("--resume")
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert torch.load(work / "resume.pt", weights_only=False)["train_step"] == step
    assert glob.glob(str(work / "model.*.pt")) == [] and not (work / LOCK_FILE).exists()


EXIT_AT_ONCE = """
import sys, threading, time
sys.path.insert(0, {src!r})
from loranlg.errors import InputError, run_cli
def write_late(path):
    time.sleep(0.5)
    open(path, "w").write("written")
def main(argv):
    print("output still in the buffer", end="")
    sys.stderr.write("a partial line")
    if argv[0] == "bad":
        raise InputError("bad value", "f.txt", 3)
    if argv[0] == "bug":
        raise ZeroDivisionError("a bug")
    if argv[0] == "writer":  # a write under way when main returns, as checkpoint_writer's
        threading.Thread(target=write_late, args=(argv[1],)).start()
run_cli(main, sys.argv[1:], exit_at_once=True)
print(" and this never runs")
"""


def test_a_command_ending_at_once_flushes_its_output_and_keeps_its_exit_code(tmp_path):
    """run_cli(exit_at_once=True), as gpt2_ft.py and gpt2_beam.py end: os._exit once the threads Python would wait
    for have ended and stdout and stderr are flushed; 0, an error's line and code, or a bug's traceback and 1."""
    script = tmp_path / "command.py"
    script.write_text(EXIT_AT_ONCE.format(src=str(REPO / "src")))
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a pipe's stdout is by default

    def command(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=buffered)

    done = command("fine")
    assert (done.returncode, done.stdout, done.stderr) == (0, "output still in the buffer", "a partial line")
    done = command("bad")
    assert (done.returncode, done.stdout) == (2, "output still in the buffer")
    assert done.stderr == "a partial lineerror: f.txt:3: bad value\n"
    done = command("bug")
    assert (done.returncode, done.stdout) == (1, "output still in the buffer")
    assert "Traceback" in done.stderr and done.stderr.endswith("ZeroDivisionError: a bug\n")
    done = command("writer", str(tmp_path / "late.txt"))
    assert done.returncode == 0 and (tmp_path / "late.txt").read_text() == "written"


def test_train_sh_writes_no_train_done_when_training_fails(tmp_path, data):
    fake = stand_in_python(tmp_path, "echo 'error: SIGINT: training stopped at step 3' >&2\nexit 130")
    work = tmp_path / "work"
    done = run_script("train.sh", "--task", "e2e", "--work_dir", work, "--launcher", "python",
                      env={"PYTHON": str(fake), "TRAIN_DATA": str(data), "VALID_DATA": str(data),
                           "INIT_CHECKPOINT": "none", "PATH": stand_in_gpu(tmp_path)})
    assert done.returncode == 130, done.stderr[-3000:]
    assert not (work / "train.done").exists()
    assert "-- --resume" in done.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ 3. numeric flags, non-finite losses

BAD_FLAGS = [
    (gpt2_ft.build_parser, ["--lr", "nan"]), (gpt2_ft.build_parser, ["--lr", "inf"]),
    (gpt2_ft.build_parser, ["--weight_decay", "nan"]), (gpt2_ft.build_parser, ["--lr", "-0.001"]),
    (gpt2_ft.build_parser, ["--adam_beta2", "1.5"]), (gpt2_ft.build_parser, ["--warmup_step", "-5"]),
    (gpt2_ft.build_parser, ["--adam_epsilon", "0"]), (gpt2_ft.build_parser, ["--clip", "-1"]),
    (gpt2_ft.build_parser, ["--lora_dropout", "1"]), (gpt2_ft.build_parser, ["--max_epoch", "0"]),
    (gpt2_ft.build_parser, ["--label_smooth", "nan"]), (gpt2_ft.build_parser, ["--random_seed", "-1"]),
    (gpt2_beam.build_parser, ["--length_penalty", "nan"]), (gpt2_beam.build_parser, ["--repetition_penalty", "0"]),
    (gpt2_beam.build_parser, ["--beam", "0"]), (gpt2_beam.build_parser, ["--eos_token_id", "-1"]),
    (gpt2_beam.build_parser, ["--lora_alpha", "inf"]), (gpt2_beam.build_parser, ["--min_length", "-1"]),
]


@pytest.mark.parametrize("parser,bad", BAD_FLAGS, ids=[" ".join(bad) for _, bad in BAD_FLAGS])
def test_bad_numeric_flags_are_refused_before_any_work(parser, bad, capsys):
    required = ["--train_data", "x", "--valid_data", "x"] if parser is gpt2_ft.build_parser else ["--data", "x"]
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(required + bad)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --") and bad[0] in err


@pytest.mark.parametrize("script,args", [
    ("gpt2_decode.py", ["--vocab", "v", "--sample_file", "s", "--input_file", "i", "--output_ref_file", "r",
                        "--output_pred_file", "p", "--ref_num", "0"]),
    ("../eval/GenerationEval/eval.py", ["-R", "r", "-H", "h", "-nr", "nan"]),
])
def test_other_commands_refuse_bad_numbers_on_one_line(script, args):
    done = subprocess.run([sys.executable, str(REPO / "src" / script), *args], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: argument")


def test_flag_types_check_range_and_finiteness():
    assert flags.real(0.0, 1.0, high_open=True)("0.5") == 0.5
    for bad in ("nan", "inf", "-inf", "1", "x"):
        with pytest.raises(Exception):
            flags.fraction(bad)
    assert flags.count("0") == 0 and flags.positive_int("3") == 3


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data):
    work = tmp_path / "run"
    flags_ = ft_flags(data, work, "--max_step", 12, "--save_interval", 2)
    flags_[flags_.index("--lora_dim") + 1] = "0"
    flags_[flags_.index("--lr") + 1] = "1e30"  # finite, and enough to blow the weights up
    flags_ += ["--scheduler", "constant", "--weight_decay", "0"]
    with pytest.raises(RunError) as caught:
        quiet(flags_)
    message = str(caught.value)
    assert re.search(r"(the training loss is (nan|inf) at step \d+|the weights are not finite)", message), message
    saved = sorted(glob.glob(str(work / "model.*.pt")))
    assert ("no checkpoint of this run" in message) if not saved else ("the last good checkpoint is kept" in message)
    for path in saved:
        assert all(torch.isfinite(v).all() for v in lora_of(path).values())
    assert all(json.loads(line)["loss"] == json.loads(line)["loss"]  # no nan written
               for line in open(work / "metrics.jsonl") if "loss" in line)


# ------------------------------------------------------------------ 4. our checkpoints: checksum, settings

def flip_a_bit_in_a_tensor(path):
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if re.search(r"/data/\d+$", i.filename))
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(handle.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len
        handle.seek(start + info.file_size // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte ^ 0x10]))


def test_a_flipped_bit_in_a_checkpoint_is_refused(tmp_path):
    model = build_model("gpt2.tiny", 4, 32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    checkpoint.save_lora(model, tmp_path / "model.6.pt")
    checkpoint.save_full(build_model("gpt2.tiny"), tmp_path / "base.pt")
    load_model("gpt2.tiny", 4, 32, init_checkpoint=tmp_path / "base.pt", lora_checkpoint=tmp_path / "model.6.pt")
    flip_a_bit_in_a_tensor(tmp_path / "model.6.pt")
    with pytest.raises(InputError, match="damaged") as caught:
        load_model("gpt2.tiny", 4, 32, init_checkpoint=tmp_path / "base.pt",
                   lora_checkpoint=tmp_path / "model.6.pt")
    assert str(caught.value.path) == str(tmp_path / "model.6.pt")


def test_recorded_settings_must_match_the_flags(tmp_path, data):
    checkpoint.save_lora(build_model("gpt2.tiny", 4, 8), tmp_path / "model.2.pt")
    checkpoint.save_full(build_model("gpt2.tiny"), tmp_path / "base.pt")
    (tmp_path / "test.jsonl").write_text(json.dumps({"context": [1, 2, 50256]}) + "\n")
    beam = ["--data", tmp_path / "test.jsonl", "--init_checkpoint", tmp_path / "base.pt", "--lora_checkpoint",
            tmp_path / "model.2.pt", "--lora_dim", 4, "--model_card", "gpt2.tiny", "--eval_len", 4, "--seq_len",
            16, "--work_dir", tmp_path / "beam", "--device", "cpu"]
    done = run_script("gpt2_beam.py", *beam, "--lora_alpha", 32)
    assert done.returncode == 2
    line = one_line_error(done)
    assert str(tmp_path / "model.2.pt") in line and "lora_alpha 8" in line and "--lora_alpha is 32" in line
    assert not (tmp_path / "beam").exists()
    for flag, value, said in (("--lora_dim", 2, "lora_dim 4"), ("--model_card", "gpt2.mini", "model_card gpt2.tiny")):
        argv = ft_flags(data, tmp_path / "ft", "--max_step", 2, "--lora_checkpoint", tmp_path / "model.2.pt",
                        "--lora_alpha", 8)
        argv[argv.index(flag) + 1] = str(value)
        with pytest.raises(InputError, match=said) as caught:
            quiet(argv)
        assert str(caught.value.path) == str(tmp_path / "model.2.pt")
    assert run_script("gpt2_beam.py", *beam, "--lora_alpha", 8).returncode == 0


def test_files_of_the_original_code_record_nothing_and_still_load(tmp_path):
    model = build_model("gpt2.tiny", 4, 32)
    state = {"module.transformer." + k: v for k, v in model.transformer.state_dict().items() if "lora_" in k}
    torch.save({"model_state_dict": state}, tmp_path / "original.pt")
    checkpoint.save_full(build_model("gpt2.tiny"), tmp_path / "base.pt")
    load_model("gpt2.tiny", 4, 128, init_checkpoint=tmp_path / "base.pt", lora_checkpoint=tmp_path / "original.pt")


# ------------------------------------------------------------------ 5. a LoRA file needs its base

def test_beam_refuses_a_lora_checkpoint_without_its_base(tmp_path):
    checkpoint.save_lora(build_model("gpt2.tiny", 4, 32), tmp_path / "model.2.pt")
    (tmp_path / "test.jsonl").write_text(json.dumps({"context": [1, 2, 50256]}) + "\n")
    with pytest.raises(InputError, match="--init_checkpoint"):
        gpt2_beam.main([str(a) for a in ["--data", tmp_path / "test.jsonl", "--lora_checkpoint",
                                         tmp_path / "model.2.pt", "--lora_dim", 4, "--lora_alpha", 32,
                                         "--model_card", "gpt2.tiny", "--work_dir", tmp_path / "out"]])
    assert not (tmp_path / "out").exists()


def test_the_docs_beam_examples_pass_lora_files_as_lora_checkpoints():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for command in re.findall(r"python src/gpt2_beam\.py(?:[^\n]*\\\n)*[^\n]*", doc.read_text()):
            init = re.search(r"--init_checkpoint (\S+)", command)
            assert not (init and re.search(r"model\.\d+\.pt|lora", init.group(1))), (doc, command)
            if "--lora_checkpoint" in command:
                assert init, (doc, command)


# ------------------------------------------------------------------ 6. a full disk

def test_a_full_disk_while_saving_says_so_and_what_is_kept(tmp_path, data, monkeypatch):
    original = torch.save
    models = []

    def full_at_the_second_model(obj, handle):  # what torch.save raises when the disk fills up
        if "model_state_dict" in obj:
            models.append(obj)
            if len(models) > 1:
                try:
                    raise OSError(28, "No space left on device")
                except OSError:
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return original(obj, handle)

    monkeypatch.setattr(torch, "save", full_at_the_second_model)
    work = tmp_path / "run"
    with pytest.raises(RunError) as caught:
        quiet(ft_flags(data, work, "--max_step", 6))
    message = str(caught.value)
    assert "no space left" in message and str(work / "model.4.pt") in message, message
    assert f"the last good checkpoint is kept: {work / 'model.2.pt'}" in message
    assert sorted(os.listdir(work)) == ["metrics.jsonl", "model.2.pt", "resume.pt"]


def test_atomic_output_turns_enospc_into_a_disk_full_error(tmp_path):
    with pytest.raises(DiskFull, match="no space left"):
        with atomic_output(tmp_path / "out.txt") as handle:
            handle.write("x")
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 200 kB tmpfs (needs root; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_for_encode_and_training(full_disk, tmp_path, vocab_dir, data):
    lines = "".join(json.dumps({"context": f"name : A{i}", "completion": "A is here ." * 20}) + "\n"
                    for i in range(2000))
    (tmp_path / "in.jsonl").write_text(lines)
    done = run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", tmp_path / "in.jsonl", "--output",
                      full_disk / "out.jsonl")
    assert done.returncode == 1 and "no space left" in one_line_error(done)
    assert os.listdir(full_disk) == []
    argv = ft_flags(data, full_disk / "run", "--max_step", 4)
    argv[argv.index("--lora_dim") + 1] = "0"  # full fine-tuning: a 13 MB checkpoint
    done = run_script("gpt2_ft.py", *argv)
    line = one_line_error(done)
    assert done.returncode == 1 and "no space left" in line and "no checkpoint of this run was written" in line
    assert not glob.glob(str(full_disk / "run" / "*.pt")) and not glob.glob(str(full_disk / "run" / ".tmp-*"))


# ------------------------------------------------------------------ 7. resuming after a crash

def test_resume_drops_a_torn_metrics_line_and_refuses_a_damaged_resume_file(tmp_path, data, capsys):
    work = tmp_path / "run"
    quiet(ft_flags(data, work, "--max_step", 8), stop_after_step=5)
    with open(work / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "upd')  # the write a crash cut off
    quiet(ft_flags(data, work, "--max_step", 8, "--resume"))
    assert "metrics.jsonl:6: dropped a torn line" in capsys.readouterr().err
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["step"] for r in records if "valid_loss" not in r] == list(range(1, 9))
    size = (work / "resume.pt").stat().st_size
    with open(work / "resume.pt", "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(InputError) as caught:
        quiet(ft_flags(data, work, "--max_step", 8, "--resume"))
    assert caught.value.path == str(work / "resume.pt")
    assert "damaged" in str(caught.value) and f"the last good checkpoint is {work / 'model.8.pt'}" in str(caught.value)


# ------------------------------------------------------------------ 8. outputs and inputs at the edges

def test_an_output_that_is_a_directory_or_under_a_file_is_refused(tmp_path, vocab_dir):
    raw = tmp_path / "raw.txt"
    raw.write_text("name : A||A is here .\n")
    (tmp_path / "outdir").mkdir()
    done = run_script("format_converting_e2e.py", raw, tmp_path / "outdir")
    assert done.returncode == 2 and "is a directory" in one_line_error(done)
    (tmp_path / "a_file").write_text("")
    done = run_script("format_converting_e2e.py", raw, tmp_path / "a_file" / "sub" / "out.jsonl")
    assert done.returncode == 2 and f"{tmp_path / 'a_file'} is a file, not a directory" in one_line_error(done)
    (tmp_path / "in.jsonl").write_text(json.dumps({"context": "a", "completion": "b"}) + "\n")
    (tmp_path / "sample.jsonl").write_text(json.dumps({"id": 0, "predict": [64]}) + "\n")
    with pytest.raises(InputError, match="is a directory"):
        gpt2_decode.main(["--vocab", str(vocab_dir), "--sample_file", str(tmp_path / "sample.jsonl"),
                          "--input_file", str(tmp_path / "in.jsonl"), "--output_ref_file",
                          str(tmp_path / "ref.txt"), "--output_pred_file", str(tmp_path / "outdir")])
    assert not (tmp_path / "ref.txt").exists()


@pytest.mark.parametrize("script", ["format_converting_e2e.py", "gpt2_encode.py"])
def test_an_empty_input_gives_an_error_not_an_empty_output(script, tmp_path, vocab_dir):
    (tmp_path / "empty").write_text("")
    out = tmp_path / "out.jsonl"
    args = ([tmp_path / "empty", out] if script.startswith("format") else
            ["--vocab", vocab_dir, "--input", tmp_path / "empty", "--output", out])
    done = run_script(script, *args)
    assert done.returncode == 2 and "no examples" in one_line_error(done) and not out.exists()


def test_a_refused_run_leaves_no_empty_work_dir(tmp_path):
    done = run_script("gpt2_ft.py", *ft_flags(tmp_path / "missing.jsonl", tmp_path / "run", "--max_step", 2))
    assert done.returncode == 2 and not (tmp_path / "run").exists()


def test_a_killed_writers_temporary_file_is_cleaned_by_the_next_run(tmp_path, vocab_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from loranlg.files import _HOST
    stale = tmp_path / f".tmp-out.jsonl.{_HOST}.{dead.pid}.abc123"
    stale.write_text('{"context": [1')
    (tmp_path / "in.jsonl").write_text(json.dumps({"context": "a", "completion": "b"}) + "\n")
    done = run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", tmp_path / "in.jsonl", "--output",
                      tmp_path / "out.jsonl")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
