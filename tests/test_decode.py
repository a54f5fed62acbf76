"""gpt2_decode.py: grouping, cutting, the e2e and webnlg/dart layouts, and errors where the original skips."""

import json

import pytest

from conftest import run_script
from loranlg.decode import cut_text, post_process, standard_tokenize

EOT = 50256


@pytest.fixture(scope="module")
def oracle(vocab_dir):
    """transformers' GPT-2 tokenizer: token ids made independently of the code under test."""
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer(str(vocab_dir / "encoder.json"), str(vocab_dir / "vocab.bpe"))
    return lambda text: tok.encode(text)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def e2e_rows(shared_dir, count):
    rows = []
    with open(shared_dir / "data" / "e2e" / "test.txt", encoding="utf-8") as handle:
        for line, _ in zip(handle, range(count)):
            context, completion = line.rstrip("\n").split("||")
            rows.append({"context": context, "completion": completion})
    return rows


def decode(tmp_path, vocab_dir, samples, rows, *flags):
    sample_file = write_jsonl(tmp_path / "samples.jsonl", samples)
    input_file = write_jsonl(tmp_path / "input.jsonl", rows)
    return run_script("gpt2_decode.py", "--vocab", vocab_dir, "--sample_file", sample_file,
                      "--input_file", input_file, "--output_ref_file", tmp_path / "ref",
                      "--output_pred_file", tmp_path / "pred", *flags)


def test_e2e_layout_on_real_data(tmp_path, vocab_dir, shared_dir, oracle):
    rows = e2e_rows(shared_dir, 40)
    groups = {}
    for row in rows:
        groups.setdefault(row["context"], []).append(row["completion"].strip())
    # one prediction per line, as gpt2_beam.py writes them: generated ids ending in EOS, padded with 0
    samples = []
    for index, row in enumerate(rows):
        ids = oracle(" prediction for " + row["context"][:20]) + [EOT]
        samples.append({"id": index, "predict": ids + [0] * 5})
    result = decode(tmp_path, vocab_dir, samples, rows)
    assert result.returncode == 0, result.stderr
    expected_refs = "".join("\n".join(refs) + "\n\n" for refs in groups.values())
    assert (tmp_path / "ref").read_text(encoding="utf-8") == expected_refs
    assert (tmp_path / "pred").read_text(encoding="utf-8").splitlines() == \
        ["prediction for " + context[:20].strip() for context in groups]


def test_groups_keep_first_seen_order_and_texts_are_cut(tmp_path, vocab_dir, oracle):
    rows = [{"context": "B", "completion": " b one <|endoftext|> rest"},
            {"context": "A", "completion": " a one\n\nmore"},
            {"context": "B", "completion": "  b two  "}]
    samples = [
        {"id": 0, "predict": oracle(" Not used: the group's last line wins") + [EOT]},
        {"id": 1, "predict": oracle(" A out ") + [628] + oracle("not this") + [EOT, 0, 0]},  # "\n\n" token
        {"id": 2, "predict": oracle(" Café B.") + [EOT] + oracle(" after eos")},
    ]
    result = decode(tmp_path, vocab_dir, samples, rows)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ref").read_text(encoding="utf-8") == "b one\nb two\n\na one\n\n"
    assert (tmp_path / "pred").read_text(encoding="utf-8") == "Café B.\nA out\n"


def test_cut_text():
    assert cut_text(" a b\n\nc<|endoftext|>") == "a b"
    assert cut_text(" a\nb <|endoftext|>\n\nc") == "a\nb"
    assert cut_text("\n\nall gone") == ""


def test_post_process_lowers_then_tokenizes():
    assert standard_tokenize("The Eagle's  £20-25,ok") == "The Eagle ' s £ 20 - 25 , ok"
    assert post_process("Don't STOP-now", tokenize=True, lower=True) == "don ' t stop - now"
    assert post_process("Don't STOP", lower=True) == "don't stop"
    assert post_process("Don't  STOP") == "Don't  STOP"


def webnlg_rows():
    return [{"context": "s1", "completion": "One ref.", "cate": True},
            {"context": "u1", "completion": "U first.", "cate": False},
            {"context": "s2", "completion": "S2 a.", "cate": True},
            {"context": "u1", "completion": "U second.", "cate": False},
            {"context": "s2", "completion": "S2 b.", "cate": True},
            {"context": "s2", "completion": "S2 c.", "cate": True},
            {"context": "s2", "completion": "S2 d.", "cate": True}]


def test_webnlg_layout_and_filters(tmp_path, vocab_dir, oracle):
    rows = webnlg_rows()
    samples = [{"id": i, "predict": oracle(f" Out-{row['context']}") + [EOT]} for i, row in enumerate(rows)]
    result = decode(tmp_path, vocab_dir, samples, rows, "--ref_type", "webnlg", "--ref_num", "3",
                    "--lower", "--tokenize")
    assert result.returncode == 0, result.stderr
    columns = [(tmp_path / "ref" / f"reference{k}").read_text(encoding="utf-8") for k in range(3)]
    assert columns == ["one ref .\nu first .\ns2 a .\n",
                       "one ref .\nu second .\ns2 b .\n",   # a group of one repeats its first reference
                       "one ref .\nu first .\ns2 c .\n"]    # the fourth reference of s2 is left out
    assert not (tmp_path / "ref" / "reference3").exists()
    assert (tmp_path / "pred").read_text(encoding="utf-8") == "out - s1\nout - u1\nout - s2\n"

    for name, expected in (("seen", "out - s1\nout - s2\n"), ("unseen", "out - u1\n")):
        out = tmp_path / name
        out.mkdir()
        result = decode(out, vocab_dir, samples, rows, "--ref_type", "dart", "--ref_num", "2", "--lower",
                        "--tokenize", "--filter", name)
        assert result.returncode == 0, result.stderr
        assert (out / "pred").read_text(encoding="utf-8") == expected
        assert len((out / "ref" / "reference1").read_text(encoding="utf-8").splitlines()) == expected.count("\n")


def test_filtered_out_groups_need_no_prediction(tmp_path, vocab_dir, oracle):
    rows = webnlg_rows()
    samples = [{"id": 0, "predict": oracle(" x") + [EOT]}, {"id": 2, "predict": oracle(" y") + [EOT]}]
    result = decode(tmp_path, vocab_dir, samples, rows, "--ref_type", "webnlg", "--filter", "seen")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pred").read_text(encoding="utf-8") == "x\ny\n"


@pytest.mark.parametrize("samples, rows_flags, expected", [
    ([{"id": 0, "predict": [64]}, {"id": 7, "predict": [64]}], (), "samples.jsonl:2: prediction id 7 has no line"),
    ([{"id": -1, "predict": [64]}], (), "prediction id -1 has no line"),
    ([{"id": 0, "predict": [64]}], (), "1 of 2 groups"),
    ([{"id": 0, "predict": "abc"}, {"id": 1, "predict": [1]}], (), "samples.jsonl:1: 'predict' must be a list"),
    ([{"id": 0, "predict": [99999]}, {"id": 1, "predict": [1]}], (), "samples.jsonl:1: token id 99999"),
    ([{"id": 0, "predict": [64]}, {"id": 1, "predict": [1]}], ("--filter", "seen"), "input.jsonl:1: --filter seen needs a 'cate'"),
    ([], (), "samples.jsonl: the file is empty"),
])
def test_errors_instead_of_silent_skips(tmp_path, vocab_dir, samples, rows_flags, expected):
    rows = [{"context": "A", "completion": "a"}, {"context": "B", "completion": "b"}]
    result = decode(tmp_path, vocab_dir, samples, rows, *rows_flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ref").exists() and not (tmp_path / "pred").exists()  # nothing half-written


def test_encoded_input_file_is_refused(tmp_path, vocab_dir):
    rows = [{"context": [1, 2], "completion": [3, EOT]}]
    result = decode(tmp_path, vocab_dir, [{"id": 0, "predict": [64]}], rows)
    assert result.returncode == 2
    assert "must be strings" in result.stderr


def test_help_explains_every_flag():
    result = run_script("gpt2_decode.py", "--help")
    assert result.returncode == 0
    for flag in ("--vocab", "--sample_file", "--input_file", "--output_ref_file", "--output_pred_file",
                 "--ref_type", "--ref_num", "--tokenize", "--lower", "--filter"):
        assert flag in result.stdout
