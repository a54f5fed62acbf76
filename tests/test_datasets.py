"""Dataset creation: format converters, gpt2_encode and scripts/create_datasets.sh against the original's semantics.

References are computed here independently: the original converters' few lines of logic applied to the raw
files, and transformers' slow GPT2Tokenizer for the ids.
"""

import json
import shutil

import pytest

from conftest import run_script

EXPECTED_LINES = {"valid": 4672, "test": 4693}


@pytest.fixture(scope="module")
def slow(vocab_dir):
    from transformers import GPT2Tokenizer
    return GPT2Tokenizer(str(vocab_dir / "encoder.json"), str(vocab_dir / "vocab.bpe"), split_special_tokens=True)


def original_e2e_formatted(raw_path):
    """What the original format_converting_e2e.py writes, line by line."""
    out = []
    for line in raw_path.read_text(encoding="utf-8").splitlines(keepends=True):
        items = line.strip().split("||")
        out.append(json.dumps({"context": items[0], "completion": items[1].strip("\n")}) + "\n")
    return "".join(out)


def lines_of(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def built(shared_dir, vocab_dir, tmp_path_factory):
    """valid and test built by scripts/create_datasets.sh from ../shared/data, as CI does."""
    data = tmp_path_factory.mktemp("data")
    proc = run_script("create_datasets.sh", "--splits", "valid,test", "--from", shared_dir / "data",
                      "--vocab", vocab_dir, "--data", data)
    assert proc.returncode == 0, proc.stderr
    return data / "e2e"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_formatted_equals_the_original_converter(built, shared_dir, split):
    expected = original_e2e_formatted(shared_dir / "data" / "e2e" / f"{split}.txt")
    assert (built / f"{split}_formatted.jsonl").read_text(encoding="utf-8") == expected
    assert len(expected.splitlines()) == EXPECTED_LINES[split]


def test_formatted_first_line_by_hand(built):
    first = json.loads(lines_of(built / "valid_formatted.jsonl")[0])
    assert first == {"context": "name : Alimentum | area : city centre | family friendly : no",
                     "completion": "There is a place in the city centre , Alimentum , that is not family - friendly ."}


@pytest.mark.parametrize("split", ["valid", "test"])
def test_encoded_equals_the_original_pipeline(built, shared_dir, slow, split):
    raw = lines_of(shared_dir / "data" / "e2e" / f"{split}.txt")
    encoded = lines_of(built / f"{split}.jsonl")
    assert len(encoded) == len(raw) == EXPECTED_LINES[split]
    for raw_line, line in zip(raw, encoded):
        mr, text = raw_line.strip().split("||")[:2]
        expected = {"context": slow.encode(mr) + [50256], "completion": slow.encode(" " + text) + [50256]}
        assert line == json.dumps(expected)


def test_encoded_valid_by_hand_and_spec_statistics(built):
    examples = [json.loads(line) for line in lines_of(built / "valid.jsonl")]
    first = examples[0]["context"]
    assert first[:5] == [3672, 1058, 978, 3681, 388] and first[-1] == 50256
    assert all(ex["completion"][-1] == 50256 for ex in examples)
    lengths = [len(ex["context"]) + len(ex["completion"]) for ex in examples]
    assert round(sum(lengths) / len(lengths)) == 59 and max(lengths) == 125  # SPEC 2


def test_encode_without_flags_adds_nothing(built, vocab_dir, tmp_path, slow):
    out = tmp_path / "plain.jsonl"
    proc = run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", built / "valid_formatted.jsonl",
                      "--output", out)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(lines_of(out)[0])
    mr = "name : Alimentum | area : city centre | family friendly : no"
    assert first["context"] == slow.encode(mr)
    assert first["completion"] == slow.encode(" There is a place in the city centre , Alimentum , that is not "
                                              "family - friendly .")


def test_encode_drops_extra_keys_and_keeps_unicode(vocab_dir, tmp_path, slow):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"context": "Zürich : price : £20", "completion": "Caf\u00e9 🍕", "cate": True}) + "\n")
    out = tmp_path / "out.jsonl"
    assert run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", src, "--output", out,
                      "--add_eos").returncode == 0
    assert json.loads(out.read_text()) == {"context": slow.encode("Zürich : price : £20"),
                                           "completion": slow.encode(" Café 🍕") + [50256]}


def test_create_datasets_splits_only_builds_those(built):
    assert sorted(p.name for p in built.iterdir()) == [
        "test.jsonl", "test.txt", "test_formatted.jsonl", "valid.jsonl", "valid.txt", "valid_formatted.jsonl"]


def test_create_datasets_keeps_existing_raw_files(shared_dir, vocab_dir, tmp_path):
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    shutil.copy(shared_dir / "data" / "e2e" / "valid.txt", e2e / "valid.txt")
    proc = run_script("create_datasets.sh", "--splits", "valid", "--vocab", vocab_dir, "--data", tmp_path,
                      env={"LORANLG_DATA_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    assert len(lines_of(e2e / "valid.jsonl")) == 4672


def test_create_datasets_missing_split_offline(shared_dir, vocab_dir, tmp_path):
    proc = run_script("create_datasets.sh", "--splits", "train,valid", "--from", shared_dir / "data",
                      "--vocab", vocab_dir, "--data", tmp_path, env={"LORANLG_DATA_URL": "http://127.0.0.1:9"})
    assert proc.returncode != 0
    assert "train.txt" in proc.stderr and "--from" in proc.stderr and "http://127.0.0.1:9/data/e2e/train.txt" in proc.stderr
    assert not (tmp_path / "e2e" / "train.txt").exists()
    assert not (tmp_path / "e2e" / "train.jsonl").exists()
    assert (tmp_path / "e2e" / "valid.jsonl").exists()  # the splits that can be had are still built


def test_create_datasets_rejects_a_short_source_file(shared_dir, vocab_dir, tmp_path):
    source = tmp_path / "src" / "e2e"
    source.mkdir(parents=True)
    source.joinpath("valid.txt").write_text("".join(
        (shared_dir / "data" / "e2e" / "valid.txt").read_text(encoding="utf-8").splitlines(True)[:100]))
    proc = run_script("create_datasets.sh", "--splits", "valid", "--from", tmp_path / "src", "--vocab", vocab_dir,
                      "--data", tmp_path / "data", env={"LORANLG_DATA_URL": "http://127.0.0.1:9"})
    assert proc.returncode != 0
    assert "has 100 lines, expected 4672" in proc.stderr
    assert not (tmp_path / "data" / "e2e" / "valid.txt").exists()


def test_create_datasets_checks_a_given_checksum(shared_dir, vocab_dir, tmp_path):
    import hashlib
    valid = shared_dir / "data" / "e2e" / "valid.txt"
    right = hashlib.sha256(valid.read_bytes()).hexdigest()
    args = ("--splits", "valid", "--from", shared_dir / "data", "--vocab", vocab_dir)
    proc = run_script("create_datasets.sh", *args, "--data", tmp_path / "bad", env={"E2E_VALID_SHA256": "0" * 64})
    assert proc.returncode != 0 and "expected " + "0" * 64 in proc.stderr
    assert not (tmp_path / "bad" / "e2e" / "valid.txt").exists()
    proc = run_script("create_datasets.sh", *args, "--data", tmp_path / "good", env={"E2E_VALID_SHA256": right})
    assert proc.returncode == 0, proc.stderr


def test_create_datasets_bad_arguments(tmp_path):
    proc = run_script("create_datasets.sh", "--splits", "training")
    assert proc.returncode != 0 and "unknown split 'training'" in proc.stderr
    proc = run_script("create_datasets.sh", "--vocab")
    assert proc.returncode != 0 and "--vocab needs a value" in proc.stderr


def test_create_datasets_missing_vocabulary(shared_dir, tmp_path):
    proc = run_script("create_datasets.sh", "--splits", "valid", "--from", shared_dir / "data",
                      "--vocab", tmp_path / "novocab", "--data", tmp_path / "data",
                      env={"LORANLG_HUB_URL": "http://127.0.0.1:9"})
    assert proc.returncode != 0 and "novocab: no GPT-2 vocabulary" in proc.stderr and "encoder.json" in proc.stderr
    assert "http://127.0.0.1:9/openai-community/gpt2/resolve/main/vocab.json" in proc.stderr
    assert not (tmp_path / "data" / "e2e" / "valid.jsonl").exists()


# ------------------------------------------------------------------------------------- bad input, per command

def test_raw_line_without_separator(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("name : A||A is here .\nname : B||B is there .\nname : C without a separator\n")
    out = tmp_path / "out.jsonl"
    proc = run_script("format_converting_e2e.py", raw, out)
    assert proc.returncode == 2
    assert f"{raw}:3:" in proc.stderr and "'||'" in proc.stderr
    assert not out.exists()


def test_a_failed_conversion_leaves_an_existing_output_untouched(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("name : A||A .\n\n")
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    proc = run_script("format_converting_e2e.py", raw, out)
    assert proc.returncode == 2 and f"{raw}:2:" in proc.stderr
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "raw.txt"]  # no temporary file left


@pytest.mark.parametrize("content, line, expected", [
    ('{"context": "a", "completion": "b"}\n{"context": "a", "completion"\n', 2, "not valid JSON"),
    ('{"context": "a", "completion": "b"}\n\n', 2, "empty line"),
    ('{"context": "a"}\n', 1, "'completion'"),
    ('[1, 2]\n', 1, "expected a JSON object"),
    ('{"context": "a", "completion": 3}\n', 1, "should be a string"),
])
def test_malformed_jsonl(vocab_dir, tmp_path, content, line, expected):
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    proc = run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", src, "--output", out, "--add_bos")
    assert proc.returncode == 2
    assert f"{src}:{line}:" in proc.stderr and expected in proc.stderr
    assert not out.exists()


def test_encode_missing_input_and_vocabulary(vocab_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"context": "a", "completion": "b"}\n')
    proc = run_script("gpt2_encode.py", "--vocab", tmp_path / "none", "--input", src, "--output", tmp_path / "o")
    assert proc.returncode == 2 and f"{tmp_path / 'none'}:" in proc.stderr and "vocab.bpe" in proc.stderr
    proc = run_script("gpt2_encode.py", "--vocab", vocab_dir, "--input", tmp_path / "absent", "--output", tmp_path / "o")
    assert proc.returncode == 2 and "absent: file not found" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("script", ["format_converting_e2e.py", "gpt2_encode.py"])
def test_unwritable_output(script, vocab_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    raw = tmp_path / "raw.txt"
    raw.write_text("name : A||A is here .\n")
    formatted = tmp_path / "f.jsonl"
    formatted.write_text('{"context": "a", "completion": "b"}\n')
    out = blocker / "out.jsonl"
    args = ([raw, out] if script.startswith("format") else
            ["--vocab", vocab_dir, "--input", formatted, "--output", out])
    proc = run_script(script, *args)
    assert proc.returncode == 2
    assert "cannot write" in proc.stderr and str(blocker) in proc.stderr


def test_help_explains_every_flag():
    proc = run_script("gpt2_encode.py", "--help")
    assert proc.returncode == 0
    for flag in ("--vocab", "--input", "--output", "--add_bos", "--add_eos"):
        assert flag in proc.stdout
    proc = run_script("create_datasets.sh", "--help")
    assert proc.returncode == 0
    for flag in ("--datasets", "--splits", "--from", "--vocab", "--data", "E2E_SOURCE_DIR", "LORANLG_DATA_URL"):
        assert flag in proc.stdout


# ------------------------------------------------------------------------------------- WebNLG and DART

def test_webnlg_converter(shared_dir, tmp_path):
    source = shared_dir / "data" / "webnlg_challenge_2017" / "dev.json"
    out = tmp_path / "valid_formatted.jsonl"
    proc = run_script("format_converting_webnlg.py", source, out)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(source.read_text(encoding="utf-8"))["entries"]
    good = sum(lex["comment"] == "good" for entry in entries for lex in entry[next(iter(entry))]["lexicalisations"])
    examples = [json.loads(line) for line in lines_of(out)]
    assert len(examples) == good
    assert examples[0] == {"context": "Aarhus : leaderName : Jacob_Bundsgaard",
                           "completion": "The leader of Aarhus is Jacob Bundsgaard.", "cate": True}
    multi = next(ex for ex in examples if ex["context"].count(" | ") == 2)
    assert all(part.count(" : ") >= 2 for part in multi["context"].split(" | "))
    assert all(ex["cate"] is True for ex in examples)  # the dev split has only seen categories
    assert list(examples[0]) == ["context", "completion", "cate"]


def test_webnlg_unseen_category_and_bad_layout(tmp_path):
    data = {"entries": [{"1": {"category": "Athlete", "modifiedtripleset": [
        {"subject": "A", "property": "p", "object": "B"}, {"subject": "A", "property": "q", "object": "C"}],
        "lexicalisations": [{"comment": "good", "lex": "x"}, {"comment": "bad", "lex": "y"}]}}]}
    src = tmp_path / "w.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "w.jsonl"
    assert run_script("format_converting_webnlg.py", src, out).returncode == 0
    assert lines_of(out) == ['{"context": "A : p : B | A : q : C", "completion": "x", "cate": false}']
    data["entries"].append({"7": data["entries"][0]["1"]})
    src.write_text(json.dumps(data))
    proc = run_script("format_converting_webnlg.py", src, tmp_path / "bad.jsonl")
    assert proc.returncode == 2 and "entries[1]" in proc.stderr and "'2'" in proc.stderr
    assert not (tmp_path / "bad.jsonl").exists()


def test_dart_converter(shared_dir, tmp_path):
    source = shared_dir / "data" / "dart" / "dart-v1.1.1-full-dev.json"
    out = tmp_path / "valid_formatted.jsonl"
    assert run_script("format_converting_dart.py", source, out).returncode == 0
    data = json.loads(source.read_text(encoding="utf-8"))
    examples = [json.loads(line) for line in lines_of(out)]
    assert len(examples) == sum(len(ex["annotations"]) for ex in data)
    assert examples[0] == {"context": "Mars Hill College : joined : 1973 | Mars Hill College : location : "
                                      "Mars Hill, North Carolina",
                           "completion": "A school from Mars Hill, North Carolina, joined in 1973."}


def test_json_converters_locate_syntax_errors(tmp_path):
    src = tmp_path / "broken.json"
    src.write_text('[\n  {"tripleset": []\n')
    proc = run_script("format_converting_dart.py", src, tmp_path / "o.jsonl")
    assert proc.returncode == 2 and f"{src}:3:" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
