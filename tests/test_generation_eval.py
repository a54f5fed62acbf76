"""eval/GenerationEval/eval.py: GenerationEval's scores on its own example, hand-computed small cases, and clear
errors on bad input."""

import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from loranlg import generation_eval, mteval, nltk_tokenize, ter

SCRIPT = REPO / "eval" / "GenerationEval" / "eval.py"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def write(path, text):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def write_case(directory, hypothesis, *references):
    """directory/hypothesis and directory/reference0.. ; returns the arguments -R PREFIX -H FILE -nr N."""
    write(directory / "hypothesis", hypothesis)
    for k, text in enumerate(references):
        write(directory / f"reference{k}", text)
    return ["-R", directory / "reference", "-H", directory / "hypothesis", "-nr", len(references)]


def assert_clear_error(result, *expected):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0]


# ------------------------------------------------------------------------------ GenerationEval's example

def _example(shared_dir):
    expected = json.loads((shared_dir / "eval" / "generationeval_scores.json").read_text())
    directory = shared_dir / "eval" / "generationeval_en"
    return expected, directory / "references" / "reference", directory / "hypothesis"


def test_bleu_of_generationeval_example(shared_dir):
    expected, refs, hyp = _example(shared_dir)
    hypotheses, references = generation_eval.load(str(refs), str(hyp), 4)
    assert len(hypotheses) == 1862
    assert 100 * generation_eval.multi_bleu_detok(hypotheses, references) == pytest.approx(expected["bleu"], abs=0.01)


@pytest.mark.slow
@needs_java
def test_scores_of_generationeval_example(shared_dir, tmp_path):
    expected, refs, hyp = _example(shared_dir)
    result = run("-R", refs, "-H", hyp, "-nr", 4, "-m", "bleu,meteor,ter", "--json", cwd=tmp_path)  # any directory
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert list(scores) == ["bleu", "bleu_nltk", "meteor", "ter"]
    assert scores["bleu"] == pytest.approx(expected["bleu"], abs=0.01)
    assert scores["meteor"] == pytest.approx(expected["meteor"], abs=1e-4)
    assert scores["ter"] == pytest.approx(expected["ter"], abs=1e-4)
    assert 0 < scores["bleu_nltk"] < 1


# --------------------------------------------------------------------------------------------- BLEU

def test_bleu_is_case_sensitive():
    # The cat sat on the mat .  vs  the cat sat on the mat .  ('The' does not match 'the')
    # 1-grams 6/7, 2-grams 5/6, 3-grams 4/5, 4-grams 3/4; same length, no brevity penalty
    score = generation_eval.multi_bleu_detok(["The cat sat on the mat."], [["the cat sat on the mat."]])
    assert score == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    # the E2E BLEU lowercases, and stays as it was
    assert mteval.bleu(["The cat sat on the mat."], [["the cat sat on the mat."]]) == pytest.approx(1.0)


def test_bleu_tokenises_punctuation_as_mteval():
    assert generation_eval.detok_words("Hello, world! It's 3.5 km-long (1,000 m) &amp; more.") == \
        ["Hello", ",", "world", "!", "It's", "3.5", "km-long", "(", "1,000", "m", ")", "&", "more", "."]
    score = generation_eval.multi_bleu_detok(["Hello, world! It's 3.5 km-long."],
                                             [["Hello , world ! It's 3.5 km-long ."]])
    assert score == pytest.approx(1.0)


def test_bleu_splits_words_at_ascii_whitespace_only():
    # the Perl script reads bytes: a no-break space is part of a word, a tab or a carriage return is not
    assert generation_eval.detok_words("a\u00a0b\tc\r") == ["a\u00a0b", "c"]


def test_empty_references_count_as_length_zero():
    # 4 output words; references of 0 and 10 words: 0 is the closest -> r = 0, no brevity penalty
    assert generation_eval.multi_bleu_detok(["a b c d"], [["", "a b c d e f g h i j"]]) == pytest.approx(1.0)
    # 0 and 8 are equally near: the shorter counts
    assert generation_eval.multi_bleu_detok(["a b c d"], [["a b c d e f g h", ""]]) == pytest.approx(1.0)
    # without the empty reference the penalty is exp(1 - 8/4)
    assert generation_eval.multi_bleu_detok(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(-1))


def test_bleu_nltk_smoothing_and_segments_without_references():
    # a b c x vs a b c d: 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1 -> method 3 gives 1/(2 * 1)
    score = generation_eval.bleu_nltk(["a b c x"], [["a b c d"]])
    assert score == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25)
    # a segment whose references are all empty is left out
    assert generation_eval.bleu_nltk(["a b c d", "x y"], [["a b c d", ""], ["", " "]]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- TER

def test_ter_of_a_shift_and_a_substitution():
    # shift 'on the mat' to the end (1), then dog -> cat (1): 2 edits over 6 reference words
    assert ter.ter("on the mat the dog sat".split(), "the cat sat on the mat".split()) == pytest.approx(2 / 6)
    # one block moved: 1 edit over 6 words (the plain edit distance would be 6)
    assert ter.ter("d e f a b c".split(), "a b c d e f".split()) == pytest.approx(1 / 6)
    # Snover et al.'s example: shift 'THIS WEEK', THE -> SAUDI, SAUDIS -> ARABIA, insert AMERICAN: 4 / 13
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times"
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times"
    assert ter.ter(hyp.split(), ref.split()) == pytest.approx(4 / 13)


def test_fast_edit_distance_is_pyters():
    import pyter

    rng = random.Random(0)
    for _ in range(2000):
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        ref = [rng.choice("abcd") for _ in range(rng.randint(1, 70))]
        assert ter.ReferenceDistance(ref)(hyp) == pyter.edit_distance(hyp, ref)
        if len(ref) <= 12:
            assert ter.ter(hyp, ref) == pyter.ter(hyp, ref)


def test_segment_ter_takes_the_best_reference_and_scores_empty_ones_one():
    assert generation_eval.segment_ter("a b", ["", "a b", "x"]) == 0.0
    assert generation_eval.segment_ter("a b", ["", ""]) == 1.0
    assert generation_eval.ter_score(["a b", "a b"], [["a x", ""], ["", ""]]) == pytest.approx((0.5 + 1.0) / 2)


# ------------------------------------------------------------------------------------- tokenisation

@pytest.mark.parametrize("text, words", [
    # NLTK 3.5 keeps the en dash inside a word and splits a possessive and the quotes
    ('Adolfo Suárez Madrid–Barajas Airport\'s runway is "18L/36R".',
     ["Adolfo", "Suárez", "Madrid–Barajas", "Airport", "'s", "runway", "is", "``", "18L/36R", "''", "."]),
    # NLTK 3.5 leaves a single quote attached to the word it opens
    ("the 'Technical Campus' status", ["the", "'Technical", "Campus", "'", "status"]),
    # Punkt splits the sentences (so 'home.' loses its period) and keeps the abbreviation 'Mr.'
    ("Mr. Smith went home. He was tired.", ["Mr.", "Smith", "went", "home", ".", "He", "was", "tired", "."]),
    ("It costs $3.88 (roughly 3,36 euros); don't wait... OK?",
     ["It", "costs", "$", "3.88", "(", "roughly", "3,36", "euros", ")", ";", "do", "n't", "wait", "...", "OK", "?"]),
    ("piece 'n bacon -- cannot", ["piece", "'", "n", "bacon", "--", "can", "not"]),
    ("", []),
    ("   ", []),
])
def test_word_tokenize_as_nltk_3_5(text, words):
    assert nltk_tokenize.word_tokenize(text) == words


# -------------------------------------------------------------------------------------- files, output

def test_a_final_newline_ends_the_last_line(tmp_path):
    assert generation_eval.read_segments(write(tmp_path / "a", "x\ny")) == ["x", "y"]
    assert generation_eval.read_segments(write(tmp_path / "b", "x\ny\n")) == ["x", "y"]
    assert generation_eval.read_segments(write(tmp_path / "c", "x\n\n")) == ["x", ""]  # then an empty line
    assert generation_eval.read_segments(write(tmp_path / "d", "x\r\ny\u2028z")) == ["x\r", "y\u2028z"]  # '\n' only


def test_a_reference_file_one_line_short_ending_with_a_newline_has_an_empty_last_line(tmp_path):
    # GenerationEval's README: reference1 of three segments, "the third line is empty", is "a-ref2\nb-ref2\n"
    write(tmp_path / "hypothesis", "a\nb\nc")
    write(tmp_path / "reference0", "a-ref1\nb-ref1\nc-ref1")
    write(tmp_path / "reference1", "a-ref2\nb-ref2\n")
    hypotheses, references = generation_eval.load(str(tmp_path / "reference"), str(tmp_path / "hypothesis"), 2)
    assert hypotheses == ["a", "b", "c"]
    assert references == [["a-ref1", "a-ref2"], ["b-ref1", "b-ref2"], ["c-ref1", ""]]


@pytest.mark.slow
@needs_java
def test_same_scores_with_and_without_a_final_newline(tmp_path):
    hyp = "The cat sat on the mat.\nA dog barked at the moon tonight."
    refs = ["The cat is sitting on the mat.\nA dog was barking at the moon.", "A cat sat on a mat.\n"]
    scores = []
    for name, end in (("plain", ""), ("newline", "\n")):
        directory = tmp_path / name
        directory.mkdir()
        result = run(*write_case(directory, hyp + end, *(ref + end for ref in refs)), "--json")
        assert result.returncode == 0, result.stderr
        scores.append(json.loads(result.stdout))
    assert scores[0] == scores[1]
    assert set(scores[0]) == {"bleu", "bleu_nltk", "meteor", "ter"} and 0 < scores[0]["meteor"] < 1


@pytest.mark.slow
@needs_java
def test_empty_hypotheses_score_zero_and_a_final_empty_one_counts(tmp_path):
    """A model that says nothing: BLEU 0, METEOR 0, TER 1 (every reference word inserted); an empty last
    hypothesis is a segment of its own, not a missing line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(*write_case(empty, "\n\n", "a cat sat .\nthe dog ran .\n"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"bleu": 0.0, "bleu_nltk": 0.0, "meteor": 0.0, "ter": 1.0}
    last = tmp_path / "last"
    last.mkdir()
    result = run(*write_case(last, "a cat sat .\n\n", "a cat sat .\nthe dog ran .\n"), "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["ter"] == pytest.approx(0.5) and 0 < scores["meteor"] < 1


def test_table_as_generationeval_prints_it():
    scores = {"bleu": 51.31904, "bleu_nltk": 0.38758, "meteor": 0.32327, "ter": 0.49545}
    assert generation_eval.format_table(scores) == (
        "  BLEU    BLEU NLTK    METEOR    TER\n"
        "------  -----------  --------  -----\n"
        " 51.32         0.39      0.32    0.5")
    assert generation_eval.format_table({"bleu": 100.0, "bleu_nltk": 1.0, "ter": 0.0}) == (
        "  BLEU    BLEU NLTK    TER\n"
        "------  -----------  -----\n"
        "   100            1      0")
    assert generation_eval.format_table({"ter": 1.23456}) == "  TER\n-----\n 1.23"


def test_command_prints_the_table_of_the_metrics_asked(tmp_path):
    args = write_case(tmp_path, "The cat sat on the mat.\n", "The cat sat on the mat.\n", "\n")
    result = run(*args, "-m", "BLEU,ter", "-lng", "en")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("  BLEU    BLEU NLTK    TER\n"
                             "------  -----------  -----\n"
                             "   100            1      0\n")


def test_one_reference_may_name_the_file_itself(tmp_path):
    write(tmp_path / "refs.txt", "a b c d\n")
    write(tmp_path / "hyp.txt", "a b c d\n")
    result = run("-R", tmp_path / "refs.txt", "-H", tmp_path / "hyp.txt", "-nr", 1, "-m", "bleu", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bleu"] == pytest.approx(100.0)


def test_help_explains_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("-R", "-H", "-nr", "-m", "-lng", "--json", "reference0", "final newline", "issue 138"):
        assert flag in result.stdout


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("hyp, refs, nr, expected", [
    ("a\nb\n", ["a\nb\n", "a"], 2, ["reference1: 1 lines, but the hypothesis", "has 2"]),
    ("a\nb\nc\n", ["a\n"], 1, ["reference0: 1 lines, but the hypothesis", "has 3"]),
    ("a\nb\n", ["a\nb\nc\n"], 1, ["reference0: 3 lines, but the hypothesis", "has 2"]),
    ("a\n", ["a\n", "b\n", "c\n", "d\n"], 6, ["reference4: file not found: -nr 6 needs the 6 files",
                                              "of which 4 exist"]),
    ("a\n", ["a\n", b"\xff\xfe\n"], 2, ["reference1:1: not UTF-8 text"]),
    (b"a\nb \xe9\n", ["a\nb\n"], 1, ["hypothesis:2: not UTF-8 text"]),
    ("", ["a\n"], 1, ["hypothesis: the file is empty"]),
])
def test_bad_files_are_a_clear_error(tmp_path, hyp, refs, nr, expected):
    args = write_case(tmp_path, hyp, *refs)
    args[-1] = nr
    assert_clear_error(run(*args, "-m", "bleu,ter"), *expected)


def test_a_missing_reference_in_the_middle_is_named(tmp_path):
    args = write_case(tmp_path, "a\n", "a\n", "a\n", "a\n")
    os.remove(tmp_path / "reference1")
    assert_clear_error(run(*args), "reference1: file not found", "-R is a path prefix")


@pytest.mark.parametrize("flags, expected", [
    (["-m", "bleu,chrf++"], ["chrf++: not implemented"]),
    (["-m", "bert"], ["bert: not implemented"]),
    (["-m", "bleurt"], ["bleurt: not implemented"]),
    (["-m", "rouge"], ["rouge: unknown metric"]),
    (["-lng", "ru"], ["-lng ru: only English"]),
    (["-nr", "0"], ["-nr/--num_refs: must be a whole number >= 1"]),
])
def test_unsupported_options_are_a_clear_error(tmp_path, flags, expected):
    args = write_case(tmp_path, "a\n", "a\n")
    assert_clear_error(run(*args, *flags), *expected)


def test_missing_java_is_a_clear_error(tmp_path):
    args = write_case(tmp_path, "a b c\n", "a b c\n")
    env = dict(os.environ, PATH=str(tmp_path))  # a PATH without java
    assert_clear_error(run(*args, "-m", "bleu,meteor,ter", env=env), "`java` was not found", "Java runtime")
    result = run(*args, "-m", "bleu,ter", env=env)  # the other metrics need no Java
    assert result.returncode == 0, result.stderr


def test_a_failing_java_is_reported_with_its_message(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write(fake_bin / "java", "#!/bin/sh\necho 'Could not reserve enough space for object heap' >&2\nexit 1\n")
    (fake_bin / "java").chmod(0o755)
    args = write_case(tmp_path, "a b c\n", "a b c\n")
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    assert_clear_error(run(*args, env=env), "METEOR failed (java exit status 1)", "Could not reserve")
