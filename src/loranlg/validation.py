"""The validation loss of gpt2_ft.py, over large packed rows.

The number is the original's (SPEC 5): the valid set in batches of --valid_batch_size; each batch's loss is
sum(loss * mask) / (sum(mask) + 1e-4) over its own examples (no label smoothing); their mean over this rank's
batches; the mean of that over the ranks. Run batch by batch, E2E's 4,672 examples are 1,168 forwards of a
few hundred tokens each, and the GPU waits on kernel launches (a pass cost 12-21 s on an H200).

Here consecutive batches are packed end to end into rows of about PACK_TOKENS tokens (data.collate_packed:
each example still attends only to itself), one forward gives every loss position's loss, and a segment sum
(index_add) gives each batch its sum(loss * mask) and sum(mask): the same number up to float rounding
(tests/test_validation.py against plain padded batches). The examples are read in the original's order, so
the dataset's fill generator (data.FTDataset) advances as before.

The blocks run uncompiled here even when the training step compiles them: at thousands of tokens a row the
kernels are large, and a forward-only variant of the compiled blocks would be one more compilation.
"""

import contextlib
import math

import torch

from . import batch_transfer, data
from .distributed import all_reduce_mean
from .loss import MASK_EPSILON

PACK_TOKENS = 8192  # tokens a packed row holds at most on a GPU (a longer batch gets a row of its own)
CPU_PACK_TOKENS = 1024  # on the CPU large rows gain nothing, and the head's logits would take gigabytes
# Rows padded to multiples: few distinct shapes for the allocator and the kernels' heuristics.
LENGTH_MULTIPLE, TOKENS_MULTIPLE, POSITIONS_MULTIPLE = 16, 512, 512


def validation_loss(objective, dataset, batches, ctx, pack_tokens=None):
    """(loss, perplexity) of the original's definition over `batches` (this rank's lists of dataset indices);
    objective: loss.LMObjective, put in eval mode for the pass; pack_tokens: PACK_TOKENS on a GPU, else
    CPU_PACK_TOKENS."""
    if pack_tokens is None:
        pack_tokens = PACK_TOKENS if ctx.device.type == "cuda" else CPU_PACK_TOKENS
    objective.eval()
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    try:
        with torch.no_grad(), uncompiled():
            for items, batch_of_item in packs(dataset, batches, pack_tokens):
                total += batch_losses(objective, items, batch_of_item, dataset.seq_len, ctx.device).sum()
    finally:
        objective.train()
    loss = all_reduce_mean(total.item() / max(1, len(batches)), ctx)
    return loss, math.exp(min(loss, 700.0))


def packs(dataset, batches, pack_tokens):
    """(items, batch of each item counted from 0 within the pack): whole consecutive batches, as many as fit
    in pack_tokens input tokens."""
    items, batch_of_item, tokens, count = [], [], 0, 0
    for batch in batches:
        fetched = [dataset[i] for i in batch]
        length = sum(min(len(ids), dataset.seq_len) for ids, _ in fetched)
        if items and tokens + length > pack_tokens:
            yield items, batch_of_item
            items, batch_of_item, tokens, count = [], [], 0, 0
        items += fetched
        batch_of_item += [count] * len(fetched)
        tokens, count = tokens + length, count + 1
    if items:
        yield items, batch_of_item


def batch_losses(objective, items, batch_of_item, seq_len, device):
    """Each batch's sum(loss * mask) / (sum(mask) + 1e-4), float64 [batches of the pack]."""
    packed = data.collate_packed(items, seq_len, LENGTH_MULTIPLE, TOKENS_MULTIPLE, POSITIONS_MULTIPLE)
    lengths = torch.tensor([min(len(ids), seq_len) for ids, _ in items])
    item_of_token = torch.repeat_interleave(torch.arange(len(items)), lengths)
    # The batch of each loss position (the padding positions, of weight 0, are given batch 0).
    packed["segment"] = torch.tensor(batch_of_item)[item_of_token[packed["positions"]]]
    batch = batch_transfer.to_device(packed, device)
    losses = objective(batch["input"], batch["target"], batch["positions"], batch["weights"], 0.0,
                       {name: batch[name] for name in data.PACKING_KEYS}, per_position=True)
    weights = batch["weights"].double()
    count = batch_of_item[-1] + 1
    loss_sums = torch.zeros(count, dtype=torch.float64, device=device).index_add_(
        0, batch["segment"], losses.double() * weights)
    mask_sums = torch.zeros(count, dtype=torch.float64, device=device).index_add_(0, batch["segment"], weights)
    return loss_sums / (mask_sums + MASK_EPSILON)


def uncompiled():
    """torch.compile's code set aside for the block (torch 2.6 and later; before, it runs compiled)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
