"""The E2E chain of shell scripts end to end: `run_e2e.sh --demo` at a reduced size, then each stage alone."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, assert_rerun_skips_every_stage, run_script, stand_in_gpu, stand_in_python

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCORE_RANGES = {"BLEU": (0, 1), "NIST": (0, 15), "METEOR": (0, 1), "ROUGE_L": (0, 1), "CIDEr": (0, 10)}
CONTEXTS = 2
# The demo runs once for the module (about 30 s: training, beam search and the Java metrics); its tests read it.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(shared_dir, tmp_path_factory):
    """One reduced demo run: gpt2.tiny, 4 training steps of batch 4, two test MRs, two held-out MRs."""
    if shutil.which("java") is None:
        pytest.skip("no java: the E2E evaluator needs a Java runtime")
    work = tmp_path_factory.mktemp("demo") / "e2e"
    env = dict(VOCAB_DIR=str(shared_dir / "vocab"), E2E_SOURCE_DIR=str(shared_dir / "data" / "e2e"),
               WORK_DIR=str(work), DEMO_CARD="gpt2.tiny", DEMO_STEPS="4", DEMO_CONTEXTS=str(CONTEXTS),
               DEMO_HOLDOUT="2", TRAIN_ARGS="--train_batch_size 4", BEAM_ARGS="--eval_len 16")
    done = run_script("run_e2e.sh", "--demo", env=env, cwd=work.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, env, done


@slow
def test_demo_writes_every_artefact(demo):
    work, _, _ = demo
    for name in ("data/train.jsonl", "data/valid.jsonl", "data/test.jsonl", "data/test_formatted.jsonl",
                 "model.4.pt", "train.done", "metrics.jsonl", "train.log", "predict.4.b10p08r4.jsonl",
                 "beam.log", "e2e_ref.txt", "e2e_pred.txt", "scores.json", "scores.txt", "results.md", "results.png",
                 "losses.png"):
        assert (work / name).is_file() and (work / name).stat().st_size > 0, name
    assert (work / "train.done").read_text().strip() == "model.4.pt"
    assert (work / "losses.png").read_bytes().startswith(PNG_MAGIC)
    assert not [p.name for p in work.iterdir() if p.name.startswith((".tmp", ".train"))]


@slow
def test_demo_uses_the_chosen_subsets(demo, shared_dir):
    work, _, _ = demo
    raw_test = (shared_dir / "data/e2e/test.txt").read_text().splitlines()
    first_mrs = list(dict.fromkeys(line.split("||")[0] for line in raw_test))[:CONTEXTS]
    expected_test = [line for line in raw_test if line.split("||")[0] in first_mrs]
    assert (work / "data/test.txt").read_text().splitlines() == expected_test
    # Every test line got a prediction; one prediction line and one reference group per MR.
    predicted = [json.loads(line)["id"] for line in (work / "predict.4.b10p08r4.jsonl").read_text().splitlines()]
    assert predicted == list(range(len(expected_test)))
    assert len((work / "e2e_pred.txt").read_text().splitlines()) == CONTEXTS
    groups = (work / "e2e_ref.txt").read_text().strip("\n").split("\n\n")
    assert [len(group.splitlines()) for group in groups] == [
        sum(line.split("||")[0] == mr for line in expected_test) for mr in first_mrs]
    # The held-out MRs (the last 2 of valid) are not in the training data.
    raw_valid = (shared_dir / "data/e2e/valid.txt").read_text().splitlines()
    held_out = list(dict.fromkeys(line.split("||")[0] for line in raw_valid))[-2:]
    train = (work / "data/train.txt").read_text().splitlines()
    valid = (work / "data/valid.txt").read_text().splitlines()
    assert len(train) + len(valid) == len(raw_valid)
    assert {line.split("||")[0] for line in valid} == set(held_out)
    assert not any(line.split("||")[0] in held_out for line in train)


@slow
def test_demo_scores_are_numbers_in_range(demo):
    work, _, done = demo
    scores = json.loads((work / "scores.json").read_text())
    for name, (low, high) in SCORE_RANGES.items():
        assert isinstance(scores[name], float) and low <= scores[name] <= high, (name, scores[name])
    printed = (work / "scores.txt").read_text()
    assert printed.startswith("SCORES:\n") and f"BLEU: {scores['BLEU']:.4f}" in printed
    results = (work / "results.md").read_text()
    assert results in done.stdout  # the run ends with the table
    assert f"**{100 * scores['ROUGE_L']:.2f}**" in results or f"**{100 * scores['ROUGE_L']:.3f}**" in results
    assert "ours vs paper FT" in results and "they are not a reproduction of the paper" in results
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m and "valid_loss" not in m] == [1, 2, 3, 4]
    assert any("valid_loss" in m for m in metrics)


@slow
def test_rerun_skips_every_stage(demo):
    work, env, _ = demo
    assert_rerun_skips_every_stage("run_e2e.sh", work, env)


def stage_env(demo, **extra):
    """What a user sets to run one stage of the demo's work dir alone."""
    work, env, _ = demo
    return dict(env, DATA_DIR=str(work / "data"), MODEL_CARD="gpt2.tiny", LORA_DIM="0", INIT_CHECKPOINT="none",
                LAUNCHER="python", TEST_FORMATTED=str(work / "data/test_formatted.jsonl"), **extra)


@slow
def test_a_stage_alone_and_forced(demo):
    work, _, _ = demo
    ref, pred = work / "e2e_ref.txt", work / "e2e_pred.txt"
    before = ref.read_text(), pred.read_text(), pred.stat().st_mtime_ns
    skipped = run_script("decode_e2e.sh", env=stage_env(demo))
    assert skipped.returncode == 0 and "[decode] skipped" in skipped.stderr
    forced = run_script("decode_e2e.sh", "--force", env=stage_env(demo))
    assert forced.returncode == 0, forced.stderr
    assert "[decode] running:" in forced.stderr
    assert (ref.read_text(), pred.read_text()) == before[:2] and pred.stat().st_mtime_ns != before[2]


@pytest.mark.parametrize("script, names", [
    ("train_e2e.sh", "bash scripts/create_datasets.sh"),
    ("beam_e2e.sh", "bash scripts/train_e2e.sh"),
    ("decode_e2e.sh", "bash scripts/train_e2e.sh"),
    ("eval_e2e.sh", "bash scripts/decode_e2e.sh"),
])
def test_missing_input_names_the_script_that_makes_it(tmp_path, script, names):
    env = dict(WORK_DIR=str(tmp_path / "run"), DATA_DIR=str(tmp_path / "data"), VOCAB_DIR=str(tmp_path))
    done = run_script(script, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and names in done.stderr
    assert not (tmp_path / "run" / "train.done").exists()


def test_missing_predictions_name_the_beam_stage(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "train.done").write_text("model.7.pt\n")
    done = run_script("decode_e2e.sh", env=dict(WORK_DIR=str(work), DATA_DIR=str(tmp_path)))
    assert done.returncode == 2
    assert f"{work}/predict.7.b10p08r4.jsonl" in done.stderr and "bash scripts/beam_e2e.sh" in done.stderr


def test_flags_are_checked(tmp_path):
    bad_model = run_script("train_e2e.sh", "--model", "xl", env=dict(WORK_DIR=str(tmp_path)))
    assert bad_model.returncode == 2 and "--model must be sm, md or lg" in bad_model.stderr
    unknown = run_script("beam_e2e.sh", "--beam", "5")
    assert unknown.returncode == 2 and "unknown option '--beam'" in unknown.stderr
    for flags, message in ((["--nnodes", "2", "--node_rank", "2"], "--node_rank must be below --nnodes"),
                           (["--rdzv_timeout", "10s"], "take whole numbers")):
        refused = run_script("train_e2e.sh", *flags, env=dict(WORK_DIR=str(tmp_path)))
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    one_process = run_script("train_e2e.sh", "--launcher", "python", "--ngpu", "2")
    assert one_process.returncode == 2 and "runs one process" in one_process.stderr
    helped = run_script("run_e2e.sh", "--help")
    assert helped.returncode == 0 and "--demo" in helped.stdout and "NNODES" in helped.stdout


def test_launcher_command_lines(tmp_path):
    """The torchrun / torch.distributed.launch command a stage builds, seen through a stand-in interpreter."""
    fake = stand_in_python(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (data / name).write_text("{}\n")
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(data), INIT_CHECKPOINT="none",
               WORK_DIR=str(tmp_path / "run"), PATH=stand_in_gpu(tmp_path))
    for launcher in ("torchrun", "launch"):
        done = run_script("train_e2e.sh", "--ngpu", "8", "--nnodes", "2", "--node_rank", "1",
                          "--master_addr", "10.0.0.1", "--launcher", launcher, "--", "--max_step", "5",
                          env=dict(env, RDZV_TIMEOUT="60"))
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "run" / "train.done").exists()  # node 0's, naming its checkpoint
        (tmp_path / "run" / "train.node1.done").unlink()  # node 1's own marker: gone, the next launcher runs too
    torchrun, launch = (tmp_path / "log").read_text().splitlines()
    module = {"torchrun": "torch.distributed.run", "launch": "torch.distributed.launch"}
    for line, launcher in ((torchrun, "torchrun"), (launch, "launch")):
        assert line.startswith(f"-m {module[launcher]} --nproc_per_node=8 --nnodes=2 --node_rank=1 "
                               f"--master_addr=10.0.0.1 --master_port=29500 --rdzv_conf=timeout=60 "
                               f"{os.path.dirname(os.path.dirname(__file__))}/src/gpt2_ft.py ")
        for recipe in ("--train_batch_size 8", "--lr 0.0002", "--weight_decay 0.01", "--correct_bias",
                       "--warmup_step 500", "--max_epoch 5", "--lora_dim 4", "--lora_alpha 32",
                       "--lora_dropout 0.1", "--label_smooth 0.1", "--random_seed 110", "--model_card gpt2.md"):
            assert f" {recipe} " in f" {line} "
        assert line.endswith("--max_step 5")
    (tmp_path / "log").unlink()
    run_script("train_e2e.sh", "--ngpu", "2", "--force", env=dict(env, GLOBAL_BATCH="8"))  # the stand-in writes no model
    line = (tmp_path / "log").read_text()
    assert " --global_batch 8 " in line and "--train_batch_size" not in line


@slow
def test_a_remade_input_redoes_the_stages_after_it(demo):
    work, _, _ = demo
    predict = work / "predict.4.b10p08r4.jsonl"
    os.utime(predict)  # as if beam_e2e.sh had just written it again
    done = run_script("decode_e2e.sh", env=stage_env(demo))
    assert done.returncode == 0, done.stderr
    assert f"redoing: {predict} is newer than" in done.stderr and "[decode] running:" in done.stderr
    assert (work / "e2e_pred.txt").stat().st_mtime_ns >= predict.stat().st_mtime_ns


@slow
def test_other_demo_settings_need_force(demo):
    _, env, _ = demo
    done = run_script("run_e2e.sh", "--demo", env=dict(env, DEMO_STEPS="5"))
    assert done.returncode == 2
    assert "holds a demo run with other settings" in done.stderr and "steps=4" in done.stderr


def test_beam_on_a_released_lora_checkpoint_command_line(tmp_path):
    """CHECKPOINT=released LoRA file: base weights + --lora_checkpoint, the paper's beam settings."""
    fake = stand_in_python(tmp_path)
    (tmp_path / "test.jsonl").write_text("{}\n")
    base = tmp_path / "gpt2-medium-pytorch_model.bin"
    lora = tmp_path / "gpt2_md_lora_e2e.pt"
    base.write_bytes(b"x")
    lora.write_bytes(b"x")
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path), PRETRAINED_DIR=str(tmp_path),
               CHECKPOINT=str(lora), WORK_DIR=str(tmp_path / "run"), LAUNCHER="python", PATH=stand_in_gpu(tmp_path))
    done = run_script("beam_e2e.sh", env=env)
    # The stand-in writes no predictions: the stage says so.
    assert done.returncode == 2 and "gpt2_beam.py ended without writing" in done.stderr
    assert f"{tmp_path}/run/predict.gpt2_md_lora_e2e.b10p08r4.jsonl" in done.stderr
    line = " " + (tmp_path / "log").read_text().strip() + " "
    for expected in (f"--init_checkpoint {base} --lora_checkpoint {lora}", "--model_card gpt2.md",
                     "--lora_dim 4 --lora_alpha 32", "--beam 10", "--length_penalty 0.8",
                     "--no_repeat_ngram_size 4", "--repetition_penalty 1.0", "--eos_token_id 628", "--eval_len 64",
                     "--seq_len 512", f"--data {tmp_path}/test.jsonl", "--batch_size auto"):
        assert f" {expected} " in line, expected


def test_one_node_torchrun_is_standalone(tmp_path):
    fake = stand_in_python(tmp_path)
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text("{}\n")
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path), INIT_CHECKPOINT="none",
               WORK_DIR=str(tmp_path / "run"), PATH=stand_in_gpu(tmp_path))
    done = run_script("train_e2e.sh", "--ngpu", "2", env=env)
    # The stand-in writes no checkpoint: the stage says so after the launch.
    assert done.returncode == 2 and "ended without writing a model.{step}.pt" in done.stderr
    assert (tmp_path / "log").read_text().startswith("-m torch.distributed.run --nproc_per_node=2 --standalone "
                                                     "--nnodes=1 ")
    assert not (tmp_path / "run" / "train.done").exists()


def test_training_keeps_compiled_kernels_in_the_repository(tmp_path):
    """torch.compile's cache defaults to REPO/.cache/torchinductor (a later run reuses the kernels); a user's
    TORCHINDUCTOR_CACHE_DIR is kept, a relative one taken from the repository like the scripts' other paths."""
    fake = stand_in_python(tmp_path, 'echo "$TORCHINDUCTOR_CACHE_DIR" >> "$LOG"')
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text("{}\n")
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path), INIT_CHECKPOINT="none",
               WORK_DIR=str(tmp_path / "run"), LAUNCHER="python", PATH=stand_in_gpu(tmp_path))
    base = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    for chosen, expected in ((None, REPO / ".cache" / "torchinductor"), (tmp_path / "mine", tmp_path / "mine"),
                             ("rel/cache", REPO / "rel" / "cache")):  # relative: from the repository, as the others
        (tmp_path / "log").unlink(missing_ok=True)
        run_env = dict(base, **env, **({"TORCHINDUCTOR_CACHE_DIR": str(chosen)} if chosen else {}))
        done = subprocess.run(["bash", str(REPO / "scripts" / "train_e2e.sh")], capture_output=True, text=True,
                              env=run_env, cwd=tmp_path)
        assert "ended without writing a model.{step}.pt" in done.stderr, done.stderr[-2000:]
        assert (tmp_path / "log").read_text().strip() == str(expected)


def test_one_process_runs_without_a_launcher(tmp_path):
    """One GPU, no LAUNCHER: the stage runs its Python command directly (torchrun would start a second Python);
    LAUNCHER=torchrun still goes through torchrun."""
    fake = stand_in_python(tmp_path)
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text("{}\n")
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path), INIT_CHECKPOINT="none",
               WORK_DIR=str(tmp_path / "run"), PATH=stand_in_gpu(tmp_path), LAUNCHER="")
    assert run_script("train_e2e.sh", env=env).returncode == 2  # the stand-in writes no checkpoint
    assert run_script("train_e2e.sh", env=dict(env, LAUNCHER="torchrun")).returncode == 2
    plain, torchrun = (tmp_path / "log").read_text().splitlines()
    assert plain.startswith(f"{REPO}/src/gpt2_ft.py ")
    assert torchrun.startswith("-m torch.distributed.run --nproc_per_node=1 --standalone --nnodes=1 ")


def fresh_clone(tmp_path):
    """The repository's code in a folder with no shared data beside it, no data/ and no pretrained_checkpoints/."""
    clone = tmp_path / "clone"
    for name in ("src", "scripts", "eval"):
        shutil.copytree(REPO / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    return clone


def clone_env(**extra):
    env = {key: value for key, value in os.environ.items() if key not in ("LORANLG_SHARED", "VOCAB_DIR")}
    env.update(PYTHON=sys.executable, **extra)
    return env


@slow
def test_demo_downloads_its_small_inputs_when_online(shared_dir, tmp_path):
    """No shared folder, no data: the vocabulary and E2E valid/test come from the servers (a local one here)."""
    if shutil.which("java") is None:
        pytest.skip("no java: the E2E evaluator needs a Java runtime")
    from test_download import FileServer, hub_layout
    clone = fresh_clone(tmp_path)
    server = FileServer()
    try:
        for name in ("valid.txt", "test.txt"):
            server.files[f"/data/e2e/{name}"] = (shared_dir / "data/e2e" / name).read_bytes()
        hub_layout(server, {"openai-community/gpt2/vocab.json": (shared_dir / "vocab/encoder.json").read_bytes(),
                            "openai-community/gpt2/merges.txt": (shared_dir / "vocab/vocab.bpe").read_bytes()})
        env = clone_env(LORANLG_DATA_URL=server.url, LORANLG_HUB_URL=server.url, DEMO_CARD="gpt2.tiny",
                        DEMO_STEPS="2", DEMO_CONTEXTS="1", DEMO_HOLDOUT="1", TRAIN_ARGS="--train_batch_size 2",
                        BEAM_ARGS="--eval_len 8")
        done = subprocess.run(["bash", str(clone / "scripts/run_e2e.sh"), "--demo"], capture_output=True, text=True,
                              env=env, cwd=tmp_path)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "downloading it" in done.stderr
    for name in ("valid.txt", "test.txt"):
        assert (clone / "data/e2e" / name).read_bytes() == (shared_dir / "data/e2e" / name).read_bytes()
    assert sorted(os.listdir(clone / "pretrained_checkpoints")) == ["merges.txt", "vocab.json"]
    assert (clone / "trained_models/demo/e2e/results.md").is_file()
    assert re.search(r"=== train\.sh: \d+ s ===", done.stderr)  # each stage says how long it took


@pytest.mark.parametrize("task, missing", [
    ("e2e", ["data/e2e/valid.txt into", "data/e2e/test.txt into", "the GPT-2 vocabulary"]),
    ("webnlg", ["data/webnlg_challenge_2017/dev.json into", "the GPT-2 vocabulary"]),
])
def test_demo_offline_without_inputs_lists_every_missing_file(tmp_path, task, missing):
    clone = fresh_clone(tmp_path)
    env = clone_env(LORANLG_DATA_URL="http://127.0.0.1:9", LORANLG_HUB_URL="http://127.0.0.1:9")
    done = subprocess.run(["bash", str(clone / f"scripts/run_{task}.sh"), "--demo"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: demo: missing inputs") and "LORANLG_SHARED" in last
    for item in missing:
        assert item in last, item
    assert not (clone / "trained_models").exists()


def test_a_paper_size_run_without_a_gpu_stops_and_says_what_it_costs(tmp_path):
    """No GPU (no /dev/nvidia0, no nvidia-smi here): gpt2.md training and beam search stop before any work."""
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    fake = stand_in_python(tmp_path)
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text("{}\n")
    no_gpu_path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                                  if not os.path.exists(os.path.join(d, "nvidia-smi")))
    env = dict(PYTHON=str(fake), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path), INIT_CHECKPOINT="none",
               WORK_DIR=str(tmp_path / "run"), LAUNCHER="python", PATH=no_gpu_path)
    done = run_script("train_e2e.sh", env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: train: no GPU on this machine: training gpt2.md on the CPU would take days")
    assert "bash scripts/train_e2e.sh -- --device cpu" in done.stderr and "bash scripts/demo.sh e2e" in done.stderr
    assert not (tmp_path / "log").exists() and not (tmp_path / "run").exists()
    forced = run_script("train_e2e.sh", "--", "--device", "cpu", env=env)  # the stand-in writes no checkpoint
    assert "ended without writing a model.{step}.pt" in forced.stderr
    assert (tmp_path / "log").read_text().strip().endswith("--device cpu")
    small = run_script("train_e2e.sh", "--model_card", "gpt2.tiny", env=env)  # our small cards run anywhere
    assert "no GPU" not in small.stderr
