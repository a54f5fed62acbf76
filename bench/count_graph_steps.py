"""How beam search's decode steps run with CUDA graphs when contexts finish early, counted on the CPU.

    python bench/count_graph_steps.py --test_txt ../shared/data/e2e/test.txt --vocab ../shared/vocab
    python bench/count_graph_steps.py --data data/e2e/test.jsonl           # an encoded jsonl instead

gpt2_beam.py --cuda_graph runs a step three ways: replaying a graph, eagerly and then capturing a graph for
the later steps of its key width, or eagerly alone. Captures cost the host about two eager steps, and a
replay serves only until the cache changes: finished contexts leaving the batch discard its graphs. Which
steps run which way depends on the schedule alone (batches, key widths, when contexts finish), not on the
hardware, so it is counted here without a GPU: the steps run through tests/graph_emulation.py on gpt2.tiny
weights whose hypotheses end from position --end_at on (as bench_beam.py --end_at: E2E test contexts then
finish at different steps, as a trained model's outputs do). It prints one table: the rule in beam.py
(finished contexts leave when a quarter of the batch has finished and the next step needs a new graph
anyway) against the earlier rule (a quarter, at any step), same contexts, same run. "context-steps" counts
each context once per step it is computed in: work spent on contexts kept after they finished shows there.
"""

import argparse
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "bench")]

import torch  # noqa: E402

from bench_beam import encode_e2e  # noqa: E402
from graph_emulation import EmulatedGraphs  # noqa: E402
from loranlg import beam, kv_cache  # noqa: E402
from loranlg.beam_graph import GraphedDecode  # noqa: E402
from loranlg.checkpoint import build_model  # noqa: E402

EOS = 628  # "\n\n", the E2E recipe's --eos_token_id


class CountedDecode(GraphedDecode):
    """Counts eager steps and context-steps beside GraphedDecode's captures and replays."""

    def __init__(self, model):
        super().__init__(model, EmulatedGraphs())
        self.eager = self.context_steps = 0

    def __call__(self, tokens, cache):
        replays, captures = self.replays, self.captures
        logits = super().__call__(tokens, cache)
        self.eager += self.replays == replays and self.captures == captures
        self.context_steps += cache.contexts
        return logits


def any_step_rule(done, cache):
    """The rule before: a quarter of the batch finished, at any step (the graphs are then captured again)."""
    return sum(done) * 4 >= len(done)


def ending_model(end_at, seed=0):
    """gpt2.tiny whose hypotheses end from position end_at on: the position embeddings there point at EOS's
    embedding, made long enough for its logit to win over 50,257 random ones through two layers."""
    torch.manual_seed(seed)
    model = build_model("gpt2.tiny").eval()
    with torch.no_grad():
        eos = model.transformer.wte.weight[EOS]
        eos *= 3 / eos.norm()
        model.transformer.wpe.weight[end_at:] += 1000 * eos / eos.norm()
    return model


def count(model, batches, settings):
    decode = CountedDecode(model)
    for batch in batches:
        beam.beam_search(model, batch, settings, decode=decode)
    return decode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="encoded E2E test jsonl (gpt2_encode.py --add_bos --add_eos)")
    parser.add_argument("--test_txt", help="raw E2E test.txt, encoded here with --vocab (instead of --data)")
    parser.add_argument("--vocab", help="GPT-2 BPE folder for --test_txt")
    parser.add_argument("--batch_size", type=int, default=128, help="contexts a batch, as gpt2_beam.py's (default 128)")
    parser.add_argument("--beam", type=int, default=10, help="beams a context (default 10)")
    parser.add_argument("--eval_len", type=int, default=64, help="steps at most (default 64)")
    parser.add_argument("--key_block", type=int, default=kv_cache.KEY_BLOCK,
                        help=f"key slots a width grows by (kv_cache.KEY_BLOCK, default {kv_cache.KEY_BLOCK}): fewer "
                             "widths, fewer captures, more masked keys read a step")
    parser.add_argument("--end_at", type=int, default=60,
                        help="position from which hypotheses end (default 60; E2E test contexts have 21-47 tokens)")
    args = parser.parse_args()
    kv_cache.KEY_BLOCK = args.key_block
    data = args.data
    if data is None:
        if not (args.test_txt and args.vocab):
            parser.error("give --data, or --test_txt and --vocab")
        data = os.path.join(os.environ.get("TMPDIR", "/tmp"), "count_graph_steps_test.jsonl")
        encode_e2e(args.test_txt, args.vocab, data)
    contexts, _ = beam.read_contexts(data, 512, args.eval_len, 50257)
    batches = beam.distinct_batches(contexts, args.batch_size)
    settings = beam.BeamSettings(beam=args.beam, eval_len=args.eval_len, length_penalty=0.8,
                                 no_repeat_ngram_size=4, eos_ids=(EOS,))
    model = ending_model(args.end_at)
    now = count(model, batches, settings)
    current_rule, beam.worth_dropping = beam.worth_dropping, any_step_rule
    try:
        before = count(model, batches, settings)
    finally:
        beam.worth_dropping = current_rule

    print(f"\n{sum(map(len, batches))} distinct contexts in {len(batches)} batches of up to {args.batch_size}, "
          f"beam {args.beam}, eval_len {args.eval_len}, key widths in blocks of {args.key_block}, hypotheses ending "
          f"from position {args.end_at} on\n")
    print("| finished contexts leave | steps | replays | eager + capture | eager only | context-steps |")
    print("|---|---|---|---|---|---|")
    for name, d in (("when a new graph is due (beam.py)", now), ("at any step (before)", before)):
        steps = d.replays + d.captures + d.eager
        print(f"| {name} | {steps} | {d.replays} | {d.captures} | {d.eager} | {d.context_steps:,} |")


if __name__ == "__main__":
    main()
