"""eval/e2e/measure_scores.py: the official scores, the official output, and clear errors on bad input."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "eval" / "e2e" / "measure_scores.py"
TOLERANCE = {"BLEU": 1e-4, "NIST": 1e-3, "METEOR": 1e-4, "ROUGE_L": 1e-4, "CIDEr": 1e-4}


def _module():
    spec = importlib.util.spec_from_file_location("measure_scores", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measure_scores = _module()


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def _official(shared_dir, index):
    case = json.loads((shared_dir / "eval" / "official_scores.json").read_text())["cases"][index]
    return case, shared_dir / "eval" / case["references"], shared_dir / "eval" / case["system_output"]


def test_official_example_prints_the_official_block(shared_dir, tmp_path):
    case, refs, preds = _official(shared_dir, 0)
    result = run("-p", refs, preds, cwd=tmp_path)  # any working directory
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["SCORES:", "=============="]
    printed = dict(line.split(": ") for line in lines[2:])
    assert list(printed) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    for metric, text in printed.items():
        assert text == f"{case[metric]:.4f}", metric


@pytest.mark.slow
def test_official_scores_of_the_whole_validation_set(shared_dir):
    case, refs, preds = _official(shared_dir, 1)
    result = run("--json", refs, preds)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    for metric, tolerance in TOLERANCE.items():
        assert scores[metric] == pytest.approx(case[metric], abs=tolerance), metric


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_reference_groups_are_separated_by_blank_lines(tmp_path):
    refs = write(tmp_path / "refs", "a b\n  a c  \n\nd e\n\n\n")  # trailing blank lines are fine
    assert measure_scores.read_references(refs) == [["a b", "a c"], ["d e"]]


def test_one_group_ended_by_a_blank_line_is_one_instance(tmp_path):
    """The decoder's file for a single MR: its references, then the blank line (not one instance a reference)."""
    refs = write(tmp_path / "refs", "a b\na c\n\n")
    assert measure_scores.read_references(refs) == [["a b", "a c"]]


def test_a_file_without_blank_lines_is_one_reference_per_instance(tmp_path):
    refs = write(tmp_path / "refs", "a b\na c\nd e\n")
    assert measure_scores.read_references(refs) == [["a b"], ["a c"], ["d e"]]


def test_quoted_lines_are_read_as_the_official_reader_does(tmp_path):
    preds = write(tmp_path / "preds", "\"It's a pub.\"\n'x \\' y'\n\"unbalanced\n")
    assert measure_scores.read_predictions(preds) == ["It's a pub.", "x ' y", "\"unbalanced"]


def test_table_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(measure_scores, "score", lambda refs, preds: dict.fromkeys(measure_scores.METRICS, 0.5))
    write(tmp_path / "refs", "a\n\nb\n")
    write(tmp_path / "preds", "a\nb\n")
    measure_scores.main(["-t", "-H", str(tmp_path / "refs"), str(tmp_path / "preds")])
    assert capsys.readouterr().out.splitlines() == [
        "File\tBLEU\tNIST\tMETEOR\tROUGE_L\tCIDEr", f"{tmp_path / 'preds'}\t" + "\t".join(["0.5000"] * 5)]


@pytest.mark.parametrize("refs_text, preds_text, expected", [
    ("a\nb\n\nc\n\nd\n", "x\ny\n", "2 lines of system output, but the references"),
    ("a\nb\n\nc\n", "x\ny\n\n", "3 lines of system output"),
    ("", "x\n", "refs: the file is empty"),
    ("a\n\nb\n", "", "preds: the file is empty"),
    ("\n\n", "x\n", "refs:1: blank line before the first reference"),
    ("a\n\n\nb\n", "x\ny\n", "refs:3: two blank lines in a row"),
    ("a\n\nb\n", b"x\n\xff\xfe\n", "not UTF-8"),
])
def test_bad_input_is_a_clear_error(tmp_path, refs_text, preds_text, expected):
    write(tmp_path / "refs", refs_text)
    write(tmp_path / "preds", preds_text)
    result = run(tmp_path / "refs", tmp_path / "preds")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_java_is_a_clear_error(tmp_path):
    write(tmp_path / "refs", "a b c\n\nd e f\n")
    write(tmp_path / "preds", "a b c\nd e f\n")
    env = dict(os.environ, PATH=str(tmp_path))  # a PATH without java
    result = run(tmp_path / "refs", tmp_path / "preds", env=env)
    assert result.returncode == 2
    assert "java" in result.stderr and "Java runtime" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("-p", "-t", "-H", "--json", "ref_file", "sys_file"):
        assert flag in result.stdout


def run_with_fake_java(tmp_path, script):
    """Score a two-group case with `java` on PATH replaced by a shell script."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    java = fake_bin / "java"
    java.write_text("#!/bin/sh\n" + script)
    java.chmod(0o755)
    write(tmp_path / "refs", "a b c\n\nd e f\n")
    write(tmp_path / "preds", "a b c\nd e f\n")
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    return run(tmp_path / "refs", tmp_path / "preds", env=env)


def test_a_failing_java_is_reported_with_its_message(tmp_path):
    result = run_with_fake_java(tmp_path, "echo 'Could not reserve enough space for object heap' >&2\nexit 1\n")
    assert result.returncode == 2
    assert "java exit status 1" in result.stderr and "Could not reserve enough space" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_meteor_is_reported_with_its_message(tmp_path):
    real_java = shutil.which("java")
    if real_java is None:
        pytest.skip("needs java for the tokenizer")
    # runs the PTB tokenizer, fails METEOR
    result = run_with_fake_java(tmp_path, f'case "$*" in *PTBTokenizer*) exec "{real_java}" "$@";; esac\n'
                                "echo 'meteor broke' >&2\nexit 3\n")
    assert result.returncode == 2
    assert "METEOR failed (java exit status 3): meteor broke" in result.stderr
    assert "Traceback" not in result.stderr
