"""GPT-2 as the LoRA paper's code defines it (SPEC 3): pre-LN blocks, tanh GELU, learned positions,
LM head tied to the token embedding, no dropout anywhere but on the LoRA input.

Three ways to run it:
  model(ids)                          full causal pass -> logits [B, T, V] (training, scoring)
  model.prefill(ids, lengths, cache)  right-padded prompts [N, P] -> next-token logits [N, V], fills the cache
  model.decode_step(tokens, cache)    one new token per beam [N, B] -> logits [N, B, V] (kv_cache.py)
Right padding plus causal attention means a padded row computes exactly what the row would alone. Training
may also pack the examples of a batch into one row (no padding in the matrix products): attention then keeps
each example to itself (packed_attention.py).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import round_up
from .kv_cache import BeamCache
from .lora import LoRAQKV
from .packed_attention import packed_causal_attention

CARDS = {
    "gpt2.sm": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2.md": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2.lg": dict(n_embd=1280, n_layer=36, n_head=20),
    # Small cards of our own: tests (tiny) and the offline CPU demo (mini), trained from scratch.
    "gpt2.tiny": dict(n_embd=64, n_layer=2, n_head=4),
    "gpt2.mini": dict(n_embd=256, n_layer=4, n_head=4),
}


@dataclass
class GPT2Config:
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 50257
    n_positions: int = 1024
    layer_norm_epsilon: float = 1e-5
    lora_attn_dim: int = 0
    lora_attn_alpha: float = 128
    lora_dropout: float = 0.0
    lora_slices: tuple = (True, False, True)  # q, k, v

    @classmethod
    def from_card(cls, card, **overrides):
        if card not in CARDS:
            raise ValueError(f"unknown model card {card!r}; expected one of {', '.join(CARDS)}")
        return cls(**{**CARDS[card], **overrides})

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


def pad_rows(weight, multiple=64):
    """A copy of `weight` with zero rows appended up to a multiple of `multiple` rows (aligned GEMM shapes)."""
    return F.pad(weight, (0, 0, 0, round_up(weight.shape[0], multiple) - weight.shape[0]))


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = LoRAQKV(config.n_embd, config.lora_attn_dim, config.lora_attn_alpha,
                              config.lora_dropout, config.lora_slices)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def forward(self, x, cache=None, layer=0, packing=None):
        qkv = self.c_attn(x)
        if packing is not None:  # the examples of a batch end to end in one row
            return self.c_proj(packed_causal_attention(qkv, packing, self.n_head))
        batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.view(batch, length, 3, self.n_head, width // self.n_head)
        heads = qkv.permute(0, 2, 3, 1, 4)  # [B, q|k|v, H, T, hd]
        if cache is None:
            y = F.scaled_dot_product_attention(heads[:, 0], heads[:, 1], heads[:, 2], is_causal=True)
        else:
            y = cache.attend(layer, heads[:, 0], heads[:, 1:])
        return self.c_proj(y.transpose(1, 2).reshape(batch, length, width))


class Conv1D(nn.Module):
    """A linear layer in the hub's layout: weight [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return F.linear(x, self.weight.t(), self.bias)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, **attn_kwargs):
        x = x + self.attn(self.ln_1(x), **attn_kwargs)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    def forward(self, input_ids, positions, cache=None, packing=None):
        x = self.wte(input_ids) + self.wpe(positions)
        for index, block in enumerate(self.h):
            x = block(x, cache=cache, layer=index, packing=packing)
        return self.ln_f(x)


class GPT2LMModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.inference_head = self.inference_bias = None  # see pad_head_for_inference

    def lm_logits(self, hidden, padded=False):
        if self.inference_head is not None:
            logits = F.linear(hidden, self.inference_head, self.inference_bias)
            return logits if padded else logits[..., :self.config.vocab_size]
        return F.linear(hidden, self.transformer.wte.weight)  # tied head

    def pad_head_for_inference(self, multiple=64):
        """Give the head a copy of the embedding padded with zero rows to a multiple of 64: cuBLAS takes its
        fast kernels only for aligned shapes, and 50,257 is odd. Same logits; the padding's logits are -inf
        (a bias of 0 and -inf), so that they never win a top-k. Call it after loading weights and choosing
        the device and dtype, for inference only (the copy does not follow later changes)."""
        weight = self.transformer.wte.weight.detach()
        self.inference_head = pad_rows(weight, multiple)
        self.inference_bias = torch.zeros(self.inference_head.shape[0], dtype=weight.dtype, device=weight.device)
        self.inference_bias[weight.shape[0]:] = float("-inf")

    def hidden_states(self, input_ids, packing=None):
        """Final hidden states [B, T, d]. packing: None for one example per row (right-padded), or the
        position_ids / pad_index / pack_index of a packed batch (data.collate_packed)."""
        if packing is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            return self.transformer(input_ids, positions)
        return self.transformer(input_ids, packing["position_ids"], packing=packing)

    def forward(self, input_ids):
        return self.lm_logits(self.hidden_states(input_ids))

    def new_cache(self, contexts, beams, prompt_len, steps, device=None, dtype=None, attention="sdpa"):
        """A BeamCache for `contexts` prompts right-padded to prompt_len, `beams` beams each, `steps` tokens."""
        weight = self.transformer.wte.weight
        return BeamCache(self.config, contexts, beams, prompt_len, steps, device or weight.device,
                         dtype or weight.dtype, attention)

    def prefill(self, input_ids, lengths, cache, padded=False):
        """Prompts right-padded to one length [N, P]; returns the logits after each one's last token [N, V]
        (padded: as decode_step's)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.transformer(input_ids, positions, cache=cache)
        cache.finish_prefill(lengths)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.lm_logits(hidden[rows, lengths.to(input_ids.device) - 1], padded)

    def decode_step(self, tokens, cache, padded=False):
        """One new token per beam [N, B], appended after each beam's own history; logits [N, B, V].
        padded: the logits of pad_head_for_inference's padded head, [N, B, V'] with -inf in the padding."""
        cache.begin_step()
        logits = self.decode_logits(tokens, cache)
        cache.end_step()
        return logits if padded else logits[..., :self.config.vocab_size]

    def decode_logits(self, tokens, cache):
        """decode_step's work on the device, after cache.begin_step(): what beam_graph.py captures."""
        positions = cache.prepare_step()
        return self.lm_logits(self.transformer(tokens, positions, cache=cache), padded=True)
