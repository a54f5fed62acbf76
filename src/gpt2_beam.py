"""gpt2_beam.py: the paper's beam search over an encoded jsonl (see loranlg.beam and SPEC 6).

One process:  python src/gpt2_beam.py --data data/e2e/test.jsonl --model_card gpt2.md ...
Several GPUs: torchrun --nproc_per_node=N src/gpt2_beam.py ...   (or python -m torch.distributed.launch)
"""

import argparse
import os

from loranlg.beam import PRECISIONS, run_beam
from loranlg.distributed import add_distributed_args
from loranlg.errors import run_cli
from loranlg.kv_cache import ATTENTION
from loranlg.model import CARDS
from loranlg.tokenizer import EOT_ID


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gpt2_beam.py",
        description="Beam search with GPT-2 (+ LoRA) over the contexts of an encoded jsonl, as the LoRA "
                    "paper's gpt2_beam.py decodes them at --batch_size 1, at any batch size. Writes "
                    'work_dir/output_file: one {"id": line index, "predict": [ids]} a line, in line order.')
    parser.add_argument("--data", required=True, metavar="FILE",
                        help='encoded jsonl ({"context": [ids], ...} a line, from gpt2_encode.py); lines that '
                             "share a context are decoded once")
    parser.add_argument("--batch_size", type=int, default=10,
                        help="distinct contexts decoded together (each with --beam beams); larger is faster "
                             "and gives the same output (default 10)")
    parser.add_argument("--seq_len", type=int, default=512,
                        help="context + generated tokens at most: a context keeps its last "
                             "seq_len - eval_len tokens (default 512)")
    parser.add_argument("--eval_len", type=int, default=256,
                        help="tokens to generate at most; outputs are right-padded with 0 to this length "
                             "(default 256; the E2E recipe uses 64)")
    parser.add_argument("--min_length", type=int, default=0,
                        help="EOS ids are blocked while fewer tokens than this have been generated (default 0)")
    parser.add_argument("--model_card", default="gpt2.sm", choices=list(CARDS),
                        help="model size: gpt2.sm / gpt2.md / gpt2.lg (GPT-2 small / medium / large), or our "
                             "small test cards (default gpt2.sm)")
    parser.add_argument("--init_checkpoint", default=None, metavar="FILE",
                        help="base weights (hub GPT-2 .bin/.safetensors, or a full checkpoint of gpt2_ft.py, "
                             "which may also hold the LoRA tensors); without it the weights are random "
                             "(seeded: for benchmarks)")
    parser.add_argument("--lora_checkpoint", default=None, metavar="FILE",
                        help="LoRA tensors saved separately from the base weights (optional)")
    parser.add_argument("--lora_dim", type=int, default=0,
                        help="LoRA rank r of the checkpoint (0: no LoRA) (default 0)")
    parser.add_argument("--lora_alpha", type=int, default=128, help="LoRA alpha of the checkpoint (default 128)")
    parser.add_argument("--work_dir", default=os.getenv("PT_OUTPUT_DIR", "gpt2_model"),
                        help="output folder (default $PT_OUTPUT_DIR or gpt2_model)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (default 1; the E2E recipe uses 10)")
    parser.add_argument("--length_penalty", type=float, default=1.0,
                        help="a finished hypothesis scores sum(log p) / length**length_penalty (default 1.0)")
    parser.add_argument("--no_repeat_ngram_size", type=int, default=4,
                        help="never complete an n-gram of this size already among the generated tokens "
                             "(0: off) (default 4)")
    parser.add_argument("--repetition_penalty", type=float, default=1.0,
                        help="CTRL penalty on logits of tokens already generated (1.0: off) (default 1.0)")
    parser.add_argument("--eos_token_id", action="append", type=int, default=[EOT_ID],
                        help="an id that ends a hypothesis; repeat the flag for more. Appends to the default "
                             "[50256]; the recipes add 628 ('\\n\\n')")
    parser.add_argument("--output_file", default="beam_prediction.jsonl",
                        help="file name inside --work_dir (default beam_prediction.jsonl)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="weights and activations; scores and the beam arithmetic stay in float32 "
                             "(default fp32, like the original; bf16 is faster on GPUs)")
    parser.add_argument("--cuda_graph", action="store_true",
                        help="on a GPU, replay the model's part of each decode step as a CUDA graph (the same "
                             "kernels with less host time). Experimental: not yet measured on a GPU, so off by "
                             "default (BENCHMARKS.md)")
    parser.add_argument("--attention", default="sdpa", choices=list(ATTENTION),
                        help="the decode steps' attention: sdpa (PyTorch's kernels) or triton (a kernel of ours "
                             "for few queries over a long cache; bf16/fp16 on a GPU with Triton, otherwise "
                             "sdpa is used, with a note). Experimental: not yet measured on a GPU (default sdpa)")
    add_distributed_args(parser)
    return parser


def main(argv=None):
    run_beam(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
