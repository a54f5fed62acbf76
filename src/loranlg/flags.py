"""What the commands share on their command lines, defined without importing torch so that --help answers at
once: numeric flags checked (finite, in range), argparse errors on one line, the distributed / device flags, and
the names of the precisions and schedules.

Every command builds its parser with `Parser` and gives each numeric flag a type from here, so a bad value
(`--lr nan`, `--adam_beta2 1.5`, `--warmup_step -5`) stops the command before any work with
`error: argument --lr: ...` and exit status 2.
"""

import argparse
import math

from .cards import CARDS

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


# ---------------------------------------------------------------- which weights LoRA adapts, and how

# --lora_targets names (docs/lora-variants.md): q, k, v are the slices of the fused attention projection c_attn;
# the others are whole Conv1D layers of each block.
QKV_TARGETS = ("q", "k", "v")
MODULE_TARGETS = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}
TARGET_NAMES = QKV_TARGETS + tuple(MODULE_TARGETS)
DEFAULT_TARGETS = "q,v"  # the paper's
LORA_SCALINGS = ("alpha_over_r", "rs")  # alpha / r (the paper's), alpha / sqrt(r) (rsLoRA)
LORA_INITS = ("kaiming", "gaussian")  # A as the released code draws it, or as the paper's text says


def parse_targets(spec):
    """'q,v' / 'v,q' / 'all' (or a tuple of names) -> ('q', 'v') in TARGET_NAMES order; ValueError on anything
    else."""
    if isinstance(spec, (tuple, list)):
        spec = ",".join(spec)
    names = [part.strip().lower() for part in str(spec).split(",") if part.strip()]
    if names == ["all"]:
        return TARGET_NAMES
    unknown = [name for name in names if name not in TARGET_NAMES]
    if not names or unknown:
        raise ValueError(f"--lora_targets takes a comma list of {', '.join(TARGET_NAMES)} (or all), got {spec!r}")
    return tuple(name for name in TARGET_NAMES if name in names)


def targets_text(targets):
    """('q', 'v') -> 'q,v' (what checkpoints record and messages show)."""
    return ",".join(targets)


def add_lora_variant_args(group, training=True):
    """--lora_targets, --lora_scaling, --dora (and for training --lora_init, --lora_plus_ratio) on an argparse
    group: gpt2_ft.py, gpt2_beam.py and the export take the same ones."""
    group.add_argument("--lora_targets", default=DEFAULT_TARGETS, metavar="T[,T...]",
                       help="weights LoRA adapts in every block: q, k, v (slices of attn.c_attn), o (attn.c_proj), "
                            "fc (mlp.c_fc), proj (mlp.c_proj), or all (default q,v: the paper's)")
    group.add_argument("--lora_scaling", default="alpha_over_r", choices=LORA_SCALINGS,
                       help="the update's scale: alpha / r (the paper's) or rs = alpha / sqrt(r) (rsLoRA) "
                            "(default alpha_over_r)")
    group.add_argument("--dora", action="store_true",
                       help="DoRA: a trained magnitude per output column times the column-normalised W + scale*BA "
                            "(as peft's use_dora)")
    if training:
        group.add_argument("--lora_init", default="kaiming", choices=LORA_INITS,
                           help="A's initialisation: kaiming-uniform(a=sqrt(5)) as the paper's code, or gaussian "
                                "(the paper's text) with std 1/r as peft's init_lora_weights='gaussian'; B starts at 0 "
                                "(default kaiming)")
        group.add_argument("--lora_plus_ratio", type=positive, default=1.0, metavar="K",
                           help="LoRA+: B's learning rate (and DoRA's magnitudes') K times A's; 1 is the recipe "
                                "unchanged (default 1)")
    return group


def check_lora_variant_args(args):
    """Normalises args.lora_targets to its comma text; ValueError names a bad value."""
    args.lora_targets = targets_text(parse_targets(args.lora_targets))
    ratio = getattr(args, "lora_plus_ratio", 1.0)
    if not ratio > 0:
        raise ValueError(f"--lora_plus_ratio must be positive, got {ratio}")
    return args


def add_model_args(parser, default_card):
    """The flags that say which trained model to read, as gpt2_beam.py and gpt2_export.py take them (the
    original's names): --model_card --init_checkpoint --lora_checkpoint --lora_dim --lora_alpha."""
    card = f"default {default_card}; " if default_card else "required unless "
    parser.add_argument("--model_card", default=None, choices=list(CARDS),
                        help="model size: gpt2.sm / gpt2.md / gpt2.lg (GPT-2 small / medium / large), or our small "
                             f"test cards ({card}a transformers directory or nanoGPT --init_checkpoint gives its "
                             "own size, which a card given as well must match)")
    parser.add_argument("--init_checkpoint", default=None, metavar="PATH",
                        help="base weights: hub GPT-2 .bin/.safetensors, a full checkpoint of gpt2_ft.py or the "
                             "original (which may also hold the LoRA tensors), a transformers model directory of any "
                             "size, a nanoGPT checkpoint, or a PEFT adapter directory whose base_model_name_or_path "
                             "is on this machine; without it the base weights are random (seeded)")
    parser.add_argument("--lora_checkpoint", default=None, metavar="PATH",
                        help="LoRA tensors over the base weights: a model.{step}.pt of gpt2_ft.py, a released LoRA "
                             "file, or a PEFT adapter directory (LoRA on c_attn, any rank)")
    parser.add_argument("--lora_dim", type=count, default=0,
                        help="LoRA rank r of the checkpoint (default 0: no LoRA, or a PEFT adapter's own rank)")
    parser.add_argument("--lora_alpha", type=positive, default=128,
                        help="LoRA alpha of the checkpoint; scaling = alpha / r (default 128; a PEFT adapter's own "
                             "when --lora_dim is left out)")
