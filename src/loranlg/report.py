"""Our scores beside the paper's: E2E's five metrics against Table 3, DART's and WebNLG's BLEU (unseen / seen /
all) against the repository README's table, as Markdown."""

import json
import math
import re

from .errors import InputError
from .files import atomic_output, read_lines
from .paper_results import E2E_METRICS, GENERATION_SUBSETS, MODEL_NAMES, generation_rows, paper_rows

METRICS = E2E_METRICS
HEADERS = {"BLEU": "BLEU", "NIST": "NIST", "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr"}
# The paper prints BLEU, METEOR and ROUGE-L as percentages; NIST and CIDEr as they come.
PAPER_SCALE = {"BLEU": 100.0, "NIST": 1.0, "METEOR": 100.0, "ROUGE_L": 100.0, "CIDEr": 1.0}
TASKS = ("e2e", "webnlg", "dart")


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
    ours = {name: scores[name] * PAPER_SCALE[name] for name in METRICS}
    lines = [f"## {title or 'E2E test set: ours and the paper (Table 3)'}", ""]
    lines += _rows_beside_the_paper([HEADERS[name] for name in METRICS], METRICS, ours, _ours, rows, model, method)
    lines += ["", f"BLEU, METEOR and ROUGE-L x100 as the paper prints them. 'inside' means within the paper's "
              f"± interval (or the rounding of a number printed without one) of the {MODEL_NAMES[model]} "
              f"{method} row; the bracket holds ours minus the paper's value.", ""]
    return "\n".join(lines)


def _rows_beside_the_paper(headers, keys, ours, fmt, rows, model, method):
    """The table's lines: header, our row (fmt of each value), the paper's rows, then our mark against the
    paper's `method` row for each key (ours in the paper's units)."""
    ref_trainable, ref_scores = _reference_row(rows, method, model)
    lines = ["| | method | trainable | " + " | ".join(headers) + " |", "|" + "---|" * (len(keys) + 3),
             "| **ours** | | | " + " | ".join(f"**{fmt(ours[key])}**" for key in keys) + " |"]
    for row_method, trainable, paper in rows:
        mark = " (ref.)" if (row_method, trainable) == (method, ref_trainable) else ""
        lines.append(f"| paper {MODEL_NAMES[model]} | {row_method}{mark} | {trainable} | "
                     + " | ".join(str(paper[key]) for key in keys) + " |")
    lines.append(f"| ours vs paper {method} | | | "
                 + " | ".join(f"{ref_scores[key].mark(ours[key])} ({ours[key] - ref_scores[key].value:+.2f})"
                              for key in keys) + " |")
    return lines


def _reference_row(rows, method, model):
    """(trainable, scores) of the paper's row for `method` (the last one when a method has several)."""
    reference = [row for row in rows if row[0] == method]
    if not reference:
        raise InputError(f"no paper row for method {method!r} of {MODEL_NAMES[model]}; "
                         f"expected one of {', '.join(sorted({row[0] for row in rows}))}")
    return reference[-1][1:]


def read_generation_scores(path):
    """{"bleu", "meteor", "ter"} as eval/GenerationEval/eval.py --json writes them (BLEU x100)."""
    text = "".join(line for _, line in read_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise InputError("expected the JSON object of eval/GenerationEval/eval.py --json", path)
    scores = {}
    for name in ("bleu", "meteor", "ter"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"no finite number for {name!r}; expected the output of eval/GenerationEval/eval.py "
                             "--json", path)
        scores[name] = float(value)
    return scores


def generation_table(task, subset_scores, model, method="LoRA"):
    """Markdown for DART or WebNLG: our BLEU beside the README's rows (x100; WebNLG unseen / seen / all), our
    position against the `method` row, then our METEOR and TER (the README gives BLEU only).

    `subset_scores` maps each of the task's subsets to read_generation_scores() output."""
    subsets = GENERATION_SUBSETS[task]
    missing = [subset for subset in subsets if subset not in subset_scores]
    if missing:
        raise InputError(f"{task}: no scores for the {', '.join(missing)} test subset(s)")
    method = "Fine-Tune" if method == "FT" else method
    rows = generation_rows(task, model)
    ours = {subset: subset_scores[subset]["bleu"] for subset in subsets}
    names = {"all": "A", "seen": "S", "unseen": "U"}
    title = "DART test set" if task == "dart" else "WebNLG 2017 test set, unseen (U) / seen (S) / all (A) categories"
    headers = [f"BLEU {names[s]}" if len(subsets) > 1 else "BLEU" for s in subsets]
    lines = [f"## {title}: ours and the paper (BLEU, the repository README's table)", ""]
    lines += _rows_beside_the_paper(headers, subsets, ours, lambda value: f"{value:.2f}", rows, model, method)
    lines += ["", "Ours, every score of eval/GenerationEval/eval.py (BLEU x100; METEOR and TER as fractions; "
              "lower TER is better):", "", "| test subset | BLEU | METEOR | TER |", "|---|---|---|---|"]
    lines += [f"| {subset} | {subset_scores[subset]['bleu']:.2f} | {subset_scores[subset]['meteor']:.4f} | "
              f"{subset_scores[subset]['ter']:.4f} |" for subset in subsets]
    lines += ["", f"'inside' means within the paper's ± interval (or the rounding of a number printed without one) "
              f"of the {MODEL_NAMES[model]} {method} row; the bracket holds ours minus the paper's value.", ""]
    return "\n".join(lines)


def read_task_scores(task, scores_paths):
    """E2E: measure_scores.py's five scores from one file; DART and WebNLG: {subset: eval.py --json scores} from
    {subset: path}."""
    if task == "e2e":
        return read_scores(scores_paths)
    return {subset: read_generation_scores(path) for subset, path in scores_paths.items()}


def write_comparison(scores, model, output_path, method="LoRA", note=None, task="e2e"):
    """Write results.md from read_task_scores() output; returns its text."""
    if task == "e2e":
        table = comparison_table(scores, model, method)
    else:
        table = generation_table(task, scores, model, method)
    if note:
        table += "\n" + note.strip() + "\n"
    with atomic_output(output_path) as handle:
        handle.write(table)
    return table
