#!/usr/bin/env python3
"""The table (and plot) of scripts/sweep_e2e.sh: one row per cell (target set x rank), as the paper's rank
study on E2E shows them: trainable parameters, validation loss, BLEU, NIST, METEOR, ROUGE-L, CIDEr.

    python scripts/sweep_table.py --cells WORK_DIR/sweep.cells --output WORK_DIR/sweep.md [--plot sweep.png]

A cells file has "R TARGETS DIR" a line; each DIR is a run directory of train.sh .. eval.sh: its train.log
(the trainable count gpt2_ft.py prints), metrics.jsonl (the last validation loss) and scores.json
(eval/e2e/measure_scores.py --json). A cell that has not finished shows '-' where its outputs are missing.
"""

import argparse
import json
import math
import os
import re

METRICS = [("BLEU", "BLEU", 100), ("NIST", "NIST", 1), ("METEOR", "METEOR", 100), ("ROUGE_L", "ROUGE-L", 100),
           ("CIDEr", "CIDEr", 1)]  # scores.json key, column, factor (the paper's Table 3 shows BLEU etc. x 100)


def read_cell(rank, targets, directory):
    cell = {"rank": int(rank), "targets": targets, "dir": directory, "trainable": None, "valid_loss": None,
            "scores": {}}
    log = os.path.join(directory, "train.log")
    if os.path.exists(log):
        found = re.findall(r"trainable parameters: ([\d,]+)", open(log, encoding="utf-8").read())
        cell["trainable"] = int(found[-1].replace(",", "")) if found else None
    metrics = os.path.join(directory, "metrics.jsonl")
    if os.path.exists(metrics):
        losses = [r["valid_loss"] for r in map(json.loads, open(metrics, encoding="utf-8")) if "valid_loss" in r]
        cell["valid_loss"] = losses[-1] if losses else None
    scores = os.path.join(directory, "scores.json")
    if os.path.exists(scores):
        cell["scores"] = json.load(open(scores, encoding="utf-8"))
    return cell


def read_cells(path):
    with open(path, encoding="utf-8") as handle:
        return [read_cell(*line.strip().split(maxsplit=2)) for line in handle if line.strip()]


def number(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def table(cells, note=None):
    lines = ["| targets | r | trainable | val loss | " + " | ".join(column for _, column, _ in METRICS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(METRICS)]
    for cell in cells:
        scores = [number(cell["scores"][key] * factor if key in cell["scores"] else None, 4 if factor == 1 else 1)
                  for key, _, factor in METRICS]
        trainable = "-" if cell["trainable"] is None else f"{cell['trainable']:,}"
        lines.append(f"| {cell['targets']} | {cell['rank']} | {trainable} | {number(cell['valid_loss'], 3)} | "
                     + " | ".join(scores) + " |")
    lines += ["", "Targets as --lora_targets names them: q, k, v (slices of attn.c_attn), o (attn.c_proj), "
              "fc (mlp.c_fc), proj (mlp.c_proj); all = every one (docs/lora-variants.md). Validation loss: the last "
              "one of the run."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(cells, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bleu_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for targets in dict.fromkeys(cell["targets"] for cell in cells):
        rows = sorted((c for c in cells if c["targets"] == targets), key=lambda c: c["rank"])
        ranks = [c["rank"] for c in rows]
        bleu = [c["scores"]["BLEU"] * 100 if "BLEU" in c["scores"] else math.nan for c in rows]
        loss = [c["valid_loss"] if c["valid_loss"] is not None else math.nan for c in rows]
        bleu_ax.plot(ranks, bleu, marker="o", label=targets)
        loss_ax.plot(ranks, loss, marker="o", label=targets)
    for ax, title in ((bleu_ax, "E2E test BLEU"), (loss_ax, "validation loss")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    bleu_ax.legend(title="--lora_targets")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", required=True, help='the sweep\'s cells file ("R TARGETS DIR" a line)')
    parser.add_argument("--output", required=True, help="the Markdown table to write")
    parser.add_argument("--plot", default=None, help="also a PNG: BLEU and validation loss against the rank")
    parser.add_argument("--note", default=None, help="a line under the table")
    args = parser.parse_args(argv)
    cells = read_cells(args.cells)
    text = table(cells, args.note)
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(text)
    print(text, end="")
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
