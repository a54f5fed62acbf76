"""What the commands share on their command lines, defined without importing torch so that --help answers at
once: the distributed / device flags and the names of the precisions and schedules."""

PRECISION_NAMES = ("fp32", "bf16", "fp16")
# Schedules of the learning rate (optim.lr_factor); the fixed-rate ones keep --lr, as the original does.
SCHEDULES = ("linear", "cosine", "constant")
FIXED_RATE_SCHEDULES = ("inv_sqrt", "dev_perf")


def add_distributed_args(parser):
    group = parser.add_argument_group("distributed / device")
    # Older PyTorch launchers pass --local_rank, newer --local-rank, torchrun only the LOCAL_RANK variable.
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
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
        group.add_argument("--lora_plus_ratio", type=float, default=1.0, metavar="K",
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
