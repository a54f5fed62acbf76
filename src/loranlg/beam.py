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

The model comes as a decoder.Decoder; the command around the search (files, batches, processes) is
src/gpt2_beam.py.
"""

import collections
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import InputError
from .kv_cache import BeamCache
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
    vocabulary (decoder.Decoder's padded head) are -inf and never picked."""
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


def score_dtype(decoder):
    return torch.float64 if decoder.dtype == torch.float64 else torch.float32


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


def worth_dropping(done):
    """Whether to drop the finished contexts from the batch now: all finished (the batch ends), or a quarter
    of them (then it is worth copying the cache)."""
    finished = sum(done)
    return finished == len(done) or finished * 4 >= len(done)


def bytes_per_context(decoder, prompt_len, settings):
    """Device memory that one context of a batch whose prompts are prompt_len long takes in the search, at most:
    its cache, its rows of a step's largest temporaries (the padded logits, their softmax and a processed copy
    in the score type) and of the prompts' pass (hidden states and the MLP's, a few at once)."""
    config, itemsize = decoder.config, decoder.dtype.itemsize
    cache = BeamCache.bytes_per_context(config, settings.beam, prompt_len, settings.eval_len - 1, decoder.dtype)
    step = settings.beam * decoder.head.shape[0] * (itemsize + 2 * score_dtype(decoder).itemsize)
    prefill = prompt_len * 4 * config.n_embd * itemsize * 4
    return cache + step + prefill


def no_clock(name):
    pass


@torch.no_grad()
def beam_search(decoder, contexts, settings, early_stop=True, stats=None, clock=None):
    """Decode a batch of contexts (lists of ids) with a decoder.Decoder; returns one list of eval_len ids per
    context. stats: a dict that gets the context-steps computed added under "context_steps". clock: a
    timing.Timeline that gets a lap at each part of the search (gpt2_beam.py --timing)."""
    with sdpa_kernel(ATTENTION_KERNELS):
        return _beam_search(decoder, contexts, settings, early_stop, stats, no_clock if clock is None else clock.lap)


def _beam_search(decoder, contexts, settings, early_stop, stats, lap):
    lap("search: between batches")
    device = decoder.device
    dtype = score_dtype(decoder)
    beams, eval_len = settings.beam, settings.eval_len
    ids, lengths = pad_contexts(contexts, device)
    vocab = decoder.config.vocab_size
    if beams > vocab:
        raise InputError(f"--beam {beams} is larger than the vocabulary ({vocab})")
    cache = decoder.new_cache(len(contexts), beams, ids.shape[1], eval_len - 1)
    beam_scores, tokens = top_log_probs(decoder.prefill(ids, lengths, cache), None, settings, dtype,
                                        beams)  # [N, B] each
    history = tokens.reshape(-1, 1)  # [N*B, steps]
    eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long, device=device)
    best = BestHypotheses(len(contexts), eval_len, settings.length_penalty, device, dtype)
    beam_scores = best.add(beam_scores, history, torch.isin(tokens, eos))
    lap("search: cache, prefill, step 0")

    results = [None] * len(contexts)
    active = list(range(len(contexts)))  # batch row -> position in `contexts`
    finished = LaggedFlags(device) if early_stop else None
    context_steps = len(contexts)
    for step in range(1, eval_len):
        done = finished.take() if finished is not None else None
        lap("search: host waits for flags")
        if done is not None and worth_dropping(done):
            ids_by_row = best.ids.tolist()  # one copy to the host, not one per row
            for row, position in enumerate(active):
                if done[row]:
                    results[position] = ids_by_row[row]
            active = [p for p, gone in zip(active, done) if not gone]
            if not active:
                break
            kept = [row for row, gone in enumerate(done) if not gone]
            keep = torch.tensor(kept, device=device)
            best.keep(keep)
            beam_scores, tokens = beam_scores[keep], tokens[keep]
            history = history.view(len(done), beams, -1)[keep].flatten(0, 1)
            cache.keep(kept, on_device=keep)
            finished.clear()
            lap("search: drop finished contexts")
        count = len(active)
        logits = decoder.decode_step(tokens, cache).reshape(count * beams, -1)
        lap("search: decode steps, model")
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
        lap("search: decode steps, beam work")
    if active:
        if history.shape[1] == eval_len:  # the final flush: every beam left is a hypothesis
            best.add(beam_scores, history, torch.ones_like(beam_scores, dtype=torch.bool))
        for position, ids_by_row in zip(active, best.ids.tolist()):
            results[position] = ids_by_row
    lap("search: results to the host")
    if stats is not None:
        stats["context_steps"] = stats.get("context_steps", 0) + context_steps
    return results
