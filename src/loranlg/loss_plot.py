"""The training and validation loss curves of a run, from gpt2_ft.py's metrics.jsonl, as a PNG."""

from .errors import InputError
from .files import read_jsonl, write_figure


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
    write_figure(figure, output_path)
