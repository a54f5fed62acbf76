#!/usr/bin/env python3
"""The tables (and plot) of scripts/sweep.sh: one row per cell (target set x rank) with the trainable parameters,
the validation loss and the task's scores, as the paper's rank study shows them; with several seeds a cell, each
number is the mean ± the sample standard deviation (n - 1) over the seeds whose run finished, and a run that
failed or has no scores yet is named under the table.

    python scripts/sweep_table.py --runs WORK_DIR/sweep.runs --task e2e --output WORK_DIR/sweep.md \\
        [--plot WORK_DIR/sweep.png] [--results WORK_DIR/results.md --model md]

A runs file has "R TARGETS SEED DIR" a line (SEED "-" when the sweep has no seed axis); each DIR is a run directory
of train.sh .. eval.sh: its train.log (the trainable count gpt2_ft.py prints), metrics.jsonl (the last validation
loss), its scores (scores.json for e2e, scores_{unseen,seen,all}.json for webnlg, scores_all.json for dart) and
sweep.failed when the sweep saw the run fail (it holds the stage).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

from loranlg.errors import run_cli  # noqa: E402
from loranlg.flags import Parser  # noqa: E402
from loranlg.paper_results import E2E_ROWS  # noqa: E402
from loranlg.report import TASKS  # noqa: E402
from loranlg.sweep_report import group_cells, plot, read_runs, results_table, sweep_table, write_text  # noqa: E402


def parse_args(argv):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help='the sweep\'s runs file ("R TARGETS SEED DIR" a line)')
    parser.add_argument("--task", default="e2e", choices=TASKS, help="which scores the runs have (default: e2e)")
    parser.add_argument("--output", required=True, help="the Markdown table to write (WORK_DIR/sweep.md)")
    parser.add_argument("--plot", default=None,
                        help="also a PNG: the task's BLEU and the validation loss against the rank (error bars: the "
                             "std over seeds)")
    parser.add_argument("--results", default=None,
                        help="also a Markdown comparison with the paper (WORK_DIR/results.md): each cell's mean ± "
                             "std beside the paper's rows for --model, with their ± intervals")
    parser.add_argument("--model", default=None, choices=sorted(E2E_ROWS),
                        help="whose paper rows --results shows: md (GPT-2 M) or lg (GPT-2 L)")
    parser.add_argument("--method", default="LoRA",
                        help="the paper row our means are marked against (default LoRA; FT: full fine-tuning)")
    parser.add_argument("--note", default=None, help="a line under the tables")
    args = parser.parse_args(argv)
    if args.results and not args.model:
        parser.error("--results needs --model md or lg")
    return args


def main(argv=None):
    args = parse_args(argv)
    cells = group_cells(read_runs(args.runs, args.task))
    text = sweep_table(args.task, cells, args.note)
    write_text(args.output, text)
    print(text, end="")
    if args.results:
        write_text(args.results, results_table(args.task, cells, args.model, args.method, args.note))
        print(f"\nthe comparison with the paper: {args.results}")
    if args.plot:
        plot(args.task, cells, args.plot)


if __name__ == "__main__":
    run_cli(main)
