"""Which examples each rank trains on at each step, and the one shape the ranks' batches take.

Two ways to share the training data among N processes:
  per process (the original's; --train_batch_size B): DistributedSampler deals the shuffled examples to the
    ranks in turn, each rank makes batches of B of its own, and the update is the mean over the ranks of their
    losses' gradients. A step covers N x B examples: the loss is the mean of the N rank losses.
  global (--global_batch G): every rank reads the batches of G examples that one process would read (the same
    order, the same draws for the padding examples) and keeps its slice of G / N. Rank r's loss is scaled by
    N (m_r + eps) / (M + eps), m_r its loss positions and M those of the whole batch (eps: the loss's
    denominator's 1e-4), so that the mean over the ranks is the one-process loss sum(loss) / (M + eps): N
    processes of G / N reproduce one process of G step for step.

With the CUDA-graph step the ranks must replay graphs of one shape (a capture, and the collectives inside it,
happen on every rank at once): every rank pads its batch to the largest BatchSizes of the step's batches. In the
global mode every rank knows them all; in the per-process mode they are exchanged each step, three integers
all-gathered over gloo on the host, off the GPU's stream.
"""

import torch
import torch.distributed as dist

from . import batch_transfer, data
from .distributed import DistContext, host_group
from .loss import MASK_EPSILON


def make_batches(dataset, ctx, seed, batch_size, global_batch=None, layout=None, same_shapes=False):
    """The training batches of this rank: global_batch (examples a step over all ranks) or batch_size (per rank).
    layout: the step's collate function and its multiples; same_shapes: pad to the ranks' common shape."""
    if global_batch:
        return GlobalBatches(dataset, ctx, seed, global_batch, layout, same_shapes)
    return RankBatches(dataset, ctx, seed, batch_size, layout, same_shapes)


class _Batches:
    def __init__(self, dataset, ctx, sampler, batch_size, layout, same_shapes):
        self.dataset, self.ctx, self.sampler, self.batch_size = dataset, ctx, sampler, batch_size
        self.padding = dict(layout or {})
        self.collate_fn = self.padding.pop("collate_fn", data.collate)
        self.same_shapes = same_shapes and ctx.distributed

    def indices(self, epoch):
        """The batches (lists of dataset indices) this rank reads in `epoch`."""
        return data.batch_indices(self.sampler, self.batch_size, epoch=epoch)

    def epoch(self, epoch, start=0):
        """(batch number from 0, batch on the device) of `epoch`, from batch `start` on. Skipped batches fetch
        nothing, so the dataset's fill generator advances exactly as in an uninterrupted run."""
        batches = self.indices(epoch)
        for number in range(start, len(batches)):
            yield number, batch_transfer.to_device(self.collate([self.dataset[i] for i in batches[number]]),
                                                        self.ctx.device)

    def collate_share(self, items, at_least):
        return self.collate_fn(items, self.dataset.seq_len, at_least=at_least, **self.padding)


class RankBatches(_Batches):
    def __init__(self, dataset, ctx, seed, batch_size, layout, same_shapes):
        super().__init__(dataset, ctx, data.make_sampler(dataset, ctx, seed), batch_size, layout, same_shapes)

    def collate(self, items):
        sizes = data.batch_sizes(items, self.dataset.seq_len)
        return self.collate_share(items, self.largest(sizes) if self.same_shapes else data.BatchSizes())

    def largest(self, sizes):
        """The largest of every rank's sizes this step."""
        mine = torch.tensor([sizes.tokens, sizes.longest, sizes.positions], dtype=torch.long)
        every = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
        # Host integers: gloo, beside the GPU's NCCL. The group is looked up, not kept: a reference held past
        # destroy_process_group lets gloo's threads outlive it and abort the interpreter's exit.
        dist.all_gather(every, mine, group=host_group())
        return data.BatchSizes(*torch.stack(every).amax(0).tolist())


class GlobalBatches(_Batches):
    def __init__(self, dataset, ctx, seed, global_batch, layout, same_shapes):
        # One process's order; every rank walks all of it.
        super().__init__(dataset, ctx, data.make_sampler(dataset, DistContext(), seed), global_batch, layout,
                         same_shapes)
        self.share = global_batch // ctx.world_size

    def collate(self, items):
        """This rank's slice of the global batch `items`, with its loss scale when there are several ranks."""
        ctx = self.ctx
        shares = [items[rank * self.share:(rank + 1) * self.share] for rank in range(ctx.world_size)]
        sizes = [data.batch_sizes(share, self.dataset.seq_len) for share in shares]
        at_least = data.BatchSizes()
        if self.same_shapes:
            for size in sizes:
                at_least = at_least.max(size)
        batch = self.collate_share(shares[ctx.rank], at_least)
        if ctx.distributed:
            total = sum(size.positions for size in sizes)
            scale = ctx.world_size * (sizes[ctx.rank].positions + MASK_EPSILON) / (total + MASK_EPSILON)
            batch["loss_scale"] = torch.tensor([scale], dtype=torch.float32)
        return batch
