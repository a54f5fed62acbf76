#!/usr/bin/env python3
"""Our five E2E scores beside the paper's Table 3 rows for the same model, as a Markdown table.

  python scripts/compare_with_paper.py --scores WORK_DIR/scores.json --model md --output WORK_DIR/results.md
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

from loranlg.errors import run_cli  # noqa: E402
from loranlg.report import PAPER_ROWS, write_comparison  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", required=True,
                        help="the output of eval/e2e/measure_scores.py: its --json object or its SCORES: block")
    parser.add_argument("--model", required=True, choices=sorted(PAPER_ROWS),
                        help="whose paper rows to show: md (GPT-2 M) or lg (GPT-2 L)")
    parser.add_argument("--method", default="LoRA",
                        help="the paper row our scores are marked against (inside / above / below its interval); "
                             "default LoRA")
    parser.add_argument("--output", required=True, help="where to write the Markdown table (e.g. WORK_DIR/results.md)")
    parser.add_argument("--note", default=None, help="a line added under the table (e.g. what was run)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(write_comparison(args.scores, args.model, args.output, args.method, args.note))


if __name__ == "__main__":
    run_cli(main)
