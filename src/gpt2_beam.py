"""gpt2_beam.py: the paper's beam search over an encoded jsonl (the algorithm: loranlg.beam; SPEC 6).

One process:  python src/gpt2_beam.py --data data/e2e/test.jsonl --model_card gpt2.md ...
Several GPUs: torchrun --nproc_per_node=N src/gpt2_beam.py ...   (or python -m torch.distributed.launch)

The file's distinct contexts are sorted longest first, dealt out to the processes, decoded in batches of
--batch_size, and written back in line order by the first process.
"""

import argparse
import json
import os
import sys
import time

# Only torch-free modules here, so that --help answers at once; the rest is imported once the flags are read.
from loranlg import flags
from loranlg.errors import InputError, run_cli
from loranlg.files import atomic_output, output_dir, read_jsonl
from loranlg.flags import (PRECISION_NAMES, add_distributed_args, add_lora_variant_args, add_model_args,
                           check_lora_variant_args)
from loranlg.progress import Progress
from loranlg.tokenizer import EOT_ID


def build_parser():
    parser = flags.Parser(
        prog="gpt2_beam.py",
        description="Beam search with GPT-2 (+ LoRA) over the contexts of an encoded jsonl, as the LoRA "
                    "paper's gpt2_beam.py decodes them at --batch_size 1, at any batch size. Writes "
                    'work_dir/output_file: one {"id": line index, "predict": [ids]} a line, in line order.')
    parser.add_argument("--data", required=True, metavar="FILE",
                        help='encoded jsonl ({"context": [ids], ...} a line, from gpt2_encode.py); lines that '
                             "share a context are decoded once")
    parser.add_argument("--batch_size", type=batch_size, default=10, metavar="N|auto",
                        help="distinct contexts decoded together (each with --beam beams); larger is faster "
                             "and gives the same output. auto: on a GPU, as many as its free memory holds (all "
                             "of them when they fit: the fewest steps), on the CPU up to "
                             f"{CPU_AUTO_BATCH} (default 10, the original's; scripts/beam.sh passes auto)")
    parser.add_argument("--seq_len", type=flags.integer(2), default=512,
                        help="context + generated tokens at most: a context keeps its last "
                             "seq_len - eval_len tokens (default 512)")
    parser.add_argument("--eval_len", type=flags.positive_int, default=256,
                        help="tokens to generate at most; outputs are right-padded with 0 to this length "
                             "(default 256; the E2E recipe uses 64)")
    parser.add_argument("--min_length", type=flags.count, default=0,
                        help="EOS ids are blocked while fewer tokens than this have been generated (default 0)")
    add_model_args(parser, default_card="gpt2.sm")
    add_lora_variant_args(parser.add_argument_group("LoRA variants of the checkpoint (docs/lora-variants.md; "
                                                    "merged before decoding)"), training=False)
    parser.add_argument("--work_dir", default=os.getenv("PT_OUTPUT_DIR", "gpt2_model"),
                        help="output folder (default $PT_OUTPUT_DIR or gpt2_model)")
    parser.add_argument("--beam", type=flags.positive_int, default=1, help="beam size (default 1; the E2E recipe uses 10)")
    parser.add_argument("--length_penalty", type=flags.finite, default=1.0,
                        help="a finished hypothesis scores sum(log p) / length**length_penalty (default 1.0)")
    parser.add_argument("--no_repeat_ngram_size", type=flags.count, default=4,
                        help="never complete an n-gram of this size already among the generated tokens "
                             "(0: off) (default 4)")
    parser.add_argument("--repetition_penalty", type=flags.positive, default=1.0,
                        help="CTRL penalty on logits of tokens already generated (1.0: off) (default 1.0)")
    parser.add_argument("--eos_token_id", action="append", type=flags.count, default=[EOT_ID],
                        help="an id that ends a hypothesis; repeat the flag for more. Appends to the default "
                             "[50256]; the recipes add 628 ('\\n\\n')")
    parser.add_argument("--output_file", default="beam_prediction.jsonl",
                        help="file name inside --work_dir (default beam_prediction.jsonl)")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_NAMES,
                        help="weights and activations; scores and the beam arithmetic stay in float32 "
                             "(default fp32, like the original; bf16 is faster on GPUs)")
    parser.add_argument("--timing", action="store_true",
                        help="print where the time went on stderr at the end (start-up parts, prefill, decode "
                             "steps, beam work, output); waits for the GPU after each start-up part")
    add_distributed_args(parser)
    return parser


CPU_AUTO_BATCH = 16  # --batch_size auto on the CPU: larger batches gain little there
GPU_MEMORY_SHARE = 0.8  # of the free memory, for --batch_size auto: the rest for what the estimate leaves out


def batch_size(text):
    """--batch_size: a positive whole number, or auto."""
    if text == "auto":
        return text
    try:
        return flags.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or auto, got {text!r}") from None


def check_args(args, config):
    if args.lora_checkpoint is not None and args.init_checkpoint is None:
        raise InputError(f"--lora_checkpoint {args.lora_checkpoint} holds LoRA tensors, which need the base model "
                         "they were trained on: pass its weights with --init_checkpoint (e.g. "
                         "pretrained_checkpoints/gpt2-medium-pytorch_model.bin)")
    try:
        check_lora_variant_args(args)
    except ValueError as err:
        raise InputError(str(err)) from None
    if args.beam > config.vocab_size:
        raise InputError(f"--beam {args.beam} is larger than the vocabulary ({config.vocab_size})")
    if args.seq_len - args.eval_len < 1:
        raise InputError(f"--seq_len ({args.seq_len}) must exceed --eval_len ({args.eval_len}): contexts get "
                         "seq_len - eval_len tokens")
    if args.seq_len > config.n_positions:
        raise InputError(f"--seq_len {args.seq_len} exceeds the model's {config.n_positions} positions")
    bad = [t for t in args.eos_token_id if not 0 <= t < config.vocab_size]
    if bad:
        raise InputError(f"--eos_token_id {bad[0]} is outside the vocabulary (0..{config.vocab_size - 1})")


def settings_from_args(args):
    from loranlg.beam import BeamSettings

    return BeamSettings(beam=args.beam, eval_len=args.eval_len, length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram_size,
                        repetition_penalty=args.repetition_penalty, min_length=args.min_length,
                        eos_ids=tuple(args.eos_token_id))


def load_decoder(args, device, mark=lambda name: None):
    """The model with LoRA merged, in --precision on `device`, with the padded head. mark(name): called after
    each part (timing.Timeline.phase)."""
    import torch

    from loranlg.decoder import Decoder
    from loranlg.loading import load_model, resolve_config, variant_kwargs
    from loranlg.precision import PRECISIONS

    torch.manual_seed(0)  # without checkpoints the weights are random, and the same on every rank
    model = load_model(resolve_config(args.model_card, args.init_checkpoint, default="gpt2.sm"), args.lora_dim,
                       args.lora_alpha, init_checkpoint=args.init_checkpoint, lora_checkpoint=args.lora_checkpoint,
                       device=device, merge=True, mark=mark, **variant_kwargs(args))
    decoder = Decoder(model.to(device, PRECISIONS[args.precision]).eval(), pad_head=True)
    mark("cast, padded head")
    return decoder


def auto_batch_size(decoder, contexts, settings):
    """--batch_size auto for these contexts (a rank's share): on a GPU as many as GPU_MEMORY_SHARE of its free
    memory holds (beam.bytes_per_context at the longest), all of them when they fit; on the CPU up to
    CPU_AUTO_BATCH. Returns (size, a note saying why)."""
    import torch

    from loranlg.beam import bytes_per_context

    if not contexts:
        return 1, "no contexts"
    if decoder.device.type != "cuda":
        size = min(len(contexts), CPU_AUTO_BATCH)
        return size, f"{size} contexts a batch (on the CPU at most {CPU_AUTO_BATCH})"
    torch.cuda.empty_cache()  # what the caching allocator holds unused counts as free
    free = torch.cuda.mem_get_info(decoder.device)[0]
    each = bytes_per_context(decoder, max(map(len, contexts)), settings)
    size = max(1, min(len(contexts), int(free * GPU_MEMORY_SHARE) // each))
    batches = -(-len(contexts) // size)
    return size, (f"{size} contexts a batch, {batches} batch(es) ({each / 2**20:.0f} MiB a context at most, "
                  f"{free / 2**30:.1f} GiB free on the GPU)")


def my_contexts(contexts, rank=0, world_size=1):
    """This rank's distinct contexts, longest first (little padding, the largest memory first)."""
    distinct = sorted(set(contexts), key=lambda c: (-len(c), c))
    return distinct[rank::world_size]


def read_contexts(path, seq_len, eval_len, vocab_size):
    """The encoded jsonl's contexts, each cut to its last seq_len - eval_len ids; (contexts, cut count)."""
    from loranlg.data import token_list

    keep = seq_len - eval_len
    contexts, cut = [], 0
    for number, record in read_jsonl(path, required=("context",)):
        context = token_list(record["context"], "context", vocab_size, path, number)
        if len(context) > keep:
            context, cut = context[-keep:], cut + 1
        contexts.append(tuple(context))
    if not contexts:
        raise InputError("no examples: the file is empty", path)
    return contexts, cut


def distinct_batches(contexts, batch_size, rank=0, world_size=1):
    """This rank's batches of distinct contexts, longest first (little padding, the largest memory first)."""
    mine = my_contexts(contexts, rank, world_size)
    return [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]


def decode_contexts(decoder, batches, settings, progress, clock=None):
    """{context: ids} for every context of these batches. clock: a timing.Timeline for the search's laps."""
    from loranlg.beam import beam_search

    results = {}
    for batch in batches:
        for context, ids in zip(batch, beam_search(decoder, list(map(list, batch)), settings, clock=clock)):
            results[context] = ids
        progress.advance(len(batch))
    return results


def contexts_progress(total, enabled, label):
    """Contexts per second on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""
    def text(progress):
        return f"{label}: {progress.done}/{progress.total} contexts, {progress.rate():.1f} contexts/s"

    return Progress(total, text, enabled=enabled, every_seconds=10)


def write_predictions(path, contexts, results):
    with atomic_output(path) as out:
        for index, context in enumerate(contexts):
            out.write(json.dumps({"id": index, "predict": results[context]}) + "\n")


def run(args):
    from loranlg.timing import NoTimeline, Timeline

    timeline = Timeline() if args.timing else NoTimeline()
    from loranlg.distributed import cleanup, gather_objects, setup_distributed
    from loranlg.loading import resolve_config

    timeline.phase("import torch, loranlg")
    ctx = setup_distributed(args)
    timeline.use_device(ctx.device)
    timeline.phase("device setup (CUDA)")
    try:
        out_path = os.path.join(args.work_dir, args.output_file)
        config = resolve_config(args.model_card, args.init_checkpoint, default="gpt2.sm")
        check_args(args, config)
        settings = settings_from_args(args)
        with output_dir(args.work_dir):  # on every rank: they must all fail alike, or the others would wait
            if os.path.isdir(out_path):
                raise InputError("is a directory; give a file name for --output_file", out_path)
            contexts, cut = read_contexts(args.data, args.seq_len, args.eval_len, config.vocab_size)
            if cut and ctx.is_main:
                print(f"note: {cut} context(s) longer than seq_len - eval_len = {args.seq_len - args.eval_len} "
                      "tokens keep only their last tokens, as in the original", file=sys.stderr)
            timeline.phase("read contexts")
            decoder = load_decoder(args, ctx.device, timeline.phase)
        mine = my_contexts(contexts, ctx.rank, ctx.world_size)
        size = args.batch_size
        if size == "auto":
            size, why = auto_batch_size(decoder, mine, settings)
            if ctx.is_main:
                print(f"beam: --batch_size auto: {why}", file=sys.stderr)
        batches = [mine[start:start + size] for start in range(0, len(mine), size)]
        label = f"beam (rank 0 of {ctx.world_size})" if ctx.distributed else "beam"
        progress = contexts_progress(len(mine), ctx.is_main, label)
        timeline.phase("choose batches")
        start = time.perf_counter()
        results = decode_contexts(decoder, batches, settings, progress, timeline)
        progress.finish()
        gathered = gather_objects(results, ctx)
        timeline.phase("gather, progress")
        if ctx.is_main:
            merged = {}
            for part in gathered:
                merged.update(part)
            write_predictions(out_path, contexts, merged)
            seconds = time.perf_counter() - start
            print(f"beam: {len(merged)} distinct contexts ({len(contexts)} lines) in {seconds:.1f} s, "
                  f"{len(merged) / max(seconds, 1e-9):.1f} contexts/s on {ctx.world_size} process(es); "
                  f"wrote {out_path}", file=sys.stderr)
        timeline.phase("write output")
    finally:
        cleanup(ctx)
    if ctx.is_main:
        timeline.report()


def main(argv=None):
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main, exit_at_once=True)  # no teardown of torch and the CUDA context once the output is written
