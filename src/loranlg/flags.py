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
