"""The tables of scripts/sweep.sh: one row per cell (rank x target set), each score the mean ± the sample standard
deviation over the cell's seeds, and the same means beside the paper's rows with their ± intervals.

A runs file has "R TARGETS SEED DIR" a line (SEED "-" for the recipe's one seed); DIR is a run directory of
train.sh .. eval.sh: its train.log (the trainable count gpt2_ft.py prints), metrics.jsonl (the last validation
loss), its scores (eval.sh) and, when the sweep saw the run fail, sweep.failed (the stage that failed)."""

import math
import os
import re
import statistics
from collections import namedtuple

from .errors import InputError
from .files import atomic_output, read_lines, write_figure
from .loss_plot import read_loss_history
from .paper_results import MODEL_NAMES, generation_rows, paper_rows
from .report import read_generation_scores, read_scores

# A score column: its label, the run's file and key, the factor to the paper's units, the decimals shown, and the
# key of the paper's column it is compared with (None: the paper prints none).
Column = namedtuple("Column", "label file key factor digits paper_key")
COLUMNS = {
    "e2e": [Column("BLEU", "scores.json", "BLEU", 100, 2, "BLEU"), Column("NIST", "scores.json", "NIST", 1, 3, "NIST"),
            Column("METEOR", "scores.json", "METEOR", 100, 2, "METEOR"),
            Column("ROUGE-L", "scores.json", "ROUGE_L", 100, 2, "ROUGE_L"),
            Column("CIDEr", "scores.json", "CIDEr", 1, 3, "CIDEr")],
    "webnlg": [Column("BLEU U", "scores_unseen.json", "bleu", 1, 2, "unseen"),
               Column("BLEU S", "scores_seen.json", "bleu", 1, 2, "seen"),
               Column("BLEU A", "scores_all.json", "bleu", 1, 2, "all"),
               Column("METEOR A", "scores_all.json", "meteor", 1, 4, None),
               Column("TER A", "scores_all.json", "ter", 1, 4, None)],
    "dart": [Column("BLEU", "scores_all.json", "bleu", 1, 2, "all"),
             Column("METEOR", "scores_all.json", "meteor", 1, 4, None),
             Column("TER", "scores_all.json", "ter", 1, 4, None)],
}
TASK_NAMES = {"e2e": "E2E", "webnlg": "WebNLG", "dart": "DART"}
PLOTTED = {"e2e": "BLEU", "webnlg": "BLEU A", "dart": "BLEU"}  # the score sweep.png shows against the rank
TITLES = {
    "e2e": "E2E test set: ours (mean ± std over seeds) and the paper (Table 3)",
    "webnlg": "WebNLG 2017 test set, BLEU on the unseen (U) / seen (S) / all (A) categories: ours (mean ± std over "
              "seeds) and the paper (the repository README's table)",
    "dart": "DART test set, BLEU: ours (mean ± std over seeds) and the paper (the repository README's table)",
}


class Run:
    """One training + beam search + scoring of a sweep: what its directory holds."""

    def __init__(self, rank, targets, seed, directory, task):
        self.rank, self.targets, self.seed, self.dir = rank, targets, seed, directory
        self.trainable = _trainable(os.path.join(directory, "train.log"))
        self.valid_loss = _last_valid_loss(os.path.join(directory, "metrics.jsonl"))
        self.failed_stage = _failed_stage(os.path.join(directory, "sweep.failed"))
        self.values = None if self.failed_stage else _scores(directory, task)

    @property
    def done(self):
        return self.values is not None

    def why_left_out(self):
        if self.failed_stage:
            return f"failed in {self.failed_stage} (see {os.path.join(self.dir, 'sweep.log')})"
        return f"no scores yet (not run, or not finished: {self.dir})"


def _failed_stage(marker):
    """The stage the sweep saw fail (its sweep.failed marker), or None."""
    if not os.path.exists(marker):
        return None
    return open(marker, encoding="utf-8", errors="replace").read().strip() or "an unknown stage"


def _trainable(log):
    if not os.path.exists(log):
        return None
    found = re.findall(r"trainable parameters: ([\d,]+)", open(log, encoding="utf-8", errors="replace").read())
    return int(found[-1].replace(",", "")) if found else None


def _last_valid_loss(metrics):
    """The last validation loss in gpt2_ft.py's metrics.jsonl; None before the first (or the first step)."""
    if not os.path.exists(metrics) or os.path.getsize(metrics) == 0:
        return None
    valid_losses = read_loss_history(metrics)[3]
    return valid_losses[-1] if valid_losses else None


def _scores(directory, task):
    """{column label: value in the paper's units}, or None while a score file is missing."""
    read = read_scores if task == "e2e" else read_generation_scores
    by_file = {}
    for column in COLUMNS[task]:
        path = os.path.join(directory, column.file)
        if not os.path.exists(path):
            return None
        if path not in by_file:
            by_file[path] = read(path)
    return {c.label: by_file[os.path.join(directory, c.file)][c.key] * c.factor for c in COLUMNS[task]}


def read_runs(path, task):
    """The runs of a runs file ("R TARGETS SEED DIR" a line), in its order."""
    if task not in COLUMNS:
        raise InputError(f"the task must be one of {', '.join(COLUMNS)}, not {task!r}")
    runs = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.strip().split(maxsplit=3)
        if len(fields) != 4 or not fields[0].isdigit() or not (fields[2] == "-" or fields[2].isdigit()):
            raise InputError('expected "RANK TARGETS SEED DIR" (SEED a whole number or -)', path, number)
        runs.append(Run(int(fields[0]), fields[1], fields[2], fields[3], task))
    if not runs:
        raise InputError("no runs in this file", path)
    return runs


Cell = namedtuple("Cell", "rank targets runs")


def group_cells(runs):
    """The cells (rank, targets) in the order they first appear, each with its runs (one per seed)."""
    cells = {}
    for run in runs:
        cells.setdefault((run.rank, run.targets), []).append(run)
    return [Cell(rank, targets, members) for (rank, targets), members in cells.items()]


def mean_std(values):
    """(mean, sample standard deviation with n - 1) of the values; std None for fewer than two, both for none."""
    values = list(values)
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values)


def mean_pm_std(values, digits):
    """'70.17 ± 0.76'; one value alone ('70.00'); '-' for none."""
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _done(cell):
    return [run for run in cell.runs if run.done]


def _seeded(cells):
    return any(run.seed != "-" for cell in cells for run in cell.runs)


def _seed_count(cell):
    done = len(_done(cell))
    return str(done) if done == len(cell.runs) else f"{done} of {len(cell.runs)}"


def _trainable_of(cell):
    return next((run.trainable for run in cell.runs if run.trainable is not None), None)


def _millions(count):
    """A trainable count as the paper prints it (0.35M); a small one (a demo's) in full."""
    if count is None:
        return ""
    return f"{count / 1e6:.2f}M" if count >= 10_000 else f"{count:,}"


def _left_out(cells):
    """A line for every run that is not in the means, naming it and why."""
    lines = []
    for cell in cells:
        for run in cell.runs:
            if not run.done:
                seed = "" if run.seed == "-" else f", seed {run.seed}"
                lines.append(f"- r {cell.rank}, {cell.targets}{seed}: {run.why_left_out()}")
    return lines


def _seeds_line(cells):
    seeds = dict.fromkeys(run.seed for cell in cells for run in cell.runs)
    return f"Seeds (gpt2_ft.py --random_seed): {', '.join(seeds)}."


def sweep_table(task, cells, note=None):
    """sweep.md: per cell, trainable parameters, validation loss and the task's scores (mean ± std with seeds)."""
    columns = COLUMNS[task]
    seeded = _seeded(cells)
    lines = ["| targets | r | trainable | " + ("seeds | " if seeded else "") + "val loss | "
             + " | ".join(c.label for c in columns) + " |",
             "|---|---:|---:|" + ("---:|" if seeded else "") + "---:|" + "---:|" * len(columns)]
    for cell in cells:
        done = _done(cell)
        trainable = _trainable_of(cell)
        losses = [run.valid_loss for run in done if run.valid_loss is not None]
        scores = [mean_pm_std([run.values[c.label] for run in done], c.digits) for c in columns]
        lines.append(f"| {cell.targets} | {cell.rank} | {'-' if trainable is None else f'{trainable:,}'} | "
                     + (f"{_seed_count(cell)} | " if seeded else "") + f"{mean_pm_std(losses, 3)} | "
                     + " | ".join(scores) + " |")
    lines += ["", "Targets as --lora_targets names them: q, k, v (slices of attn.c_attn), o (attn.c_proj), "
              "fc (mlp.c_fc), proj (mlp.c_proj); all = every one (docs/lora-variants.md). Validation loss: the last "
              "one of each run." + (" BLEU, METEOR and ROUGE-L x100, as the paper prints them." if task == "e2e"
                                    else " BLEU x100; METEOR and TER as fractions (lower TER is better).")]
    if seeded:
        lines += ["", _seeds_line(cells) + " Each number is the mean over the seeds whose run finished ± their sample "
                  "standard deviation (n − 1); one finished seed shows its value alone."]
    return _with_endnotes(lines, cells, "Not in the table's numbers:", note)


def _with_endnotes(lines, cells, left_out_heading, note):
    """The text of `lines`, then the runs left out (under their heading) and the caller's note."""
    left_out = _left_out(cells)
    if left_out:
        lines += ["", left_out_heading] + left_out
    if note:
        lines += ["", note.strip()]
    return "\n".join(lines) + "\n"


def _paper(task, model, method):
    """[(method, trainable, {paper key: PaperScore})] and the reference row's scores (the last row of `method`)."""
    if task == "e2e":
        rows = paper_rows(model)
    else:
        rows = generation_rows(task, model)
        method = "Fine-Tune" if method == "FT" else method
    reference = [row for row in rows if row[0] == method]
    if not reference:
        raise InputError(f"no paper row for method {method!r} of {MODEL_NAMES[model]} ({task}); expected one of "
                         f"{', '.join(sorted({row[0] for row in rows}))}")
    return rows, method, reference[-1]


def results_table(task, cells, model, method="LoRA", note=None):
    """results.md: each cell's mean ± std over seeds beside the paper's rows (with their ±), and where each mean
    lies against the paper's `method` row."""
    columns = [c for c in COLUMNS[task] if c.paper_key]
    rows, method, reference = _paper(task, model, method)
    lines = [f"## {TITLES[task]}", "",
             "| | method | trainable | seeds | " + " | ".join(c.label for c in columns) + " |",
             "|" + "---|" * (len(columns) + 4)]
    for cell in cells:
        trainable = _trainable_of(cell)
        scores = [mean_pm_std([run.values[c.label] for run in _done(cell)], c.digits) for c in columns]
        lines.append(f"| **ours** r {cell.rank}, {cell.targets} | | "
                     f"{_millions(trainable)} | {_seed_count(cell)} | "
                     + " | ".join(f"**{score}**" for score in scores) + " |")
    for row_method, trainable, paper in rows:
        mark = " (ref.)" if row_method == reference[0] and trainable == reference[1] else ""
        lines.append(f"| paper {MODEL_NAMES[model]} | {row_method}{mark} | {trainable} | | "
                     + " | ".join(str(paper[c.paper_key]) for c in columns) + " |")
    for cell in cells:
        done = _done(cell)
        if not done:
            continue
        marks = []
        for column in columns:
            mean, _ = mean_std(run.values[column.label] for run in done)
            paper = reference[2][column.paper_key]
            marks.append(f"{paper.mark(mean)} ({mean - paper.value:+.2f})")
        lines.append(f"| ours r {cell.rank}, {cell.targets} vs paper {method} | | | | " + " | ".join(marks) + " |")
    lines += ["", "Ours: the mean over the seeds whose run finished ± their sample standard deviation (n − 1); the "
              "paper's ± is its interval over random seeds, as printed. 'inside' means our mean lies within the "
              f"paper's interval (or the rounding of a number printed without one) of the {MODEL_NAMES[model]} "
              f"{method} row; the bracket holds our mean minus the paper's value."
              + (" BLEU, METEOR and ROUGE-L x100, as the paper prints them." if task == "e2e" else "")]
    if _seeded(cells):
        lines += ["", _seeds_line(cells)]
    return _with_endnotes(lines, cells, "Not in the means:", note)


def plot(task, cells, path):
    """sweep.png: the task's BLEU and the validation loss against the rank, a line per target set (error bars:
    the std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = PLOTTED[task]
    fig, (bleu_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for targets in dict.fromkeys(cell.targets for cell in cells):
        rows = sorted((c for c in cells if c.targets == targets), key=lambda c: c.rank)
        for ax, value in ((bleu_ax, lambda run: run.values[label]), (loss_ax, lambda run: run.valid_loss)):
            stats = [mean_std(v for v in map(value, _done(c)) if v is not None) for c in rows]
            means = [math.nan if mean is None else mean for mean, _ in stats]
            stds = [0.0 if std is None else std for _, std in stats]
            ax.errorbar([c.rank for c in rows], means, yerr=stds, marker="o", capsize=3, label=targets)
    for ax, title in ((bleu_ax, f"{TASK_NAMES[task]} test {label}"), (loss_ax, "validation loss")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    bleu_ax.legend(title="--lora_targets")
    fig.tight_layout()
    write_figure(fig, path)


def write_text(path, text):
    with atomic_output(path) as handle:
        handle.write(text)
