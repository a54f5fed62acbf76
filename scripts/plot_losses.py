#!/usr/bin/env python3
"""A PNG of the training loss and the validation loss over steps, from gpt2_ft.py's metrics.jsonl.

  python scripts/plot_losses.py --metrics WORK_DIR/metrics.jsonl --output WORK_DIR/losses.png
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

from loranlg.errors import run_cli  # noqa: E402
from loranlg.loss_plot import plot_losses  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True,
                        help="metrics.jsonl written by src/gpt2_ft.py (one object per step, one per evaluation)")
    parser.add_argument("--output", required=True, help="the PNG to write (replaced atomically)")
    parser.add_argument("--title", default=None, help="the plot's title")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    plot_losses(args.metrics, args.output, args.title)
    print(f"plot_losses: wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
