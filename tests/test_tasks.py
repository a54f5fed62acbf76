"""WebNLG and DART through the scripts: the demo data, the task recipes, the data download, and the whole chain
(`run_webnlg.sh --demo`, `run_dart.sh --demo`) at a reduced size."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import SRC, assert_rerun_skips_every_stage, run_script, stand_in_gpu, stand_in_python
from loranlg.demo_data import DEFAULT_UNSEEN, write_demo_data
from loranlg.formats import WEBNLG_SEEN_CATEGORIES
from test_download import FileServer

slow = pytest.mark.slow


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def entry_categories(path):
    return [next(iter(wrapper.values()))["category"] for wrapper in json.loads(path.read_text())["entries"]]


def test_webnlg_demo_data_keeps_its_unseen_categories_out_of_training(shared_dir, tmp_path):
    source = shared_dir / "data/webnlg_challenge_2017/dev.json"
    counts = write_demo_data("webnlg", source, tmp_path, contexts=10, holdout=3)
    train, valid, test = (entry_categories(tmp_path / f"{part}.json") for part in ("train", "valid", "test"))
    assert (len(valid), len(test)) == (3, 10)
    assert not set(train) & set(DEFAULT_UNSEEN) and not set(valid) & set(DEFAULT_UNSEEN)
    assert sum(category in DEFAULT_UNSEEN for category in test) == 5
    # Every entry of a seen category lands in exactly one part; the unseen ones not tested are left out.
    dev = [next(iter(wrapper.values()))["category"] for wrapper in json.loads(source.read_text())["entries"]]
    assert len(train) + len(valid) + 5 == sum(category not in DEFAULT_UNSEEN for category in dev)
    # The formatted test part marks the held-out categories as unseen, entry by entry, in the converter's order.
    examples = read_jsonl(tmp_path / "test_formatted.jsonl")
    assert counts["test"] == len(examples)
    expected = []
    for wrapper in json.loads((tmp_path / "test.json").read_text())["entries"]:
        entry = next(iter(wrapper.values()))
        expected += [entry["category"] not in DEFAULT_UNSEEN
                     for lex in entry["lexicalisations"] if lex["comment"] == "good"]
    assert [example["cate"] for example in examples] == expected
    assert {True, False} == set(expected)
    # The training part is formatted exactly as the converter formats it (all its categories are seen anyway).
    converted = tmp_path / "converted.jsonl"
    assert run_script("format_converting_webnlg.py", tmp_path / "train.json", converted).returncode == 0
    assert converted.read_text() == (tmp_path / "train_formatted.jsonl").read_text()
    assert set(train) <= WEBNLG_SEEN_CATEGORIES


def test_dart_demo_data_takes_the_last_triple_sets_for_test(shared_dir, tmp_path):
    source = shared_dir / "data/dart/dart-v1.1.1-full-dev.json"
    data = json.loads(source.read_text())
    write_demo_data("dart", source, tmp_path, contexts=4, holdout=2)
    assert json.loads((tmp_path / "test.json").read_text()) == data[-4:]
    assert json.loads((tmp_path / "valid.json").read_text()) == data[-6:-4]
    assert json.loads((tmp_path / "train.json").read_text()) == data[:-6]
    test = read_jsonl(tmp_path / "test_formatted.jsonl")
    assert len(test) == sum(len(example["annotations"]) for example in data[-4:])
    first = data[-4]["tripleset"][0]
    assert test[0]["context"].startswith(f"{first[0]} : {first[1].lower()} : {first[2]}")


def test_demo_data_refuses_impossible_sizes(shared_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loranlg.demo_data", "--task", "dart", "--source",
                           str(shared_dir / "data/dart/dart-v1.1.1-full-dev.json"), "--out", str(tmp_path),
                           "--contexts", "100000"], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "cannot give 100000 test" in proc.stderr
    assert not list(tmp_path.iterdir())


def fake_python(tmp_path):
    fake = stand_in_python(tmp_path)
    return fake


@pytest.mark.parametrize("task, recipe", [
    ("webnlg", ("--weight_decay 0.01", "--lora_dropout 0.1", "--label_smooth 0.1")),
    ("dart", ("--weight_decay 0.0", "--lora_dropout 0.0", "--label_smooth 0.0")),
])
def test_training_recipe_per_task(tmp_path, task, recipe):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (data / name).write_text("{}\n")
    env = dict(PYTHON=str(fake_python(tmp_path)), LOG=str(tmp_path / "log"), DATA_DIR=str(data),
               INIT_CHECKPOINT="none", WORK_DIR=str(tmp_path / "run"), LAUNCHER="python", PATH=stand_in_gpu(tmp_path))
    done = run_script("train.sh", "--task", task, env=env)
    assert done.returncode == 2 and "ended without writing a model.{step}.pt" in done.stderr
    line = " " + (tmp_path / "log").read_text().strip() + " "
    for expected in recipe + ("--lr 0.0002", "--train_batch_size 8", "--warmup_step 500", "--max_epoch 5",
                              "--lora_dim 4", "--lora_alpha 32", "--random_seed 110"):
        assert f" {expected} " in line, expected


@pytest.mark.parametrize("task", ["webnlg", "dart"])
def test_released_checkpoint_is_decoded_without_training(tmp_path, task):
    (tmp_path / "test.jsonl").write_text("{}\n")
    base = tmp_path / "gpt2-medium-pytorch_model.bin"
    lora = tmp_path / f"gpt2_md_lora_{task}.pt"
    base.write_bytes(b"x")
    lora.write_bytes(b"x")
    env = dict(PYTHON=str(fake_python(tmp_path)), LOG=str(tmp_path / "log"), DATA_DIR=str(tmp_path),
               PRETRAINED_DIR=str(tmp_path), CHECKPOINT=str(lora), WORK_DIR=str(tmp_path / "run"),
               LAUNCHER="python", PATH=stand_in_gpu(tmp_path))
    done = run_script("beam.sh", "--task", task, env=env)
    assert done.returncode == 2 and "gpt2_beam.py ended without writing" in done.stderr
    assert f"{tmp_path}/run/predict.gpt2_md_lora_{task}.b10p08.jsonl" in done.stderr
    line = " " + (tmp_path / "log").read_text().strip() + " "
    for expected in (f"--init_checkpoint {base} --lora_checkpoint {lora}", "--beam 10", "--length_penalty 0.8",
                     "--no_repeat_ngram_size 4", "--eos_token_id 628", "--eval_len 64"):
        assert f" {expected} " in line, expected


def test_missing_stage_inputs_name_the_task_command(tmp_path):
    env = dict(WORK_DIR=str(tmp_path / "run"), DATA_DIR=str(tmp_path / "data"), VOCAB_DIR=str(tmp_path))
    beam = run_script("beam.sh", "--task", "dart", env=env)
    assert beam.returncode == 2 and "bash scripts/train.sh --task dart" in beam.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.done").write_text("model.9.pt\n")
    decode = run_script("decode.sh", "--task", "webnlg", env=env)
    assert decode.returncode == 2
    assert f"{tmp_path}/run/predict.9.b10p08.jsonl" in decode.stderr and "beam.sh --task webnlg" in decode.stderr
    scored = run_script("eval.sh", "--task", "webnlg", env=env)
    assert scored.returncode == 2 and "references_webnlg_unseen/reference0" in scored.stderr
    assert "decode.sh --task webnlg" in scored.stderr
    bad = run_script("run.sh", "--task", "wmt")
    assert bad.returncode == 2 and "--task must be e2e, webnlg or dart" in bad.stderr


@pytest.mark.parametrize("dataset, folder, names", [
    ("webnlg", "webnlg_challenge_2017", {"train": "train.json", "valid": "dev.json", "test": "test.json"}),
    ("dart", "dart", {"train": "dart-v1.1.1-full-train.json", "valid": "dart-v1.1.1-full-dev.json",
                      "test": "dart-v1.1.1-full-test.json"}),
])
def test_create_datasets_downloads_every_split(shared_dir, vocab_dir, tmp_path, dataset, folder, names):
    """train / valid / test downloaded from the LoRA repository's layout (a local server stands in for it)."""
    dev = {"webnlg": shared_dir / "data/webnlg_challenge_2017/dev.json",
           "dart": shared_dir / "data/dart/dart-v1.1.1-full-dev.json"}[dataset].read_bytes()
    server = FileServer()
    try:
        for name in names.values():
            server.files[f"/data/{folder}/{name}"] = dev
        proc = run_script("create_datasets.sh", "--datasets", dataset, "--vocab", vocab_dir, "--data", tmp_path,
                          env={"LORANLG_DATA_URL": server.url})
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    expected = (tmp_path / folder / "valid_formatted.jsonl").read_text()
    for split in ("train", "valid", "test"):
        assert (tmp_path / folder / names[split]).read_bytes() == dev
        assert (tmp_path / folder / f"{split}_formatted.jsonl").read_text() == expected
        assert (tmp_path / folder / f"{split}.jsonl").stat().st_size > 0


def test_create_datasets_offline_names_each_missing_file(vocab_dir, tmp_path):
    proc = run_script("create_datasets.sh", "--datasets", "webnlg,dart", "--splits", "test", "--vocab", vocab_dir,
                      "--data", tmp_path, env={"LORANLG_DATA_URL": "http://127.0.0.1:9"})
    assert proc.returncode != 0
    for url in ("http://127.0.0.1:9/data/webnlg_challenge_2017/test.json",
                "http://127.0.0.1:9/data/dart/dart-v1.1.1-full-test.json"):
        assert url in proc.stderr
    assert "not built: webnlg/test dart/test" in proc.stderr


# ------------------------------------------------------------------ the whole chain, reduced

CONTEXTS = 4


def run_demo(task, shared_dir, tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("no java: METEOR needs a Java runtime")
    work = tmp_path_factory.mktemp(f"demo_{task}") / task
    env = dict(VOCAB_DIR=str(shared_dir / "vocab"), LORANLG_SHARED=str(shared_dir), WORK_DIR=str(work),
               DEMO_CARD="gpt2.tiny", DEMO_STEPS="4", DEMO_CONTEXTS=str(CONTEXTS), DEMO_HOLDOUT="2",
               TRAIN_ARGS="--train_batch_size 4", BEAM_ARGS="--eval_len 16")
    done = run_script(f"run_{task}.sh", "--demo", env=env, cwd=work.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, env, done


@pytest.fixture(scope="module")
def webnlg_demo(shared_dir, tmp_path_factory):
    return run_demo("webnlg", shared_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def dart_demo(shared_dir, tmp_path_factory):
    return run_demo("dart", shared_dir, tmp_path_factory)


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


@slow
def test_webnlg_demo_scores_unseen_seen_and_all(webnlg_demo):
    work, _, done = webnlg_demo
    for name in ("model.4.pt", "train.done", "predict.4.b10p08.jsonl", "scores.txt", "results.md", "losses.png"):
        assert (work / name).is_file() and (work / name).stat().st_size > 0, name
    test = read_jsonl(work / "data/test_formatted.jsonl")
    sources = {subset: list(dict.fromkeys(ex["context"] for ex in test if subset == "all" or
                                          ex["cate"] == (subset == "seen")))
               for subset in ("unseen", "seen", "all")}
    assert len(sources["all"]) == CONTEXTS and len(sources["unseen"]) == len(sources["seen"]) == CONTEXTS // 2
    suffix = {"all": "webnlg", "seen": "webnlg_seen", "unseen": "webnlg_unseen"}
    hypotheses = {}
    for subset, names in sources.items():
        refs = work / f"references_{suffix[subset]}"
        assert sorted(p.name for p in refs.iterdir()) == [f"reference{k}" for k in range(6)]
        # reference0 is each source's first reference, lower-cased and tokenised as the original decodes.
        firsts = [next(ex["completion"] for ex in test if ex["context"] == name) for name in names]
        assert lines(refs / "reference0") == [" ".join(" ".join(re.split(r"(\W)", text.lower())).split())
                                              for text in firsts]
        hypotheses[subset] = lines(work / f"hypothesis_{suffix[subset]}")
        assert len(hypotheses[subset]) == len(names)
        scores = json.loads((work / f"scores_{subset}.json").read_text())
        assert 0 <= scores["bleu"] <= 100 and 0 <= scores["meteor"] <= 1 and scores["ter"] >= 0
    # The all subset's hypotheses are the seen and unseen ones, in the test file's order.
    assert sorted(hypotheses["all"]) == sorted(hypotheses["seen"] + hypotheses["unseen"])
    results = (work / "results.md").read_text()
    assert results in done.stdout
    assert "| BLEU U | BLEU S | BLEU A |" in results and "Fine-Tune (ref.)" in results
    assert "46.7 ± .4" in results and "they are not a reproduction of the paper" in results
    all_scores = json.loads((work / "scores_all.json").read_text())
    assert f"| all | {all_scores['bleu']:.2f} | {all_scores['meteor']:.4f} | {all_scores['ter']:.4f} |" in results


@slow
def test_dart_demo_scores_all(dart_demo):
    work, _, done = dart_demo
    scores = json.loads((work / "scores_all.json").read_text())
    results = (work / "results.md").read_text()
    assert "## DART test set" in results and f"**{scores['bleu']:.2f}**" in results and "47.1 ± .2" in results
    test = read_jsonl(work / "data/test_formatted.jsonl")
    assert len(lines(work / "hypothesis_dart")) == len(dict.fromkeys(ex["context"] for ex in test))
    assert not (work / "references_dart_seen").exists()
    assert f"dart all: BLEU {scores['bleu']:.2f}" in (work / "scores.txt").read_text()


@slow
def test_rerun_skips_every_stage(dart_demo):
    work, env, _ = dart_demo
    assert_rerun_skips_every_stage("run_dart.sh", work, env)
