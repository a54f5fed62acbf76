#!/usr/bin/env python3
"""WebNLG / DART scores as the WebNLG challenge's GenerationEval script computes them: BLEU, BLEU NLTK, METEOR, TER.

Same command line and table as GenerationEval's eval.py, the way the LoRA README runs it:
    python eval/GenerationEval/eval.py -R DIR/reference -H FILE -nr 6 -m bleu,meteor,ter [--json]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "src"))

from loranlg import flags, generation_eval  # noqa: E402
from loranlg.errors import InputError, run_cli  # noqa: E402

DESCRIPTION = """\
Scores a system output against several references with the metrics of the WebNLG challenge's GenerationEval
script (and its numbers): BLEU (Moses multi-bleu-detok.perl, mteval-v13a tokenisation, case-sensitive, x100),
BLEU NLTK (nltk corpus_bleu, smoothing method 3), METEOR 1.5 (needs Java) and TER (pyter3), the last three on
text tokenised by nltk.word_tokenize as NLTK 3.5 does it. Prints GenerationEval's table (METEOR, TER and
BLEU NLTK rounded to 2 decimals); --json prints full precision.

Files: FILE holds one output a line; DIR/reference0 .. DIR/reference{NR-1} hold the k-th reference of every
segment, one a line, in FILE's order, an empty line where a segment has fewer references. Every file is UTF-8
and has the same number of lines. A newline at the end of a file ends its last line; GenerationEval itself
splits at '\\n', so for it such a file has one more, empty, segment (it then reports METEOR -1, and a TER that
averages in that segment: microsoft/LoRA issue 138). The scores here are those of the same lines without the
final newline, i.e. what GenerationEval computes on files that do not end with one. (A reference file one line
short of FILE that ends with a newline is read as GenerationEval reads it: its last line is empty.)"""


def parse_args(argv):
    parser = flags.Parser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-R", "--reference", required=True, metavar="PREFIX",
                        help="path prefix of the reference files: -R DIR/reference reads DIR/reference0, "
                             "DIR/reference1, ... (with -nr 1, PREFIX may also be the reference file itself, "
                             "as in GenerationEval)")
    parser.add_argument("-H", "--hypothesis", required=True, metavar="FILE",
                        help="system output, one segment a line")
    parser.add_argument("-lng", "--language", default="en",
                        help="language of the texts (default en, the only one implemented; GenerationEval's "
                             "Russian scoring is not)")
    parser.add_argument("-nr", "--num_refs", type=flags.positive_int, default=4, metavar="NR",
                        help="number of reference files, reference0 .. reference{NR-1} (default 4, as "
                             "GenerationEval; the LoRA README passes 6)")
    parser.add_argument("-m", "--metrics", default=",".join(generation_eval.METRICS),
                        help="comma-separated metrics among bleu (prints BLEU and BLEU NLTK), meteor, ter "
                             "(default all three); GenerationEval's chrf++, bert and bleurt are not implemented "
                             "and are refused")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object at full precision instead of the table: {"bleu": x100, '
                             '"bleu_nltk": fraction, "meteor": ..., "ter": ...}, the metrics asked')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.language != "en":
        raise InputError(f"-lng {args.language}: only English (-lng en) is implemented; GenerationEval's "
                         "Russian scoring (razdel tokenizer) is not")
    metrics = generation_eval.parse_metrics(args.metrics)
    scores = generation_eval.evaluate(args.reference, args.hypothesis, args.num_refs, metrics)
    print(json.dumps(scores) if args.json else generation_eval.format_table(scores))


if __name__ == "__main__":
    run_cli(main)
