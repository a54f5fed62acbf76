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
"""

import torch
import torch.nn.functional as F

from .data import round_up

ALIGN = 8  # key counts padded to a multiple of this: attention kernels take their fast path on aligned masks


class BeamCache:
    def __init__(self, config, contexts, beams, prompt_len, steps, device=None, dtype=torch.float32):
        self.beams, self.prompt_len = beams, prompt_len
        self.slots = round_up(prompt_len + steps * beams, ALIGN)
        shape = (contexts, config.n_layer, 2, config.n_head, self.slots, config.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(contexts, dtype=torch.long, device=device)  # real prompt tokens
        self.ancestors = torch.zeros(contexts, beams, steps, dtype=torch.long, device=device)
        self.steps = 0  # generated tokens stored per beam
        self.prefilled = False
        self.mask = None  # of the step being decoded: [N, 1, B, keys], 0 where a beam attends, -inf elsewhere

    @property
    def contexts(self):
        return self.kv.shape[0]

    def positions(self):
        """Position ids [N, B] of the tokens decoded next."""
        return (self.lengths + self.steps)[:, None].expand(-1, self.beams)

    def finish_prefill(self, lengths):
        """After the prompts' pass: their real lengths [N]; decode steps come next."""
        self.lengths = lengths.to(self.lengths.device, torch.long).clone()
        self.prefilled = True

    def begin_step(self):
        """Before a decode step: the new tokens sit in their own places; build the step's key mask."""
        step = self.steps
        if step >= self.ancestors.shape[2]:
            raise ValueError(f"the cache holds {self.ancestors.shape[2]} generated steps; all are used")
        device = self.kv.device
        places = torch.arange(self.beams, device=device)
        self.ancestors[:, :, step] = places
        used = self.prompt_len + (step + 1) * self.beams
        keys = min(round_up(used, ALIGN), self.slots)
        prompt = torch.arange(self.prompt_len, device=device) < self.lengths[:, None]  # [N, P]
        generated = self.ancestors[:, :, :step + 1, None] == places  # [N, B, step+1, B]
        mask = torch.zeros(self.contexts, self.beams, keys, dtype=torch.bool, device=device)
        mask[:, :, :self.prompt_len] = prompt[:, None, :]
        mask[:, :, self.prompt_len:used] = generated.flatten(2)
        # additive, in the cache's type: made once a step, not converted from bool by each layer's attention
        additive = torch.zeros(mask.shape, dtype=self.kv.dtype, device=device)
        self.mask = additive.masked_fill_(~mask, float("-inf"))[:, None]

    def end_step(self):
        self.steps += 1
        self.mask = None

    def attend(self, layer, q, k, v):
        """Store k, v of this pass and return the attention output (q, k, v: [N, H, T, hd])."""
        keys, values = self.kv[:, layer, 0], self.kv[:, layer, 1]
        if not self.prefilled:  # the prompts: causal attention among themselves
            keys[:, :, :q.shape[2]] = k
            values[:, :, :q.shape[2]] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        start = self.prompt_len + self.steps * self.beams
        keys[:, :, start:start + self.beams] = k.to(keys.dtype)  # autocast may hand us another dtype
        values[:, :, start:start + self.beams] = v.to(values.dtype)
        width = self.mask.shape[-1]
        out = F.scaled_dot_product_attention(q.to(keys.dtype), keys[:, :, :width], values[:, :, :width],
                                             attn_mask=self.mask)
        return out.to(q.dtype)

    def reorder_beams(self, parents):
        """parents [N, B]: new beam b continues old beam parents[n, b]."""
        index = parents[:, :, None].expand(-1, -1, self.steps)
        self.ancestors[:, :, :self.steps] = self.ancestors[:, :, :self.steps].gather(1, index)

    def keep(self, index):
        """Keep contexts `index` (dropping finished ones)."""
        self.kv = self.kv.index_select(0, index)
        self.lengths = self.lengths.index_select(0, index)
        self.ancestors = self.ancestors.index_select(0, index)
