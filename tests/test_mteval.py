"""BLEU and NIST against values computed by hand here, and against the official E2E script's scores."""

import json
import math

import pytest

from loranlg import mteval


def test_tokenize_follows_mteval_v13a_rules():
    assert mteval.tokenize("The Eagle's price, 3.5 km-long (CHEAP)!") == \
        ["the", "eagle's", "price", ",", "3.5", "km-long", "(", "cheap", ")", "!"]
    assert mteval.tokenize("1,000 a,b 1-2 end.") == ["1,000", "a", ",", "b", "1", "-", "2", "end", "."]
    assert mteval.tokenize("fish &amp; chips &quot;x&quot; £20") == ["fish", "&", "chips", '"', "x", '"', "£20"]
    assert mteval.tokenize("") == []
    assert mteval.tokenize("  \n ") == []


def test_case_and_punctuation_do_not_matter():
    assert mteval.bleu(["The cat, sat on the MAT."], [["the cat , sat on the mat ."]]) == pytest.approx(1.0)


def test_clipping_counts_an_ngram_at_most_as_often_as_in_a_reference():
    # unigrams: 'a' twice in the output, once in the reference -> 5/6; bigrams 4/5; trigrams 3/4; 4-grams 2/3
    score = mteval.bleu(["a a b c d e"], [["a b c d e f"]])
    assert score == pytest.approx((5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25)


def test_clipping_takes_the_reference_that_has_the_ngram_most():
    # 'a a' matches twice against the second reference; with the first alone it would be clipped to one
    hyps = ["a a x y", "p q r s"]
    both = mteval.bleu(hyps, [["a b x y", "a a c"], ["p q r s"]])
    first_only = mteval.bleu(hyps, [["a b x y"], ["p q r s"]])
    # both: unigrams 8/8, bigrams (a a, x y, p q, q r, r s) 5/6, trigrams 2/4, 4-grams 1/2
    # lengths: 8 output words; nearest references 4 + 4 -> no brevity penalty
    assert both == pytest.approx((1 * 5 / 6 * 2 / 4 * 1 / 2) ** 0.25)
    assert first_only < both


def test_brevity_penalty():
    assert mteval.bleu(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(1 - 8 / 4))


def test_brevity_uses_the_closest_reference_length_and_the_shorter_of_a_tie():
    # output of 5 words; references of 4 and 6 words are equally near: the shorter (4) counts -> no penalty
    assert mteval.bleu(["a b c d e"], [["a b c d", "a b c d e x"]]) == pytest.approx(1.0)
    # output of 8 words; references of 3, 9 and 12 words: 9 is the nearest -> penalty exp(1 - 9/8)
    score = mteval.bleu(["a b c d e f g h"], [["a b c", "a b c d e f g h i", "a b c d e f g h i j k l"]])
    assert score == pytest.approx(math.exp(1 - 9 / 8))


def test_no_match_gives_zero():
    assert mteval.bleu(["w x y z"], [["a b c d"]]) == 0.0


def test_an_empty_output_counts_zero_words():
    assert mteval.bleu([""], [["a b"]]) == 0.0
    # the empty output adds no n-grams and the nearest reference length (2) to r: exp(1 - (4 + 2) / 4)
    assert mteval.bleu(["a b c d", ""], [["a b c d"], ["e f", "e f g"]]) == pytest.approx(math.exp(1 - 6 / 4))


def test_nist_information_is_counted_over_all_references_of_the_corpus():
    # all references: a b | a c | b  -> 5 words; a:2 b:2 c:1; 'a b':1 'a c':1
    # info(a) = info(b) = log2(5/2); info('a b') = log2(count(a) / count('a b')) = 1
    # matches: segment 1 'a', 'b', 'a b'; segment 2 none. 3 output unigrams, 1 output bigram.
    # length: 3 output words, average reference lengths 2 + 1 = 3 -> no penalty
    score = mteval.nist(["a b", "a"], [["a b", "a c"], ["b"]])
    assert score == pytest.approx(2 * math.log2(2.5) / 3 + 1)


def test_nist_length_penalty_against_the_average_reference_length():
    # references of 4 and 2 words: average 3; the output has 2 words: ratio 2/3 -> the penalty is 0.5
    # words a:2 b:2 c:1 d:1 (6); info(a) = info(b) = log2 3; info('a b') = log2(2/2) = 0
    score = mteval.nist(["a b"], [["a b c d", "a b"]])
    assert score == pytest.approx(0.5 * math.log2(3))


def test_nist_of_empty_outputs_is_zero():
    assert mteval.nist(["", ""], [["a b"], ["c"]]) == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        mteval.bleu(["a", "b"], [["a"]])


def _read_groups(path):
    groups, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


@pytest.mark.parametrize("case", [0, 1])
def test_official_e2e_scores(shared_dir, case):
    official = json.loads((shared_dir / "eval" / "official_scores.json").read_text())["cases"][case]
    references = _read_groups(shared_dir / "eval" / official["references"])
    outputs = (shared_dir / "eval" / official["system_output"]).read_text(encoding="utf-8").splitlines()
    scores = mteval.bleu_and_nist([line.strip() for line in outputs], references)
    assert scores["BLEU"] == pytest.approx(official["BLEU"], abs=1e-4)
    assert scores["NIST"] == pytest.approx(official["NIST"], abs=1e-3)
