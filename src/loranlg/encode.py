"""Formatted JSON lines -> GPT-2 token ids, as the original gpt2_encode.py writes them (SPEC 2).

Per line: {"context": bpe(context) [+ 50256], "completion": bpe(" " + completion) [+ 50256]}; other keys
(WebNLG's "cate") are not carried over, like the original. Lines are encoded in batches by the tokenizers
library, so the 42k-line E2E train split takes seconds.
"""

import json
import sys

from . import flags
from .errors import InputError
from .files import atomic_output, read_jsonl
from .tokenizer import EOT_ID, GPT2BPE

BATCH_LINES = 8192


def _text_pairs(path):
    """Yield (context, completion) strings of a formatted jsonl, checking their types with file:line."""
    for number, record in read_jsonl(path, required=("context", "completion")):
        for key in ("context", "completion"):
            if not isinstance(record[key], str):
                raise InputError(f"{key!r} should be a string, found {type(record[key]).__name__}", path, number)
        yield record["context"], record["completion"]


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_pairs(bpe, pairs, add_bos=False, add_eos=False):
    """Encode a list of (context, completion) into a list of {"context": ids, "completion": ids}."""
    contexts = bpe.encode_batch([context for context, _ in pairs])
    completions = bpe.encode_batch([" " + completion for _, completion in pairs])
    bos = [EOT_ID] if add_bos else []
    eos = [EOT_ID] if add_eos else []
    return [{"context": c + bos, "completion": t + eos} for c, t in zip(contexts, completions)]


def encode_file(vocab_dir, input_path, output_path, add_bos=False, add_eos=False):
    """Encode a formatted jsonl into ids; returns the number of lines. No output unless all lines are valid."""
    bpe = GPT2BPE(vocab_dir)
    count = 0
    with atomic_output(output_path) as out:
        for batch in _batches(_text_pairs(input_path), BATCH_LINES):
            for record in encode_pairs(bpe, batch, add_bos, add_eos):
                out.write(json.dumps(record) + "\n")
            count += len(batch)
        if not count:
            raise InputError(f"no examples in the input, so no output ({output_path} not written)", input_path)
    print(f"{input_path} -> {output_path}: {count} examples", file=sys.stderr)
    return count


def encode_main(argv=None):
    """The `gpt2_encode.py` command."""
    parser = flags.Parser(
        prog="gpt2_encode.py",
        description='Encode a formatted jsonl ({"context": text, "completion": text} a line) into GPT-2 BPE ids: '
                    '{"context": ids, "completion": ids} a line; the completion is encoded with a leading space.')
    parser.add_argument("--vocab", required=True, metavar="DIR",
                        help="directory with the GPT-2 vocabulary: encoder.json + vocab.bpe, or the hub's "
                             "vocab.json + merges.txt (scripts/download_pretrained_checkpoints.sh puts them in "
                             "pretrained_checkpoints/)")
    parser.add_argument("--input", required=True, metavar="FILE", help="formatted jsonl to encode")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="encoded jsonl to write (written only if the whole input is valid)")
    parser.add_argument("--add_bos", action="store_true",
                        help="append <|endoftext|> (id 50256) to each context: it separates context and completion")
    parser.add_argument("--add_eos", action="store_true",
                        help="append <|endoftext|> (id 50256) to each completion: it ends the text")
    args = parser.parse_args(argv)
    encode_file(args.vocab, args.input, args.output, args.add_bos, args.add_eos)
    return 0
