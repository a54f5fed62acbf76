#!/usr/bin/env python3
"""E2E NLG Challenge metrics: BLEU, NIST, METEOR, ROUGE-L and CIDEr of a system output against references.

Same command line and output as the challenge's official measure_scores.py:
    python eval/e2e/measure_scores.py [-p] [-t] [-H] [--json] REF_FILE PRED_FILE
"""

import ast
import concurrent.futures
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "src"))

from loranlg import coco_metrics, flags, mteval  # noqa: E402
from loranlg.errors import InputError, run_cli  # noqa: E402
from loranlg.files import read_lines  # noqa: E402

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def _unquote(line):
    """The official reader takes a line wrapped in matching quotes as a Python string literal."""
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            return line
        return str(value)
    return line


def read_stripped_lines(path):
    lines = [(number, _unquote(text.strip())) for number, text in read_lines(path)]
    if not lines:
        raise InputError("the file is empty", path)
    return lines


def read_references(path):
    """Groups of references: one a line, groups separated by one blank line (trailing blank lines are fine).

    A file without any blank line holds one reference per instance, as the official reader assumes.
    """
    groups, current, extra_blank, saw_blank = [], [], None, False
    for number, text in read_stripped_lines(path):
        saw_blank = saw_blank or not text
        if text:
            if extra_blank is not None:
                raise InputError("two blank lines in a row (an empty group of references); groups of references "
                                 "are separated by exactly one blank line", path, extra_blank)
            current.append(text)
        elif current:
            groups.append(current)
            current = []
        elif not groups:
            raise InputError("blank line before the first reference; groups of references are separated by "
                             "exactly one blank line", path, number)
        elif extra_blank is None:
            extra_blank = number
    if current:
        groups.append(current)
    if not groups:
        raise InputError("no references in the file (only blank lines)", path)
    if not saw_blank:
        groups = [[ref] for ref in groups[0]]
    return groups


def read_predictions(path):
    """One system output a line (an empty line is an empty output)."""
    return [text for _, text in read_stripped_lines(path)]


def load(ref_path, pred_path):
    references = read_references(ref_path)
    predictions = read_predictions(pred_path)
    if len(references) != len(predictions):
        raise InputError(f"{len(predictions)} lines of system output, but the references {ref_path} hold "
                         f"{len(references)} groups (references one a line, groups separated by a blank line); "
                         "the output needs one line per group, in the same order", pred_path)
    return references, predictions


def score(references, predictions):
    """All five metrics; the Java metrics run while Python computes BLEU and NIST."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        coco = pool.submit(coco_metrics.coco_scores, references, predictions)
        scores = mteval.bleu_and_nist(predictions, references)
        scores.update(coco.result())
    return {metric: scores[metric] for metric in METRICS}


def format_block(scores):
    lines = ["SCORES:", "=============="] + [f"{metric}: {scores[metric]:.4f}" for metric in METRICS]
    return "\n".join(lines)


def parse_args(argv):
    parser = flags.Parser(
        description="E2E NLG Challenge evaluation: BLEU and NIST (mteval-v13a definitions, in Python), "
                    "METEOR 1.5, ROUGE-L and CIDEr-D (MS-COCO caption code, needs Java).")
    parser.add_argument("-p", "--python", action="store_true",
                        help="use the Python implementation of MT-Eval for BLEU and NIST; accepted for "
                             "compatibility: it is the only implementation here, so it is always used")
    parser.add_argument("-t", "--table", action="store_true",
                        help="print the scores as one tab-separated line: the system file, then each metric")
    parser.add_argument("-H", "--header", action="store_true", help="with -t, print the table's header line first")
    parser.add_argument("--json", action="store_true",
                        help="print the scores as one JSON object at full precision (for machines)")
    parser.add_argument("ref_file", help="references: one a line, the references of one instance on consecutive "
                                         "lines, instances separated by a blank line (a file without blank lines "
                                         "is read as one reference per instance)")
    parser.add_argument("sys_file", help="system output: one line per instance, in the order of ref_file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    references, predictions = load(args.ref_file, args.sys_file)
    scores = score(references, predictions)
    if args.json:
        print(json.dumps(scores))
    elif args.table:
        if args.header:
            print("\t".join(("File",) + METRICS))
        print("\t".join([args.sys_file] + [f"{scores[metric]:.4f}" for metric in METRICS]))
    else:
        print(format_block(scores))


if __name__ == "__main__":
    run_cli(main)
