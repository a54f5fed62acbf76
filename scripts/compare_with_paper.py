#!/usr/bin/env python3
"""Our scores beside the paper's rows for the same model, as a Markdown table.

  E2E (Table 3, five metrics):
    python scripts/compare_with_paper.py --scores WORK_DIR/scores.json --model md --output WORK_DIR/results.md
  DART / WebNLG (the repository README's BLEU; WebNLG on the unseen, seen and all test categories):
    python scripts/compare_with_paper.py --task dart --scores all=WORK_DIR/scores_all.json --model md --output ...
    python scripts/compare_with_paper.py --task webnlg --scores unseen=U.json --scores seen=S.json \\
        --scores all=A.json --model md --output WORK_DIR/results.md
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

from loranlg.errors import InputError, run_cli  # noqa: E402
from loranlg.paper_results import E2E_ROWS, GENERATION_SUBSETS  # noqa: E402
from loranlg.report import TASKS, read_task_scores, write_comparison  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="e2e", choices=TASKS,
                        help="e2e (Table 3), dart or webnlg (the README's BLEU rows) (default: e2e)")
    parser.add_argument("--scores", required=True, action="append",
                        help="e2e: the output of eval/e2e/measure_scores.py (its --json object or its SCORES: "
                             "block); dart / webnlg: SUBSET=FILE, FILE the output of eval/GenerationEval/eval.py "
                             "--json on that test subset, once per subset (dart: all; webnlg: unseen, seen, all)")
    parser.add_argument("--model", required=True, choices=sorted(E2E_ROWS),
                        help="whose paper rows to show: md (GPT-2 M) or lg (GPT-2 L)")
    parser.add_argument("--method", default="LoRA",
                        help="the paper row our scores are marked against (inside / above / below its interval); "
                             "default LoRA (FT: the full fine-tuning row of any task)")
    parser.add_argument("--output", required=True, help="where to write the Markdown table (e.g. WORK_DIR/results.md)")
    parser.add_argument("--note", default=None, help="a line added under the table (e.g. what was run)")
    parser.add_argument("--plot", default=None,
                        help="also a PNG of the same comparison (e.g. WORK_DIR/results.png): a panel a metric or "
                             "test subset, the paper's rows as bars with their ± interval, ours beside them")
    return parser.parse_args(argv)


def scores_by_subset(task, values):
    """{subset: path} from SUBSET=FILE values; every subset of the task once."""
    subsets = GENERATION_SUBSETS[task]
    paths = {}
    for value in values:
        subset, sep, path = value.partition("=")
        if not sep or subset not in subsets or not path:
            raise InputError(f"--scores for {task} takes SUBSET=FILE with SUBSET one of {', '.join(subsets)}; "
                             f"got {value!r}")
        if subset in paths:
            raise InputError(f"--scores names the {subset} subset twice")
        paths[subset] = path
    return paths


def main(argv=None):
    args = parse_args(argv)
    if args.task == "e2e":
        if len(args.scores) != 1:
            raise InputError("--scores takes one file for e2e")
        scores = args.scores[0]
    else:
        scores = scores_by_subset(args.task, args.scores)
    scores = read_task_scores(args.task, scores)
    print(write_comparison(scores, args.model, args.output, args.method, args.note, task=args.task))
    if args.plot:
        from loranlg.results_plot import plot_comparison
        plot_comparison(args.task, scores, args.model, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    run_cli(main)
