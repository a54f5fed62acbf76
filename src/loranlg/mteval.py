"""Corpus BLEU-4 and NIST-5 as NIST's mteval-v13a defines them, the way the E2E challenge script uses them.

Written from the metric definitions (Papineni et al. 2002; Doddington 2002) and mteval-v13a's rules:

- Normalisation: mteval-v13a's western-language tokenisation (SGML entities, punctuation split off, '.' and
  ',' kept inside numbers, '-' split after a digit), case-insensitive: the E2E script lowercases.
- BLEU: clipped n-gram matches (a hypothesis n-gram counts at most as often as in the reference that has it
  most), summed over the corpus for n = 1..4; geometric mean of the four precisions; brevity penalty
  exp(1 - r/c) when c < r, c = hypothesis words, r = sum of the reference lengths closest to each
  hypothesis (ties: the shorter). No smoothing, as the E2E python MT-Eval: an order without any match
  gives BLEU 0, and so does a corpus of empty hypotheses.
- NIST: information weight info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)), counted over all
  references of the corpus (count of the empty prefix = all reference words); score = sum over
  n = 1..5 of (information of the clipped matches) / (hypothesis n-grams), times the length penalty
  exp(-beta * log(min(1, c / r))^2) with beta chosen so that a ratio of 1.5 scores 0.5 (mteval's
  constants), r = the average reference length summed over segments.

Where the E2E python MT-Eval (`measure_scores.py -p`, which produced the paper's numbers) and the Perl
mteval-v13a differ only through accidents of implementation, we follow the definition: an empty string
is zero words (not one empty word) and a hypothesis shorter than n has zero n-grams (never a negative
count). Those cases do not occur in real system outputs, so the official scores are unaffected.
"""

import math
import re
from collections import Counter

BLEU_ORDER = 4
NIST_ORDER = 5
# mteval-v13a: the NIST length penalty is 0.5 when the output is 2/3 of the reference length.
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2

_SGML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
# ASCII punctuation that mteval splits off everywhere: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ /
# (not the apostrophe, the hyphen, '.' or ','; the last two are handled by the digit rules below).
_PUNCTUATION = re.compile(r"([{-~\[-` -&(-+:-@/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def normalize(text, lowercase=True):
    """mteval-v13a's normalisation of one segment, as a string whose words are separated by whitespace.

    Lowercased as the E2E script does; lowercase=False keeps the case (Moses multi-bleu-detok.perl).
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _SGML_ENTITIES:
        text = text.replace(entity, char)
    text = f" {text.lower() if lowercase else text} "
    text = _PUNCTUATION.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    return _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)


def tokenize(text):
    """mteval-v13a's normalisation of one segment, lowercased; returns the list of words."""
    return normalize(text).split()


def ngram_counts(words, max_order):
    """Counter of every n-gram (as a tuple) of `words` for n = 1..max_order."""
    counts = Counter()
    for n in range(1, max_order + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start:start + n])] += 1
    return counts


def clipped_matches(hyp_counts, ref_counts_list):
    """{ngram: min(count in hypothesis, most times any one reference has it)} for ngrams that match."""
    matches = {}
    for ngram, count in hyp_counts.items():
        best = max(ref[ngram] for ref in ref_counts_list)
        if best:
            matches[ngram] = min(count, best)
    return matches


def closest_ref_length(hyp_length, ref_lengths):
    """The reference length nearest to the hypothesis length; of two equally near, the shorter."""
    return min(ref_lengths, key=lambda length: (abs(length - hyp_length), length))


def ngrams_in(length, n):
    return max(0, length - n + 1)


class _Segment:
    """One hypothesis and its references, tokenised and counted once for both metrics."""

    def __init__(self, hypothesis, references):
        if not references:
            raise ValueError("every hypothesis needs at least one reference")
        self.hyp = tokenize(hypothesis)
        self.refs = [tokenize(ref) for ref in references]
        self.ref_counts = [ngram_counts(ref, NIST_ORDER) for ref in self.refs]
        self.matches = clipped_matches(ngram_counts(self.hyp, NIST_ORDER), self.ref_counts)


def _segments(hypotheses, references):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    return [_Segment(hyp, refs) for hyp, refs in zip(hypotheses, references)]


def bleu_from_segments(segments):
    matches = [0] * (BLEU_ORDER + 1)
    totals = [0] * (BLEU_ORDER + 1)
    ref_length = 0
    for seg in segments:
        for ngram, count in seg.matches.items():
            if len(ngram) <= BLEU_ORDER:
                matches[len(ngram)] += count
        for n in range(1, BLEU_ORDER + 1):
            totals[n] += ngrams_in(len(seg.hyp), n)
        ref_length += closest_ref_length(len(seg.hyp), [len(ref) for ref in seg.refs])
    hyp_length = totals[1]
    if hyp_length == 0 or min(matches[1:]) == 0:
        return 0.0
    log_precision = sum(math.log(matches[n] / totals[n]) for n in range(1, BLEU_ORDER + 1)) / BLEU_ORDER
    log_brevity = min(0.0, 1.0 - ref_length / hyp_length)
    return math.exp(log_precision + log_brevity)


def information_weights(segments):
    """info(ngram) = log2(count(prefix) / count(ngram)) over every reference of the corpus."""
    counts = Counter()
    total_words = 0
    for seg in segments:
        for ref, ref_counts in zip(seg.refs, seg.ref_counts):
            total_words += len(ref)
            counts.update(ref_counts)
    counts[()] = total_words
    return {ngram: math.log2(counts[ngram[:-1]] / count) for ngram, count in counts.items() if ngram}


def nist_length_penalty(ratio):
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def nist_from_segments(segments):
    info = information_weights(segments)
    gained = [0.0] * (NIST_ORDER + 1)
    totals = [0] * (NIST_ORDER + 1)
    ref_length = 0.0
    for seg in segments:
        for ngram, count in seg.matches.items():
            gained[len(ngram)] += info[ngram] * count
        for n in range(1, NIST_ORDER + 1):
            totals[n] += ngrams_in(len(seg.hyp), n)
        ref_length += sum(len(ref) for ref in seg.refs) / len(seg.refs)
    score = sum(gained[n] / max(totals[n], 1) for n in range(1, NIST_ORDER + 1))
    ratio = totals[1] / ref_length if ref_length else 0.0
    return score * nist_length_penalty(ratio)


def bleu(hypotheses, references):
    """Corpus BLEU-4 (a fraction) of hypotheses[i] against the list of strings references[i]."""
    return bleu_from_segments(_segments(hypotheses, references))


def nist(hypotheses, references):
    """Corpus NIST-5 of hypotheses[i] against the list of strings references[i]."""
    return nist_from_segments(_segments(hypotheses, references))


def bleu_and_nist(hypotheses, references):
    """Both scores, tokenising and counting the corpus once: {'BLEU': ..., 'NIST': ...}."""
    segments = _segments(hypotheses, references)
    return {"BLEU": bleu_from_segments(segments), "NIST": nist_from_segments(segments)}
