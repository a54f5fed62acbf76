"""Fine-tune GPT-2 with LoRA (or fully) on an encoded jsonl, as the original examples/NLG/src/gpt2_ft.py.

  python src/gpt2_ft.py --train_data ... --valid_data ... [flags]                      one process
  python -m torch.distributed.launch --nproc_per_node=N src/gpt2_ft.py ...            N processes
  torchrun --nproc_per_node=N [--nnodes ...] src/gpt2_ft.py ...                        N processes (or nodes)
  deepspeed [--num_gpus N] src/gpt2_ft.py --deepspeed --deepspeed_config ds.json ...    DeepSpeed's engine
"""

import argparse
import os
import random
import sys

# Only torch-free modules here, so that --help answers at once; the rest is imported once the flags are read.
from loranlg import deepspeed_config, flags
from loranlg.cards import CARDS
from loranlg.errors import InputError, run_cli
from loranlg.flags import (FIXED_RATE_SCHEDULES, PRECISION_NAMES, SCHEDULES, add_distributed_args,
                           add_lora_variant_args, check_lora_variant_args)


def build_parser():
    parser = flags.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_distributed_args(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--train_data", required=True, help="encoded training jsonl (gpt2_encode.py output)")
    data.add_argument("--valid_data", required=True, help="encoded validation jsonl")
    data.add_argument("--train_batch_size", type=flags.positive_int, default=None,
                      help="examples per batch and process (8; with --global_batch G, G / processes)")
    data.add_argument("--global_batch", type=flags.positive_int, default=None,
                      help="examples per step over all processes, split evenly among them (instead of "
                           "--train_batch_size per process): N processes of G / N reproduce one process of G step "
                           "for step (docs/training.md)")
    data.add_argument("--valid_batch_size", type=flags.positive_int, default=4, help="validation examples per batch (4)")
    data.add_argument("--seq_len", type=flags.integer(2), default=512,
                      help="longest input in tokens; longer examples are cut, a longer context is refused (512)")
    model = parser.add_argument_group("model")
    model.add_argument("--model_card", default=None, choices=list(CARDS),
                       help="GPT-2 size (gpt2.sm/md/lg; gpt2.tiny/mini are small cards of our own) (gpt2.md; "
                            "a transformers directory or nanoGPT --init_checkpoint gives its own size)")
    model.add_argument("--init_checkpoint", default=None,
                       help="pretrained weights (hub .bin/.safetensors, the original's .pt, a transformers model "
                            "directory of any size, a nanoGPT checkpoint, a PEFT adapter with its local base); "
                            "without it the model starts from random weights")
    model.add_argument("--lora_checkpoint", default=None,
                       help="LoRA tensors to start from (a model.{step}.pt, or a PEFT adapter directory: its rank "
                            "and alpha when --lora_dim is left out)")
    model.add_argument("--lora_dim", type=flags.count, default=0, help="LoRA rank r; 0 = full fine-tuning (0)")
    model.add_argument("--lora_alpha", type=flags.positive_int, default=128, help="LoRA alpha; scaling = alpha / r (128)")
    model.add_argument("--lora_dropout", type=flags.fraction, default=0.0, help="dropout on the LoRA input (0.0)")
    add_lora_variant_args(parser.add_argument_group("LoRA variants (docs/lora-variants.md; the defaults are the "
                                                    "paper's)"))
    run = parser.add_argument_group("run")
    run.add_argument("--grad_acc", type=flags.positive_int, default=1, help="micro-batches per optimizer update (1)")
    run.add_argument("--clip", type=flags.non_negative, default=0.0, help="clip the gradient norm to this; 0 = no clipping")
    run.add_argument("--label_smooth", type=flags.fraction, default=0.0, help="label smoothing s of the training loss (0.0)")
    run.add_argument("--random_seed", type=flags.seed, default=10, help="seed of the weights, dropout and data order (10)")
    run.add_argument("--precision", choices=PRECISION_NAMES, default="fp32",
                     help="fp32, or bf16 / fp16 autocast with fp32 weights and an fp32 loss (fp32)")
    run.add_argument("--fp16", action="store_true", help="the original's flag: same as --precision fp16")
    run.add_argument("--log_interval", type=flags.positive_int, default=100, help="log line every this many steps (100)")
    run.add_argument("--eval_interval", type=flags.positive_int, default=2000, help="validation every this many steps (2000)")
    run.add_argument("--save_interval", type=flags.positive_int, default=500,
                     help="write work_dir/model.{step}.pt (and the resume file) every this many steps (500)")
    run.add_argument("--work_dir", default=os.getenv("PT_OUTPUT_DIR", "gpt2_model"),
                     help="where checkpoints, metrics.jsonl and resume.pt go ($PT_OUTPUT_DIR or gpt2_model)")
    run.add_argument("--no_cuda_graph", action="store_true",
                     help="run every step eagerly; by default each process on a GPU with --grad_acc 1 (bf16 or "
                          "fp32) replays each step as a CUDA graph (same numbers, a fraction of the time)")
    run.add_argument("--compile", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                     help="torch.compile the transformer blocks (fuses small kernels; compiling takes about a "
                          "minute at the start). auto: with the CUDA-graph step, falling back to the plain "
                          "graph if compilation fails; on (or --compile alone): also for eager steps; "
                          "off: never (default auto)")
    run.add_argument("--resume", action="store_true",
                     help="continue from work_dir/resume.pt (weights, optimizer, schedule, step, RNG, data "
                          "position); starts from the beginning when there is none yet")
    ds = parser.add_argument_group("DeepSpeed (optional: pip install deepspeed; docs/training.md, \"DeepSpeed\")")
    ds.add_argument("--deepspeed", action="store_true",
                    help="train through DeepSpeed's engine (ZeRO stage 0-3, fp32 or bf16) with this command's "
                         "loss, AdamW, schedule and model.{step}.pt files; launch with `deepspeed` or torchrun; "
                         "no --resume")
    ds.add_argument("--deepspeed_config", default=None, metavar="FILE",
                    help="DeepSpeed's JSON config (with --deepspeed): zero_optimization, bf16, ...; the batch, "
                         "accumulation and clipping keys must equal the flags' or be \"auto\" (samples: "
                         "scripts/ds_zero{1,2,3}_bf16.json)")
    opt = parser.add_argument_group("optimizer (Adam with decoupled weight decay)")
    opt.add_argument("--lr", type=flags.non_negative, default=0.00001, help="peak learning rate (1e-5)")
    opt.add_argument("--weight_decay", type=flags.non_negative, default=0.01, help="decoupled weight decay (0.01)")
    opt.add_argument("--correct_bias", action="store_true", help="Adam bias correction")
    opt.add_argument("--adam_epislon", "--adam_epsilon", dest="adam_epislon", type=flags.positive, default=1e-6,
                     help="Adam epsilon (1e-6); the original spells it --adam_epislon")
    opt.add_argument("--no_decay_bias", action="store_true", help="no weight decay on biases")
    opt.add_argument("--adam_beta1", type=flags.fraction, default=0.9, help="Adam beta1 (0.9)")
    opt.add_argument("--adam_beta2", type=flags.fraction, default=0.98, help="Adam beta2 (0.98)")
    opt.add_argument("--scheduler", default="linear", choices=list(SCHEDULES + FIXED_RATE_SCHEDULES),
                     help="learning-rate schedule, stepped per micro-batch: linear (warmup then linear decay "
                          "to 0 at max_step), cosine, constant (after warmup); inv_sqrt / dev_perf keep --lr "
                          "fixed, as the original does (linear)")
    opt.add_argument("--warmup_step", type=flags.count, default=0, help="warmup steps (0)")
    opt.add_argument("--max_step", type=flags.positive_int, default=None,
                     help="steps (micro-batches) to train; default ceil(max_epoch * batches / world size)")
    opt.add_argument("--max_epoch", type=flags.positive_int, default=None, help="epochs to train")
    return parser


def check_args(args):
    split_global_batch(args, int(os.environ.get("WORLD_SIZE", "1")))  # the launcher's; before the DeepSpeed check
    if args.fp16:
        args.precision = "fp16"
    n_positions = model_config(args).n_positions
    if args.seq_len > n_positions:
        raise InputError(f"--seq_len {args.seq_len} is longer than the model's {n_positions} positions")
    if args.max_step is None and args.max_epoch is None:
        raise InputError("give --max_step or --max_epoch (the run needs an end)")
    try:
        check_lora_variant_args(args)
    except ValueError as err:
        raise InputError(str(err)) from None
    if args.lora_dim == 0 and args.lora_plus_ratio != 1.0:
        raise InputError("--lora_plus_ratio sets B's learning rate: it needs LoRA (--lora_dim above 0)")
    args.deepspeed_settings = deepspeed_config.settings_from_args(args, int(os.environ.get("WORLD_SIZE", "1")))


def split_global_batch(args, world_size):
    """--train_batch_size: G / world_size with --global_batch G (a --train_batch_size given must agree), else
    8 when not given."""
    if args.global_batch is None:
        args.train_batch_size = args.train_batch_size or 8
        return
    if args.global_batch % world_size:
        raise InputError(f"--global_batch {args.global_batch} does not split evenly over {world_size} processes")
    share = args.global_batch // world_size
    if args.train_batch_size not in (None, share):
        raise InputError(f"--train_batch_size {args.train_batch_size} and --global_batch {args.global_batch} over "
                         f"{world_size} process(es) disagree: give one of them")
    args.train_batch_size = share


def model_config(args):
    """The GPT2Config of --model_card, or of the --init_checkpoint's own config (loading.resolve_config)."""
    from loranlg.loading import resolve_config

    if getattr(args, "config", None) is None:
        args.config = resolve_config(args.model_card, args.init_checkpoint, default="gpt2.md")
    return args.config


def build(args, ctx, log):
    """The model on ctx.device: random weights drawn on the CPU from --random_seed, then the checkpoints."""
    import torch

    from loranlg.loading import load_model, variant_kwargs
    from loranlg.model import describe_trainable

    torch.manual_seed(args.random_seed)
    random.seed(args.random_seed)
    if args.init_checkpoint is None:
        log(f"no --init_checkpoint: {args.model_card or 'gpt2.md'} starts from random weights")
    else:
        log(f"loading pretrained weights from {args.init_checkpoint}")
    model = load_model(model_config(args), args.lora_dim, args.lora_alpha, args.lora_dropout, args.init_checkpoint,
                       args.lora_checkpoint, **variant_kwargs(args))
    log(describe_trainable(model))
    return model.to(ctx.device)


def main(argv=None, stop_after_step=None, speed=None):
    """speed: train_step.SpeedOptions (default: from --no_cuda_graph and --compile)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    check_args(args)
    from loranlg.checkpoint import model_state
    from loranlg.distributed import cleanup, setup_distributed
    from loranlg.files import output_dir
    from loranlg.resume import RESUME_FILE, check_every_rank_sees
    from loranlg.run_guard import resume_command, work_dir_lock
    from loranlg.train import load_datasets, train
    from loranlg.train_step import SpeedOptions

    ctx = setup_distributed(args)
    args.resume_command = resume_command(__file__, argv, ctx.world_size)
    log = print if ctx.is_main else (lambda *a, **k: None)
    try:
        with output_dir(args.work_dir), work_dir_lock(args.work_dir, enabled=ctx.is_main):
            if args.resume:
                check_every_rank_sees(os.path.join(args.work_dir, RESUME_FILE), ctx)
            train_set, valid_set, notes = load_datasets(args, model_config(args).vocab_size)
            for note in notes:
                log(note, file=sys.stderr)
            log(f"rank {ctx.rank} of {ctx.world_size} on {ctx.device}; train {len(train_set.examples)} examples, "
                f"valid {len(valid_set.examples)} examples")
            model = build(args, ctx, log)
            return train(args, ctx, model, train_set, valid_set, model_state, speed or SpeedOptions.from_args(args),
                         stop_after_step=stop_after_step, log=print)
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    run_cli(main, exit_at_once=True)
