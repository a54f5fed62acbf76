"""Training and validation examples from an encoded jsonl, batched as the original's FT_Dataset (SPEC 5).

One example is context + completion token ids. The model reads tokens[:-1] and predicts tokens[1:]; the loss
mask is 1 from the last context token through the token before the final one, so exactly the completion is
predicted. Examples longer than --seq_len are cut to it, as the original does (the loss then covers only the
completion tokens that fit).

The original pads each example to --seq_len; here each batch is padded to its longest example only. Right
padding under causal attention leaves the real positions' numbers unchanged and padded positions carry
mask 0, so the loss is the same.

Like the original, the dataset's length is rounded up to whole batches and the extra indices draw random
examples from a random.Random(911) of their own; order comes from DistributedSampler(seed=--random_seed),
re-seeded per epoch with set_epoch(epoch).
"""

import math
import random
from dataclasses import astuple, dataclass

import torch
from torch.utils.data.distributed import DistributedSampler

from .errors import InputError
from .files import read_jsonl

FILL_SEED = 911  # the original FT_Dataset's generator for the indices past the last example


def token_list(value, key, vocab_size, path, line):
    """`value` checked to be a non-empty list of ids inside the vocabulary (an encoded jsonl's field)."""
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise InputError(f"{key!r} should be a list of token ids (an encoded jsonl, see gpt2_encode.py)",
                         path, line)
    if not value:
        raise InputError(f"{key!r} is empty; every example needs context and completion tokens", path, line)
    bad = next((t for t in value if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InputError(f"token id {bad} in {key!r} is outside the vocabulary (0..{vocab_size - 1})", path, line)
    return value


def read_examples(path, seq_len, vocab_size=50257):
    """[(context_ids, completion_ids)] of an encoded jsonl. Refuses a context that leaves no completion token
    inside seq_len (with its line number); returns the examples and how many get cut to seq_len."""
    examples, truncated = [], 0
    for line, record in read_jsonl(path, required=("context", "completion")):
        context = token_list(record["context"], "context", vocab_size, path, line)
        completion = token_list(record["completion"], "completion", vocab_size, path, line)
        if len(context) >= seq_len:
            raise InputError(f"the context has {len(context)} tokens, leaving no completion token within "
                             f"--seq_len {seq_len}; raise --seq_len or shorten the context", path, line)
        if len(context) + len(completion) > seq_len:
            truncated += 1
        examples.append((context, completion))
    if not examples:
        raise InputError("no examples; expected one {\"context\": [ids], \"completion\": [ids]} a line", path)
    return examples, truncated


class FTDataset:
    """Index -> (token ids cut to seq_len + 1, context length). Length rounded up to whole batches."""

    def __init__(self, examples, batch_size, seq_len):
        self.examples = examples
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.num_batches = math.ceil(len(examples) / batch_size)
        self.fill_rng = random.Random(FILL_SEED)

    def __len__(self):
        return self.num_batches * self.batch_size

    def __getitem__(self, index):
        if index >= len(self.examples):
            index = self.fill_rng.randint(0, len(self.examples) - 1)
        context, completion = self.examples[index]
        # One token past seq_len is kept: it is the target of the last input position of a cut example.
        return (context + completion)[:self.seq_len + 1], len(context)


def round_up(value, multiple):
    return -(-value // multiple) * multiple


def batch_sizes(items, seq_len):
    """BatchSizes of a batch's items: what its collated shapes grow with."""
    lengths = [min(len(tokens), seq_len) for tokens, _ in items]
    return BatchSizes(tokens=sum(lengths), longest=max(lengths),
                      positions=sum(max(0, length - context_len) for length, (_, context_len) in zip(lengths, items)))


@dataclass(frozen=True)
class BatchSizes:
    """tokens: real input tokens; longest: the longest input; positions: loss positions (the mask's 1s).
    Passed to a collate function as `at_least`, the shapes of a larger batch (the other ranks' batches of the
    step: the CUDA-graph step's ranks must replay graphs of one shape)."""
    tokens: int = 0
    longest: int = 0
    positions: int = 0

    def max(self, other):
        return BatchSizes(*(max(a, b) for a, b in zip(astuple(self), astuple(other))))


def collate(items, seq_len, pad_to=None, length_multiple=1, positions_multiple=1, at_least=BatchSizes()):
    """Input, target, mask [B, T] with T the longest input of the batch (or at_least.longest) rounded up to
    length_multiple (or pad_to); padding is 0 in all three, as the original's. Plus the loss positions: flat
    indices into B*T of the mask's non-zero entries and their mask values (`weights`), padded with index 0 and
    weight 0 to a multiple of positions_multiple (the CUDA-graph step needs few distinct shapes)."""
    input_lengths = [min(len(tokens), seq_len) for tokens, _ in items]
    width = pad_to or round_up(max(max(input_lengths), at_least.longest), length_multiple)
    batch = len(items)
    inputs = torch.zeros(batch, width, dtype=torch.long)
    targets = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.float)
    for row, ((tokens, context_len), length) in enumerate(zip(items, input_lengths)):
        inputs[row, :length] = torch.tensor(tokens[:length])
        shifted = tokens[1:length + 1]
        targets[row, :len(shifted)] = torch.tensor(shifted)
        mask[row, context_len - 1:length - 1] = 1.0
    return {"input": inputs, "target": targets, "mask": mask,
            **loss_positions(mask, positions_multiple, at_least.positions)}


PACKING_KEYS = ("position_ids", "pad_index", "pack_index", "pad_valid", "pack_valid")


def collate_packed(items, seq_len, length_multiple=1, tokens_multiple=1, positions_multiple=1, at_least=BatchSizes()):
    """The batch of collate() with its examples packed end to end into one row [1, P] (P: the real tokens,
    rounded up to tokens_multiple; padding 0), so that matrix products skip the padding. Also:
      position_ids [1, P]  each token's position within its own example (0 on padding)
      pad_index [B, L]     the packed row holding example b's token t (L: the longest, rounded up to
                           length_multiple; 0 past an example's end): attention gathers padded rows with it
      pack_index [P]       the padded slot b * L + t of each packed row (0 on padding): and scatters back
      pad_valid [B, L], pack_valid [P]   1.0 where a slot / row holds a real token, else 0.0
    positions / weights index the packed row, in the order collate() gives them (example by example).
    at_least: BatchSizes that P, L and the loss positions cover at least."""
    padded = collate(items, seq_len, length_multiple=length_multiple, at_least=at_least)
    batch, width = padded["input"].shape
    lengths = torch.tensor([min(len(tokens), seq_len) for tokens, _ in items])
    real = torch.arange(width) < lengths[:, None]  # [B, L]: the slots holding tokens
    total = int(lengths.sum())
    pack_index = torch.zeros(round_up(max(total, at_least.tokens), tokens_multiple), dtype=torch.long)
    pack_index[:total] = real.reshape(-1).nonzero().squeeze(1)  # row-major: example by example
    pack_valid = torch.zeros(len(pack_index))
    pack_valid[:total] = 1.0
    pad_index = torch.zeros(batch * width, dtype=torch.long)
    pad_index[pack_index[:total]] = torch.arange(total)

    def pack(padded_tensor):
        return (padded_tensor.reshape(-1)[pack_index] * pack_valid.to(padded_tensor.dtype))[None]

    packed = {"input": pack(padded["input"]), "target": pack(padded["target"]), "mask": pack(padded["mask"]),
              "position_ids": pack(torch.arange(width).expand(batch, -1)),
              "pad_index": pad_index.view(batch, width), "pack_index": pack_index,
              "pad_valid": real.float(), "pack_valid": pack_valid}
    packed.update(loss_positions(packed["mask"], positions_multiple, at_least.positions))
    return packed


def loss_positions(mask, positions_multiple=1, at_least=0):
    """Flat indices into the mask of its non-zero entries and their values, padded with index 0 and weight 0
    to a multiple of positions_multiple (and at least at_least of them)."""
    found = mask.reshape(-1).nonzero().squeeze(1)
    count = round_up(max(len(found), at_least, 1), positions_multiple)
    positions = torch.zeros(count, dtype=torch.long)
    positions[:len(found)] = found
    weights = torch.zeros(count, dtype=torch.float)
    weights[:len(found)] = mask.reshape(-1)[found]
    return {"positions": positions, "weights": weights}


def make_sampler(dataset, ctx, seed):
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


def batch_indices(sampler, batch_size, epoch=None, drop_last=True):
    """This rank's batches of dataset indices for one epoch (set_epoch first when epoch is given)."""
    if epoch is not None:
        sampler.set_epoch(epoch)
    indices = list(sampler)
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    return [indices[i:i + batch_size] for i in range(0, stop, batch_size)]
