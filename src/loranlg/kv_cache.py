"""The key/value cache of beam search: each context's prefix stored once, generated keys never moved.

N contexts, each with B beams. One tensor per model, kv [N, layer, k|v, H, slots, hd], where a context's
slots are
    0 .. P-1                  its prompt (right-padded to the batch's longest, P), shared by all its beams
    P + t*B + j               the token generated at step t by the beam that sat in place j at that step
When beams reorder, nothing is copied: `ancestors[n, b, t]` says which place j of step t beam b descends
from, and attention masks every generated key but its ancestors'. All beams of a context are one attention
call with B queries over the context's slots, so the prompt is read once per context, not once per beam.

Why not the usual cache of one row per beam: reordering copies every beam's whole cache at every step
(about 9 GB a step at batch 128 for GPT-2 medium), and attention reads the shared prompt B times. Here a
step reads each stored key once and writes only the new ones. A beam attending to keys it does not
descend from would add exp(-inf) = 0 terms: the numbers are those of the per-beam cache.

A decode step attends to the first `width` slots, the used ones rounded up to KEY_BLOCK: few distinct
shapes, aligned masks. The cache is the `attend` of model.py for the passes of decoder.py.
"""

import torch
import torch.nn.functional as F

from .data import round_up
from .model import merge_heads, split_heads

KEY_BLOCK = 64  # slots attended per step: the used ones rounded up to this


class BeamCache:
    def __init__(self, config, contexts, beams, prompt_len, steps, device=None, dtype=torch.float32):
        self.beams, self.prompt_len = beams, prompt_len
        self.slots = round_up(prompt_len + steps * beams, KEY_BLOCK)
        shape = (contexts, config.n_layer, 2, config.n_head, self.slots, config.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(contexts, dtype=torch.long, device=device)  # real prompt tokens
        self.ancestors = torch.zeros(contexts, beams, steps, dtype=torch.long, device=device)
        self.steps = 0  # generated tokens stored per beam
        self.step = torch.zeros((), dtype=torch.long, device=device)  # the same, on the device
        self.prefilled = False
        self.width = None  # slots attended by the step being decoded
        self.mask = self.write_slots = None  # of the step being decoded (prepare_step)
        self.places = torch.arange(beams, device=device)
        # What each slot holds: the step that wrote it (-1: the prompt) and the place within that step.
        offset = torch.arange(self.slots, device=device) - prompt_len
        self.slot_step = torch.where(offset >= 0, offset // beams, -1)
        self.slot_place = offset.remainder(beams)

    @staticmethod
    def bytes_per_context(config, beams, prompt_len, steps, dtype):
        """What one context adds to a cache of these sizes: its keys and values and its ancestry table."""
        slots = round_up(prompt_len + steps * beams, KEY_BLOCK)
        return config.n_layer * 2 * config.n_embd * slots * dtype.itemsize + beams * steps * 8

    @property
    def contexts(self):
        return self.kv.shape[0]

    def finish_prefill(self, lengths):
        """After the prompts' pass: their real lengths [N]; decode steps come next."""
        self.lengths = lengths.to(self.lengths.device, torch.long).clone()
        self.prefilled = True

    def begin_step(self):
        """Before a decode step: the step number and the width it attends."""
        if self.steps >= self.ancestors.shape[2]:
            raise ValueError(f"the cache holds {self.ancestors.shape[2]} generated steps; all are used")
        self.step.fill_(self.steps)
        self.width = self.width_at(self.steps)

    def width_at(self, steps):
        """Slots attended by the decode step after `steps` stored ones: the used ones rounded up to KEY_BLOCK."""
        return min(round_up(self.prompt_len + (steps + 1) * self.beams, KEY_BLOCK), self.slots)

    def prepare_step(self):
        """The step's device-side state, from `step` alone: the new tokens sit in their own places, where
        they are written, their positions, and the additive key mask [N, 1, B, width] (in the cache's type:
        made once a step, not converted by each layer's attention). Returns the positions [N, B]."""
        contexts, beams, width = self.contexts, self.beams, self.width
        column = self.step.view(1, 1, 1).expand(contexts, beams, 1)
        self.ancestors.scatter_(2, column, self.places.view(1, beams, 1).expand(contexts, beams, 1))
        self.write_slots = self.prompt_len + self.step * beams + self.places
        slot_step, slot_place = self.slot_step[:width], self.slot_place[:width]
        prompt = torch.arange(width, device=self.kv.device) < self.lengths[:, None]  # [N, W]
        last = self.ancestors.shape[2] - 1
        ancestor = self.ancestors.gather(2, slot_step.clamp(0, last).expand(contexts, beams, width))
        generated = (slot_step >= 0) & (slot_step <= self.step) & (ancestor == slot_place)  # [N, B, W]
        allowed = prompt[:, None, :] | generated
        self.mask = torch.zeros(allowed.shape, dtype=self.kv.dtype, device=self.kv.device).masked_fill_(
            ~allowed, float("-inf"))[:, None]
        return (self.lengths + self.step)[:, None].expand(-1, beams)

    def end_step(self):
        self.steps += 1
        self.width = self.mask = self.write_slots = None

    def attend(self, qkv, n_head, layer):
        """model.py's `attend`: store this pass's keys and values in the layer's slots and return the
        attention output [N, T, d] of its queries."""
        heads = split_heads(qkv, n_head)
        q, kv = heads[:, 0], heads[:, 1:]  # [N, H, T, hd], [N, 2, H, T, hd]
        cache = self.kv[:, layer]  # [N, 2, H, slots, hd]
        if not self.prefilled:  # the prompts: causal attention among themselves
            cache[:, :, :, :q.shape[2]] = kv
            return merge_heads(F.scaled_dot_product_attention(q, kv[:, 0], kv[:, 1], is_causal=True))
        cache.index_copy_(3, self.write_slots, kv.to(cache.dtype))  # autocast may hand us another dtype
        keys, values = cache[:, 0, :, :self.width], cache[:, 1, :, :self.width]
        out = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, attn_mask=self.mask)
        return merge_heads(out.to(q.dtype))

    def reorder_beams(self, parents):
        """parents [N, B]: new beam b continues old beam parents[n, b]."""
        index = parents[:, :, None].expand(-1, -1, self.steps)
        self.ancestors[:, :, :self.steps] = self.ancestors[:, :, :self.steps].gather(1, index)

    def keep(self, index, on_device=None):
        """Keep contexts `index` (dropping finished ones), in that order. A list of rows in increasing order
        (what beam search drops) moves the keys and values within the cache: the memory of a second cache is
        never needed. on_device: the same index already on the cache's device (saves a copy)."""
        if isinstance(index, torch.Tensor) or any(a >= b for a, b in zip(index, index[1:])):
            self.kv = self.kv.index_select(0, torch.as_tensor(index, device=self.kv.device))
        else:
            self.kv = move_rows_forward(self.kv, index)
        index = torch.as_tensor(index, device=self.kv.device) if on_device is None else on_device
        self.lengths = self.lengths.index_select(0, index)
        self.ancestors = self.ancestors.index_select(0, index)


def move_rows_forward(tensor, rows):
    """tensor[rows] for rows in increasing order, made by moving those rows to the front of `tensor` (which
    becomes that); returns the view of them. Each run of rows moves in blocks no longer than its shift, so
    a block's source and destination never overlap, and a block reads only rows not yet written."""
    written, start = 0, 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and rows[end] == rows[end - 1] + 1:
            end += 1
        source, length = rows[start], end - start  # a run: rows[start:end] are consecutive
        shift = source - written
        while shift > 0 and length > 0:
            block = min(shift, length)
            tensor[written:written + block].copy_(tensor[source:source + block])
            written, source, length = written + block, source + block, length - block
        written += length  # shift 0: already in place
        start = end
    return tensor[:written]
