"""Our E2E scores beside the paper's (Table 3), and the training / validation loss curves of a run."""

import io
import json
import math
import re

from .errors import InputError
from .files import atomic_output, read_jsonl, read_lines

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
HEADERS = {"BLEU": "BLEU", "NIST": "NIST", "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr"}
# The paper prints BLEU, METEOR and ROUGE-L as percentages; NIST and CIDEr as they come.
PAPER_SCALE = {"BLEU": 100.0, "NIST": 1.0, "METEOR": 100.0, "ROUGE_L": 100.0, "CIDEr": 1.0}
# Values in the paper's units (Table 3, E2E test set). Each score is the printed text, so that the number of
# decimals it was printed with is known; "a+-b" carries the paper's interval.
PAPER_ROWS = {
    "md": [
        ("FT", "354.92M", "68.2 8.62 46.2 71.0 2.47"),
        ("Adapter-L", "0.37M", "66.3 8.41 45.0 69.8 2.40"),
        ("Adapter-L", "11.09M", "68.9 8.71 46.1 71.3 2.47"),
        ("Adapter-H", "11.09M", "67.3 8.50 46.0 70.7 2.44"),
        ("FT-Top2", "25.19M", "68.1 8.59 46.0 70.8 2.41"),
        ("PreLayer", "0.35M", "69.7 8.81 46.1 71.4 2.49"),
        ("LoRA", "0.35M", "70.4+-.1 8.85+-.02 46.8+-.2 71.8+-.1 2.53+-.02"),
    ],
    "lg": [
        ("FT", "774.03M", "68.5 8.78 46.0 69.9 2.45"),
        ("Adapter-L", "0.88M", "69.1 8.68 46.3 71.4 2.49"),
        ("Adapter-L", "23.00M", "68.9 8.70 46.1 71.3 2.45"),
        ("PreLayer", "0.77M", "70.3 8.85 46.2 71.7 2.47"),
        ("LoRA", "0.77M", "70.4+-.1 8.89+-.02 46.8+-.2 72.0+-.2 2.47+-.02"),
    ],
}
MODEL_NAMES = {"md": "GPT-2 M", "lg": "GPT-2 L"}


class PaperScore:
    """One printed number of the paper. Without a printed interval, the interval is the rounding of the print
    (68.2 stands for [68.15, 68.25])."""

    def __init__(self, text):
        self.text = text
        value, _, plus_minus = text.partition("+-")
        self.value = float(value)
        self.plus_minus = float(plus_minus) if plus_minus else None
        decimals = len(value.partition(".")[2])
        self.half_width = self.plus_minus if plus_minus else 0.5 * 10.0 ** -decimals

    def mark(self, ours):
        """'inside', 'above' or 'below' the interval, `ours` in the paper's units."""
        if ours > self.value + self.half_width + 1e-9:
            return "above"
        if ours < self.value - self.half_width - 1e-9:
            return "below"
        return "inside"

    def __str__(self):
        if self.plus_minus is None:
            return self.text
        value, _, plus_minus = self.text.partition("+-")
        return f"{value} ± {plus_minus}"


def paper_rows(model):
    """[(method, trainable, {metric: PaperScore})] for `md` or `lg`."""
    if model not in PAPER_ROWS:
        raise InputError(f"the paper has E2E rows for {' and '.join(PAPER_ROWS)} only, not {model!r}")
    return [(method, trainable, dict(zip(METRICS, map(PaperScore, scores.split()))))
            for method, trainable, scores in PAPER_ROWS[model]]


def _metric_name(key):
    wanted = re.sub(r"[^a-z]", "", key.lower())
    for name in METRICS:
        if re.sub(r"[^a-z]", "", name.lower()) == wanted:
            return name
    return None


def read_scores(path):
    """The five scores (as measure_scores.py gives them: BLEU as a fraction) from its `--json` output or its
    printed `SCORES:` block."""
    text = "".join(line for _, line in read_lines(path))
    scores = {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for key, value in data.items():
            name = _metric_name(key)
            if name and isinstance(value, (int, float)) and not isinstance(value, bool):
                scores[name] = float(value)
    else:
        for match in re.finditer(r"^\s*([A-Za-z_-]+)\s*:\s*(\S+)\s*$", text, re.MULTILINE):
            name = _metric_name(match.group(1))
            if name:
                try:
                    scores[name] = float(match.group(2))
                except ValueError:
                    raise InputError(f"{match.group(1)} is not a number: {match.group(2)!r}", path) from None
    missing = [name for name in METRICS if name not in scores]
    if missing:
        raise InputError(f"no score for {', '.join(missing)}; expected the output of eval/e2e/measure_scores.py "
                         "(its --json object or its SCORES: block)", path)
    bad = [name for name in METRICS if not math.isfinite(scores[name])]
    if bad:
        raise InputError(f"{', '.join(bad)} is not a finite number", path)
    return scores


def _ours(value):
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def comparison_table(scores, model, method="LoRA", title=None):
    """Markdown: our row, the paper's rows for `model`, and our position against the paper's `method` row."""
    rows = paper_rows(model)
    reference = [row for row in rows if row[0] == method]
    if not reference:
        raise InputError(f"no paper row for method {method!r} of {MODEL_NAMES[model]}; "
                         f"expected one of {', '.join(sorted({row[0] for row in rows}))}")
    _, ref_trainable, ref_scores = reference[-1]
    ours = {name: scores[name] * PAPER_SCALE[name] for name in METRICS}
    header = "| | method | trainable | " + " | ".join(HEADERS[name] for name in METRICS) + " |"
    lines = [f"## {title or 'E2E test set: ours and the paper (Table 3)'}", "",
             header, "|" + "---|" * (len(METRICS) + 3),
             "| **ours** | | | " + " | ".join(f"**{_ours(ours[name])}**" for name in METRICS) + " |"]
    for row_method, trainable, paper in rows:
        mark = " (ref.)" if (row_method, trainable) == (method, ref_trainable) else ""
        lines.append(f"| paper {MODEL_NAMES[model]} | {row_method}{mark} | {trainable} | "
                     + " | ".join(str(paper[name]) for name in METRICS) + " |")
    lines.append(f"| ours vs paper {method} | | | "
                 + " | ".join(f"{ref_scores[name].mark(ours[name])} ({ours[name] - ref_scores[name].value:+.2f})"
                              for name in METRICS) + " |")
    lines += ["", f"BLEU, METEOR and ROUGE-L x100 as the paper prints them. 'inside' means within the paper's "
              f"± interval (or the rounding of a number printed without one) of the {MODEL_NAMES[model]} "
              f"{method} row; the bracket holds ours minus the paper's value.", ""]
    return "\n".join(lines)


def write_comparison(scores_path, model, output_path, method="LoRA", note=None):
    table = comparison_table(read_scores(scores_path), model, method)
    if note:
        table += "\n" + note.strip() + "\n"
    with atomic_output(output_path) as handle:
        handle.write(table)
    return table


def read_loss_history(metrics_path):
    """(train_steps, train_losses, valid_steps, valid_losses) from gpt2_ft.py's metrics.jsonl. An evaluation
    line without a step belongs to the training step logged just before it."""
    train_steps, train_losses, valid_steps, valid_losses = [], [], [], []
    last_step = 0
    for number, obj in read_jsonl(metrics_path):
        if "valid_loss" in obj:
            step = obj.get("step", last_step)
            valid_steps.append(_number(step, "step", metrics_path, number))
            valid_losses.append(_number(obj["valid_loss"], "valid_loss", metrics_path, number))
        elif "loss" in obj and "step" in obj:
            last_step = _number(obj["step"], "step", metrics_path, number)
            train_steps.append(last_step)
            train_losses.append(_number(obj["loss"], "loss", metrics_path, number))
    if not train_steps and not valid_steps:
        raise InputError("no training step ({step, loss}) and no evaluation ({valid_loss}) in the file; "
                         "expected gpt2_ft.py's metrics.jsonl", metrics_path)
    return train_steps, train_losses, valid_steps, valid_losses


def _number(value, key, path, line):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{key} is not a number: {value!r}", path, line)
    return value


def moving_average(values, window):
    """Mean of the last `window` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot_losses(metrics_path, output_path, title=None):
    """A PNG of the training loss (raw and smoothed) and the validation loss over steps."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train_steps, train_losses, valid_steps, valid_losses = read_loss_history(metrics_path)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train_steps:
        window = max(1, len(train_losses) // 50)
        axes.plot(train_steps, train_losses, color="tab:blue", alpha=0.25, linewidth=0.8,
                  label="training loss (label-smoothed)")
        if window > 1:
            axes.plot(train_steps, moving_average(train_losses, window), color="tab:blue", linewidth=1.5,
                      label=f"training loss, mean of {window} steps")
    if valid_steps:
        axes.plot(valid_steps, valid_losses, color="tab:orange", marker="o", linewidth=1.5,
                  label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title or "training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    with atomic_output(output_path, "wb") as handle:
        handle.write(buffer.getvalue())
