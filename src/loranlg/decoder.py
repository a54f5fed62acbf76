"""GPT-2 as beam search runs it: the prompts' pass into a key/value cache, then one token per beam a step.

    prefill(ids, lengths, cache)  right-padded prompts [N, P] -> logits after each one's last token [N, V]
    decode_step(tokens, cache)    one new token per beam [N, B] -> logits [N, B, V]

Both are model.py's forward with the cache as attention (kv_cache.py). With pad_head the head is a copy of
the embedding padded with zero rows to a multiple of 64 (cuBLAS takes its fast kernels only for aligned
shapes), and a bias of -inf on the padding, so that those logits never win a top-k: the logits are then
[.., V'] with V' >= V, the real ones unchanged.
"""

import torch
import torch.nn.functional as F

from .kv_cache import BeamCache
from .precision import pad_rows


class Decoder:
    """Make it after loading weights and choosing the device and dtype: the padded head is a copy."""

    def __init__(self, model, pad_head=False):
        self.model = model
        self.config = model.config
        weight = model.transformer.wte.weight.detach()
        self.head, self.head_bias = weight, None
        if pad_head:
            self.head = pad_rows(weight)
            self.head_bias = torch.zeros(self.head.shape[0], dtype=weight.dtype, device=weight.device)
            self.head_bias[weight.shape[0]:] = float("-inf")

    @property
    def device(self):
        return self.model.transformer.wte.weight.device

    @property
    def dtype(self):
        return self.model.transformer.wte.weight.dtype

    def logits(self, hidden):
        return F.linear(hidden, self.head, self.head_bias)

    def new_cache(self, contexts, beams, prompt_len, steps, dtype=None):
        """A BeamCache for `contexts` prompts right-padded to prompt_len, `beams` beams each, `steps` tokens."""
        return BeamCache(self.config, contexts, beams, prompt_len, steps, self.device, dtype or self.dtype)

    def prefill(self, input_ids, lengths, cache):
        hidden = self.model.hidden_states(input_ids, attend=cache.attend)
        cache.finish_prefill(lengths)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.logits(hidden[rows, lengths.to(input_ids.device) - 1])

    def decode_step(self, tokens, cache):
        """Each beam's new token is appended after its own history (cache.reorder_beams keeps that)."""
        cache.begin_step()
        positions = cache.prepare_step()
        logits = self.logits(self.model.hidden_states(tokens, positions, attend=cache.attend))
        cache.end_step()
        return logits
