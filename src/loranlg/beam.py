"""The paper's beam search (SPEC 6), batched over many contexts, with the semantics of the original at
--batch_size 1 whatever the batch size.

For one context (B beams, V tokens): the logits are processed (repetition penalty, EOS blocked before
min_length, no-repeat-ngram over the generated tokens), turned into log-probabilities as log(softmax);
step 0 keeps the B best tokens of the one distribution, every later step the B best of the B*V
candidates beam score + log p (torch.topk order). After each step a beam that ends in an EOS id becomes a
hypothesis scored beam score / L**length_penalty and its score becomes -inf; after eval_len steps every
beam is one. A hypothesis replaces the best only when strictly better. The output is the best hypothesis's
ids right-padded with 0 to eval_len.

Here many contexts of different lengths share one batch: they are right-padded to the longest, the key/value
cache (kv_cache.py) holds each context's prompt once and each beam's generated keys where they were written,
and every step is a handful of tensor operations over all rows (no loop over beams or the vocabulary). A
context stops being computed once no future hypothesis can beat its best.
"""

import collections
import json
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .beam_graph import GraphedDecode
from .data import token_list
from .decode_attention import BLOCK_QUERIES
from .errors import InputError
from .files import atomic_output, check_writable_dir, read_jsonl
from .kv_cache import attention_usable
from .model import GPT2Config
from .tokenizer import EOT_ID

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BeamSettings:
    beam: int = 1
    eval_len: int = 256
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    min_length: int = 0
    eos_ids: tuple = (EOT_ID,)


# ---------------------------------------------------------------- one step's scores

def process_logits(logits, history, settings):
    """The original's processing of next-token logits [R, V], in place. history: [R, i] generated ids
    (None at step 0), so i is the step index."""
    step = 0 if history is None else history.shape[1]
    penalty = settings.repetition_penalty
    if penalty != 1.0 and step > 0:
        seen = logits.gather(1, history)  # a repeated id reads and writes the same value: penalised once
        logits.scatter_(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))
    if step < settings.min_length and settings.eos_ids:
        logits[:, list(settings.eos_ids)] = NEG_INF
    n = settings.no_repeat_ngram_size
    if n > 0 and step >= n:  # at least one complete n-gram in the history
        windows = history.unfold(1, n, 1)  # [R, step - n + 1, n]
        prefix = history[:, step - n + 1:]  # the last n - 1 tokens
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)
        ban = torch.full(match.shape, float("inf"), dtype=logits.dtype, device=logits.device)
        ban.masked_fill_(match, NEG_INF)
        logits.scatter_reduce_(1, windows[:, :, -1], ban, reduce="amin")  # +inf leaves a logit as it is
    return logits


def top_log_probs(logits, history, settings, dtype, k):
    """The k best next tokens of each row of logits [R, V] after processing, best first, and their
    log-probabilities (the original's log(softmax), not log_softmax, in `dtype`): (log p [R, k], ids [R, k]).

    log(softmax(x)) never decreases where a row's logit grows, so the k largest processed logits are k best
    log-probabilities: the softmax is computed once and read at k places, with no full-size log, sum or
    top-k over B * V. Processing changes the logits in place; with no repetition penalty it only writes
    -inf, exact in any type, so low-precision logits are not first copied to `dtype`. Logits past the
    vocabulary (model.pad_head_for_inference's padding) are -inf and never picked."""
    x = logits if settings.repetition_penalty == 1.0 else logits.to(dtype)
    x = process_logits(x, history, settings)
    probs = torch.softmax(x, dim=-1, dtype=dtype)
    # one torch.topk over the whole row: a two-stage top-k over chunks of the row (third session) was 5.5x
    # slower on an H100 (3.2 ms against 0.57 ms at 1,280 x 50,304 in bf16) and 5x on the CPU
    ids = torch.topk(x, k, dim=1).indices
    return torch.log(probs.gather(1, ids)), ids


# ---------------------------------------------------------------- finished hypotheses

class BestHypotheses:
    """Per context: the best finished hypothesis so far (score, ids) and whether there is one."""

    def __init__(self, contexts, eval_len, length_penalty, device, dtype):
        self.eval_len = eval_len
        self.length_penalty = length_penalty
        self.score = torch.full((contexts,), NEG_INF, dtype=dtype, device=device)
        self.found = torch.zeros(contexts, dtype=torch.bool, device=device)
        self.ids = torch.zeros(contexts, eval_len, dtype=torch.long, device=device)

    def add(self, beam_scores, history, finished):
        """Beams [N, B] with `finished` become hypotheses; returns the beam scores with those set to -inf.

        Equivalent to the original's scan in beam order with a strict comparison: the first beam holding
        the step's maximum wins, and only if it beats the stored best (or there is none)."""
        contexts, beams = beam_scores.shape
        length = history.shape[1]
        scores = (beam_scores / length ** self.length_penalty).masked_fill(~finished, NEG_INF)
        top = scores.max(dim=1).values
        pick = torch.where(top == NEG_INF, finished.int().argmax(dim=1), scores.argmax(dim=1))
        update = finished.any(dim=1) & (~self.found | (top > self.score))
        rows = torch.arange(contexts, device=history.device) * beams + pick
        chosen = history.index_select(0, rows)
        self.ids[:, :length] = torch.where(update[:, None], chosen, self.ids[:, :length])
        self.score = torch.where(update, top, self.score)
        self.found |= update
        return beam_scores.masked_fill(finished, NEG_INF)

    def can_improve(self, beam_scores, steps_done):
        """Whether a later hypothesis could still replace the best, per context.

        Log-probabilities are <= 0, so every future beam score is <= today's best beam score s <= 0, and
        its hypothesis score s' / L**lp <= s / max(L**lp) over the lengths still to come."""
        lengths = range(min(steps_done + 1, self.eval_len), self.eval_len + 1)
        largest_divisor = max(length ** self.length_penalty for length in lengths)
        bound = beam_scores.max(dim=1).values / largest_divisor
        return ~self.found | (bound > self.score)

    def keep(self, index):
        self.score, self.found, self.ids = self.score[index], self.found[index], self.ids[index]


# ---------------------------------------------------------------- one batch of contexts

def pad_contexts(contexts, device):
    lengths = torch.tensor([len(c) for c in contexts], dtype=torch.long)
    ids = torch.zeros(len(contexts), int(lengths.max()), dtype=torch.long)
    for row, context in enumerate(contexts):
        ids[row, :len(context)] = torch.tensor(context, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def score_dtype(model):
    return torch.float64 if model.transformer.wte.weight.dtype == torch.float64 else torch.float32


class LaggedFlags:
    """Per-context "finished" flags copied to the host without waiting, and read two steps later: the host
    then never stalls on the step it has just queued. Late is safe: a context that cannot improve its best
    hypothesis keeps it however long it is still computed (BestHypotheses.can_improve)."""

    def __init__(self, device):
        self.device = device
        self.pending = collections.deque()

    def post(self, flags):
        if self.device.type == "cuda":
            host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = flags.clone(), None
        self.pending.append((host, event))

    def take(self):
        """The oldest flags once two steps have been posted after them, else None."""
        if len(self.pending) < 2:
            return None
        host, event = self.pending.popleft()
        if event is not None:
            event.synchronize()
        return host.tolist()

    def clear(self):  # the rows they describe have moved
        self.pending.clear()


# cuDNN's attention is left out: it builds an execution plan for every new shape, and the number of keys
# grows at every step (about 40 ms a step on an H100, and a second to load the library).
ATTENTION_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def worth_dropping(done, cache):
    """Whether to drop the finished contexts from the batch now. All finished: the batch ends. Otherwise a
    quarter must have finished to be worth copying the cache, and the next step must have no CUDA graph
    (beam_graph.py): dropping rows discards the cache's graphs, so with graphs the drop waits for the next key
    width, which needs a new graph anyway (within KEY_BLOCK / beams steps, rounded up; finished contexts
    cannot change their result, LaggedFlags). Without graphs there are none to wait for."""
    finished = sum(done)
    if finished == len(done):
        return True
    return finished * 4 >= len(done) and cache.width_at(cache.steps) not in cache.graphs


@torch.no_grad()
def beam_search(model, contexts, settings, early_stop=True, stats=None, cuda_graphs=False, attention="sdpa",
                decode=None):
    """Decode a batch of contexts (lists of ids); returns one list of eval_len ids per context.
    cuda_graphs: replay the decode steps as CUDA graphs (beam_graph.py) when on a GPU.
    attention: the decode steps' attention kernel, "sdpa" or "triton" (kv_cache.ATTENTION).
    decode: the decode step itself, (tokens, cache) -> padded logits, instead (tests)."""
    device = model.transformer.wte.weight.device
    if decode is None and cuda_graphs and device.type == "cuda":
        decode = GraphedDecode(model)
    elif decode is None:
        def decode(tokens, cache):
            return model.decode_step(tokens, cache, padded=True)
    with sdpa_kernel(ATTENTION_KERNELS):
        results = _beam_search(model, contexts, settings, early_stop, stats, decode, attention)
    if stats is not None:
        for name in ("captures", "replays"):
            stats[name] = stats.get(name, 0) + getattr(decode, name, 0)
    return results


def _beam_search(model, contexts, settings, early_stop, stats, decode, attention):
    device = model.transformer.wte.weight.device
    dtype = score_dtype(model)
    beams, eval_len = settings.beam, settings.eval_len
    ids, lengths = pad_contexts(contexts, device)
    vocab = model.config.vocab_size
    if beams > vocab:
        raise InputError(f"--beam {beams} is larger than the vocabulary ({vocab})")
    cache = model.new_cache(len(contexts), beams, ids.shape[1], eval_len - 1, device, attention=attention)
    beam_scores, tokens = top_log_probs(model.prefill(ids, lengths, cache, padded=True), None, settings, dtype,
                                        beams)  # [N, B] each
    history = tokens.reshape(-1, 1)  # [N*B, steps]
    eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long, device=device)
    best = BestHypotheses(len(contexts), eval_len, settings.length_penalty, device, dtype)
    beam_scores = best.add(beam_scores, history, torch.isin(tokens, eos))

    results = [None] * len(contexts)
    active = list(range(len(contexts)))  # batch row -> position in `contexts`
    finished = LaggedFlags(device) if early_stop else None
    context_steps = len(contexts)
    for step in range(1, eval_len):
        done = finished.take() if finished is not None else None
        if done is not None and worth_dropping(done, cache):
            for row, position in enumerate(active):
                if done[row]:
                    results[position] = best.ids[row].tolist()
            active = [p for p, gone in zip(active, done) if not gone]
            if not active:
                break
            keep = torch.tensor([row for row, gone in enumerate(done) if not gone], device=device)
            best.keep(keep)
            beam_scores, tokens = beam_scores[keep], tokens[keep]
            history = history.view(len(done), beams, -1)[keep].flatten(0, 1)
            cache.keep(keep)
            finished.clear()
        count = len(active)
        logits = decode(tokens, cache).reshape(count * beams, -1)
        # each beam's B best continuations hold the context's B best of all B * V (same scores, same order)
        logp, ids = top_log_probs(logits, history, settings, dtype, beams)  # [N*B, B]
        candidates = (beam_scores.reshape(-1, 1) + logp).view(count, beams * beams)
        beam_scores, flat = torch.topk(candidates, beams, dim=1, largest=True, sorted=True)
        parents = torch.div(flat, beams, rounding_mode="floor")
        tokens = ids.view(count, beams * beams).gather(1, flat)
        cache.reorder_beams(parents)
        rows = (parents + torch.arange(count, device=device)[:, None] * beams).flatten()
        history = torch.cat((history[rows], tokens.reshape(-1, 1)), dim=1)
        beam_scores = best.add(beam_scores, history, torch.isin(tokens, eos))
        if finished is not None:
            finished.post(~best.can_improve(beam_scores, step + 1))
        context_steps += count
    if active:
        if history.shape[1] == eval_len:  # the final flush: every beam left is a hypothesis
            best.add(beam_scores, history, torch.ones_like(beam_scores, dtype=torch.bool))
        for row, position in enumerate(active):
            results[position] = best.ids[row].tolist()
    if stats is not None:
        stats["context_steps"] = stats.get("context_steps", 0) + context_steps
    return results


# ---------------------------------------------------------------- the data file

def read_contexts(path, seq_len, eval_len, vocab_size):
    """The encoded jsonl's contexts, each cut to its last seq_len - eval_len ids; (contexts, cut count)."""
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
    distinct = sorted(set(contexts), key=lambda c: (-len(c), c))
    mine = distinct[rank::world_size]
    return [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]


class Progress:
    """Contexts per second on stderr: a bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, total, enabled=True, label="beam"):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.enabled, self.label = enabled, label
        self.bar = None
        self.last_line = self.start
        if enabled and sys.stderr.isatty():
            from progress.bar import Bar
            self.bar = Bar(label, max=total, suffix="%(index)d/%(max)d contexts  %(rate).1f contexts/s")
            self.bar.rate = 0.0

    def rate(self):
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, count):
        self.done += count
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.rate = self.rate()
            self.bar.next(count)
        elif time.perf_counter() - self.last_line >= 10 or self.done == self.total:
            self.last_line = time.perf_counter()
            print(f"{self.label}: {self.done}/{self.total} contexts, {self.rate():.1f} contexts/s", file=sys.stderr)

    def finish(self):
        if self.bar is not None:
            self.bar.finish()


def decode_contexts(model, batches, settings, progress, cuda_graphs=False, attention="sdpa"):
    """{context: ids} for every context of these batches."""
    results = {}
    for batch in batches:
        for context, ids in zip(batch, beam_search(model, list(map(list, batch)), settings,
                                                   cuda_graphs=cuda_graphs, attention=attention)):
            results[context] = ids
        progress.advance(len(batch))
    return results


def write_predictions(path, contexts, results):
    with atomic_output(path) as out:
        for index, context in enumerate(contexts):
            out.write(json.dumps({"id": index, "predict": results[context]}) + "\n")


# ---------------------------------------------------------------- the command

def settings_from_args(args):
    return BeamSettings(beam=args.beam, eval_len=args.eval_len, length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram_size,
                        repetition_penalty=args.repetition_penalty, min_length=args.min_length,
                        eos_ids=tuple(args.eos_token_id))


def check_args(args, config):
    if args.beam < 1 or args.batch_size < 1 or args.eval_len < 1:
        raise InputError("--beam, --batch_size and --eval_len must be at least 1")
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


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(args, device):
    from .checkpoint import build_model, load_weights
    from .lora import merge_lora

    torch.manual_seed(0)  # without checkpoints the weights are random, and the same on every rank
    model = build_model(args.model_card, args.lora_dim, args.lora_alpha, device=device)
    load_weights(model, args.init_checkpoint, args.lora_checkpoint)
    merge_lora(model)
    model = model.to(device, PRECISIONS[args.precision]).eval()
    model.pad_head_for_inference()
    return model


def run_beam(args):
    """The gpt2_beam.py command after argument parsing."""
    from .distributed import cleanup, gather_objects, setup_distributed

    ctx = setup_distributed(args)
    try:
        out_path = os.path.join(args.work_dir, args.output_file)
        check_writable_dir(args.work_dir)  # on every rank: they must all fail alike, or the others would wait
        config = GPT2Config.from_card(args.model_card)
        check_args(args, config)
        settings = settings_from_args(args)
        contexts, cut = read_contexts(args.data, args.seq_len, args.eval_len, config.vocab_size)
        if cut and ctx.is_main:
            print(f"note: {cut} context(s) longer than seq_len - eval_len = {args.seq_len - args.eval_len} "
                  "tokens keep only their last tokens, as in the original", file=sys.stderr)
        model = load_model(args, ctx.device)
        attention = args.attention
        if not attention_usable(attention, PRECISIONS[args.precision], ctx.device, args.beam, config.head_dim):
            if ctx.is_main:
                print(f"note: --attention {attention} needs Triton, a bf16/fp16 model on a GPU, at most "
                      f"{BLOCK_QUERIES} beams and heads of 16 to 128; using sdpa", file=sys.stderr)
            attention = "sdpa"
        batches = distinct_batches(contexts, args.batch_size, ctx.rank, ctx.world_size)
        mine = sum(map(len, batches))
        label = f"beam (rank 0 of {ctx.world_size})" if ctx.distributed else "beam"
        progress = Progress(mine, enabled=ctx.is_main, label=label)
        start = time.perf_counter()
        results = decode_contexts(model, batches, settings, progress, cuda_graphs=args.cuda_graph,
                                  attention=attention)
        progress.finish()
        gathered = gather_objects(results, ctx)
        if ctx.is_main:
            merged = {}
            for part in gathered:
                merged.update(part)
            write_predictions(out_path, contexts, merged)
            seconds = time.perf_counter() - start
            print(f"beam: {len(merged)} distinct contexts ({len(contexts)} lines) in {seconds:.1f} s, "
                  f"{len(merged) / max(seconds, 1e-9):.1f} contexts/s on {ctx.world_size} process(es); "
                  f"wrote {out_path}", file=sys.stderr)
    finally:
        cleanup(ctx)
