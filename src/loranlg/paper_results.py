"""The paper's published numbers: Table 3 (E2E, five metrics) and the repository README's table (DART BLEU,
WebNLG BLEU on the unseen / seen / all test categories), each as printed."""

from .errors import InputError

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
MODEL_NAMES = {"md": "GPT-2 M", "lg": "GPT-2 L"}
# Values in the paper's units (Table 3, E2E test set). Each score is the printed text, so that the number of
# decimals it was printed with is known; "a+-b" carries the paper's interval.
E2E_ROWS = {
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
# The microsoft/LoRA README's table, BLEU x100: DART test, then WebNLG test unseen / seen / all.
GENERATION_ROWS = {
    "md": [
        ("Fine-Tune", "354.92M", "46.0", "30.4 63.2 47.6"),
        ("Adapter", "0.37M", "42.4", "45.1 54.5 50.2"),
        ("Prefix", "0.35M", "45.7", "44.1 63.1 54.4"),
        ("LoRA", "0.35M", "47.1+-.2", "46.7+-.4 62.1+-.2 55.3+-.2"),
    ],
    "lg": [
        ("Fine-Tune", "774.03M", "46.5", "41.7 64.6 54.2"),
        ("Adapter", "0.88M", "45.7+-.1", "49.8+-.0 61.1+-.0 56.0+-.0"),
        ("Prefix", "0.77M", "46.5", "47.0 64.2 56.4"),
        ("LoRA", "0.77M", "47.5+-.1", "48.4+-.3 64.0+-.3 57.0+-.1"),
    ],
}
# The test subsets each task is scored on, in the order the README prints them.
GENERATION_SUBSETS = {"dart": ("all",), "webnlg": ("unseen", "seen", "all")}


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


def _check_model(model, rows, what):
    if model not in rows:
        raise InputError(f"the paper has {what} rows for {' and '.join(rows)} only, not {model!r}")


def paper_rows(model):
    """[(method, trainable, {metric: PaperScore})] of Table 3 (E2E) for `md` or `lg`."""
    _check_model(model, E2E_ROWS, "E2E")
    return [(method, trainable, dict(zip(E2E_METRICS, map(PaperScore, scores.split()))))
            for method, trainable, scores in E2E_ROWS[model]]


def generation_rows(task, model):
    """[(method, trainable, {subset: PaperScore of BLEU})] of the README's table for `dart` or `webnlg`."""
    _check_model(model, GENERATION_ROWS, task.upper() if task == "dart" else "WebNLG")
    column = {"dart": 2, "webnlg": 3}[task]
    return [(row[0], row[1], dict(zip(GENERATION_SUBSETS[task], map(PaperScore, row[column].split()))))
            for row in GENERATION_ROWS[model]]
