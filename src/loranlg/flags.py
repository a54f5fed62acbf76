"""What the commands share on their command lines, defined without importing torch so that --help answers at
once: numeric flags checked (finite, in range), argparse errors on one line, the distributed / device flags, and
the names of the precisions and schedules.

Every command builds its parser with `Parser` and gives each numeric flag a type from here, so a bad value
(`--lr nan`, `--adam_beta2 1.5`, `--warmup_step -5`) stops the command before any work with
`error: argument --lr: ...` and exit status 2.
"""

import argparse
import math

EXIT_USAGE = 2
PRECISION_NAMES = ("fp32", "bf16", "fp16")
# Schedules of the learning rate (optim.lr_factor); the fixed-rate ones keep --lr, as the original does.
SCHEDULES = ("linear", "cosine", "constant")
FIXED_RATE_SCHEDULES = ("inv_sqrt", "dev_perf")


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line: `error: ... (see PROG --help)`, exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _bounds(low, high, low_open, high_open):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _check(value, text, kind, low, high, low_open, high_open):
    ok = ((low is None or (value > low if low_open else value >= low))
          and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {kind} {_bounds(low, high, low_open, high_open)}, got {text!r}")
    return value


def integer(low=None, high=None):
    """An argparse type: a whole number in [low, high] (either bound may be None)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        return _check(value, text, "a whole number", low, high, False, False)

    parse.__name__ = "integer"
    return parse


def real(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite number in the range given (open or closed at each end); nan and inf are
    refused whatever the range."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        return _check(value, text, "a number", low, high, low_open, high_open)

    parse.__name__ = "real"
    return parse


# The ranges most flags share.
positive_int = integer(1)
count = integer(0)
fraction = real(0.0, 1.0, high_open=True)  # [0, 1): dropout, label smoothing, Adam's betas
non_negative = real(0.0)
positive = real(0.0, low_open=True)
finite = real()
seed = integer(0, 2 ** 63 - 1)


def add_distributed_args(parser):
    group = parser.add_argument_group("distributed / device")
    # Older PyTorch launchers pass --local_rank, newer --local-rank, torchrun only the LOCAL_RANK variable.
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=count, default=None,
                       help="set by torch.distributed.launch; you never pass it yourself")
    group.add_argument("--platform", default="local", choices=["local", "k8s", "philly", "azure", "pai"],
                       help="accepted for compatibility with the original scripts; the launcher's environment "
                            "variables decide everything")
    group.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: this rank's GPU when there is one, else cpu)")
    return parser
