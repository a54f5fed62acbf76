"""gpt2_export.py: a GPT-2 (+ LoRA) out to the Hugging Face ecosystem, or to the original's LoRA file.

The model is read with the same flags as gpt2_ft.py / gpt2_beam.py, then written as one of:
  merged  LoRA folded into the weights: a transformers model directory (config.json, model.safetensors and,
          with --vocab, the tokenizer files): GPT2LMHeadModel.from_pretrained(DIR)
  peft    a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) on the base model's
          c_attn: PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), DIR). Our LoRA on the q and
          v slices of c_attn is written as the exactly equal rank-2r LoRA of the whole c_attn
          (loranlg/hf_formats.py says why)
  lora    the original's LoRA-only .pt ({"model_state_dict": {"module.transformer.h.{i}.attn.c_attn.lora_A"...}})
--init_checkpoint (the base weights) is required for merged; peft and lora write only the LoRA tensors.
Bad input stops with one "error: ..." line and exit code 2.

  python src/gpt2_export.py --model_card gpt2.md --init_checkpoint pretrained_checkpoints/gpt2-medium-pytorch_model.bin \\
      --lora_checkpoint trained_models/GPT2_M/e2e/model.26290.pt --lora_dim 4 --lora_alpha 32 \\
      --format peft --output exports/gpt2-medium-e2e-lora
"""

import argparse
import os
import sys

# Only torch-free modules here, so that --help answers at once; the rest is imported once the flags are read.
from loranlg.errors import InputError, run_cli
from loranlg.files import check_writable_dir
from loranlg.flags import add_lora_variant_args, add_model_args, check_lora_variant_args

FORMATS = ("merged", "peft", "lora")
LORA_FILE = "lora.pt"


def build_parser():
    parser = argparse.ArgumentParser(prog="gpt2_export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="merged: a transformers model directory with LoRA folded in; peft: a PEFT LoRA adapter "
                             "directory; lora: the original's LoRA-only .pt")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="the directory to write (created if needed; files of the same names are replaced). "
                             f"For --format lora a path ending in .pt is the file itself, else DIR/{LORA_FILE}")
    add_model_args(parser, default_card=None)  # base weights needed for --format merged only
    add_lora_variant_args(parser.add_argument_group("LoRA variants of the checkpoint (docs/lora-variants.md); "
                                                    "PEFT expresses each (targets, use_rslora, use_dora)"),
                          training=False)
    parser.add_argument("--vocab", default=None, metavar="DIR",
                        help="--format merged: also write the tokenizer (vocab.json, merges.txt, "
                             "tokenizer_config.json) from this vocabulary directory (encoder.json + vocab.bpe, or "
                             "vocab.json + merges.txt)")
    parser.add_argument("--base_model", default=None, metavar="NAME",
                        help="--format peft: the base model named in adapter_config.json (base_model_name_or_path), "
                             "e.g. a hub id to publish with. Default: the --init_checkpoint directory when it is a "
                             "transformers model, else the hub id of gpt2.sm/md/lg (openai-community/gpt2...)")
    return parser


def check_args(args):
    if args.vocab is not None and args.format != "merged":
        raise InputError(f"--vocab applies to --format merged only (not {args.format})")
    if args.base_model is not None and args.format != "peft":
        raise InputError(f"--base_model applies to --format peft only (not {args.format})")
    if args.format == "merged" and args.init_checkpoint is None:
        raise InputError("missing base: --format merged needs the base weights (--init_checkpoint)")
    if args.format != "merged" and args.lora_checkpoint is None and args.init_checkpoint is None:
        raise InputError(f"nothing to export: --format {args.format} writes LoRA tensors; give --lora_checkpoint "
                         "(or an --init_checkpoint that holds them)")
    try:
        check_lora_variant_args(args)
    except ValueError as err:
        raise InputError(str(err)) from None


def lora_path(output):
    return output if output.endswith((".pt", ".bin")) else os.path.join(output, LORA_FILE)


def export(args):
    check_args(args)
    import torch

    from loranlg.checkpoint import describe_shape, export_merged, save_lora
    from loranlg.hf_formats import default_base_model, write_peft_adapter, write_tokenizer
    from loranlg.loading import load_model, resolve_config, variant_kwargs
    from loranlg.lora_variants import config_targets, describe_variant

    config = resolve_config(args.model_card, args.init_checkpoint)
    torch.manual_seed(0)  # without --init_checkpoint the (unwritten) base weights are random
    model = load_model(config, args.lora_dim, args.lora_alpha, init_checkpoint=args.init_checkpoint,
                       lora_checkpoint=args.lora_checkpoint, **variant_kwargs(args)).eval()
    config = model.config
    if args.format != "merged" and config.lora_dim == 0:
        raise InputError(f"nothing to export: the model has no LoRA; --format {args.format} writes LoRA tensors "
                         "(pass --lora_dim / --lora_alpha with a LoRA checkpoint)")
    size = describe_shape(config.n_embd, config.n_layer)
    lora = "no LoRA" if config.lora_dim == 0 else \
        f"LoRA r={config.lora_dim} alpha={config.lora_alpha:g} on {describe_variant(config)}"
    if args.format == "lora":
        path = lora_path(args.output)
        check_writable_dir(os.path.dirname(os.path.abspath(path)))
        if config_targets(config) != ("q", "v"):
            print(f"note: this LoRA adapts {','.join(config_targets(config))}; our commands read the file, the "
                  "original's code reads q,v LoRA only", file=sys.stderr)
        save_lora(model, path)
        written = path
    else:
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise InputError("exists and is not a directory", args.output)
        check_writable_dir(args.output)
        if args.format == "merged":
            export_merged(model, args.output)
            if args.vocab is not None:
                write_tokenizer(args.vocab, args.output, config)
        else:
            base = args.base_model or default_base_model(args.model_card, args.init_checkpoint)
            write_peft_adapter(model, args.output, base_model=base)
        written = args.output
    print(f"gpt2_export: wrote {written} ({args.format}: {size}, {lora})", file=sys.stderr)
    return written


def main(argv=None):
    return export(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
