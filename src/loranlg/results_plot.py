"""results.png: our scores beside the paper's rows, one panel a metric (E2E) or a test subset (WebNLG U/S/A,
DART), the paper's ± interval drawn on each of its bars (the rounding of the print where it gives none)."""

from .files import write_figure
from .paper_results import E2E_METRICS, GENERATION_SUBSETS, MODEL_NAMES, generation_rows, paper_rows
from .report import HEADERS, PAPER_SCALE

SUBSET_TITLES = {"unseen": "BLEU, unseen (U)", "seen": "BLEU, seen (S)", "all": "BLEU, all (A)"}


def comparison_panels(task, ours, model):
    """[(title, [(label, value, half_width or None)])], ours last; `ours` as report.py reads it (E2E: the five
    scores, BLEU as a fraction; other tasks: {subset: {"bleu": x100, ...}})."""
    if task == "e2e":
        rows = paper_rows(model)
        keys, titles = E2E_METRICS, [HEADERS[name] for name in E2E_METRICS]
        values = {name: ours[name] * PAPER_SCALE[name] for name in E2E_METRICS}
    else:
        rows = generation_rows(task, model)
        keys = GENERATION_SUBSETS[task]
        titles = [SUBSET_TITLES[subset] if task == "webnlg" else "BLEU" for subset in keys]
        values = {subset: ours[subset]["bleu"] for subset in keys}
    panels = []
    for key, title in zip(keys, titles):
        bars = [(f"{method} {trainable}", paper[key].value, paper[key].half_width) for method, trainable, paper in rows]
        panels.append((title, bars + [("ours", values[key], None)]))
    return panels


def plot_comparison(task, ours, model, output_path, title=None):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = comparison_panels(task, ours, model)
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 4.2), dpi=100, squeeze=False)
    for axis, (panel_title, bars) in zip(axes[0], panels):
        labels = [label for label, _, _ in bars]
        values = [value for _, value, _ in bars]
        colors = ["tab:orange" if label == "ours" else
                  "tab:blue" if label.startswith("LoRA") else "tab:gray" for label in labels]
        axis.barh(range(len(bars)), values, color=colors,
                  xerr=[width or 0 for _, _, width in bars], error_kw={"capsize": 3})
        axis.set_yticks(range(len(bars)))
        axis.set_yticklabels(labels if axis is axes[0][0] else [""] * len(labels), fontsize=8)
        low = min(values)
        axis.set_xlim(max(0.0, low - 0.15 * (max(values) - low + 1e-9) - 0.05 * abs(low)), max(values) * 1.04)
        axis.set_title(panel_title, fontsize=10)
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
        for index, value in enumerate(values):
            axis.text(value, index, f" {value:.2f}", va="center", fontsize=7)
    figure.suptitle(title or f"{task}: ours and the paper's {MODEL_NAMES[model]} rows (bars: the paper's ± interval)",
                    fontsize=11)
    figure.tight_layout()
    write_figure(figure, output_path)
