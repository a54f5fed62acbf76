"""GPT-2 as the LoRA paper's code defines it (SPEC 3): pre-LN blocks, tanh GELU, learned positions, LM head
tied to the token embedding, no dropout anywhere but on the LoRA input (lora.py).

    h_0 = wte[ids] + wpe[positions]
    h_l = a + MLP(LN_2(a)),   a = h_{l-1} + Attention(LN_1(h_{l-1}))      l = 1 .. n_layer
    logits = LN_f(h_L) wte^T

model(ids) is the reference forward: plain causal attention over right-padded rows (a padded row computes
exactly what the row would alone). The fast paths change only how attention reads its keys, through the
`attend` argument: a packed training batch (packed_attention.py) and the beam search's key/value cache
(kv_cache.py, decoder.py). tests/test_model.py checks each against this forward.
"""

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cards import CARDS
from .errors import InputError
from .flags import LORA_INITS, LORA_SCALINGS, MODULE_TARGETS, QKV_TARGETS, parse_targets
from .lora import mark_only_lora_trainable, parse_slices
from .lora_variants import describe_variant, linear_layer, qkv_layer


@dataclass
class GPT2Config:
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 50257
    n_positions: int = 1024
    layer_norm_epsilon: float = 1e-5
    # LoRA, under the names of gpt2_ft.py's flags (lora_dim is the paper's rank r)
    lora_dim: int = 0
    lora_alpha: float = 128
    lora_dropout: float = 0.0
    lora_slices: tuple = (True, False, True)  # q, k, v of c_attn
    # --lora_targets beyond c_attn's slices, and the variants (lora_variants.py; docs/lora-variants.md)
    lora_modules: tuple = ()  # any of "o" (attn.c_proj), "fc" (mlp.c_fc), "proj" (mlp.c_proj)
    lora_scaling: str = "alpha_over_r"  # or "rs": alpha / sqrt(r)
    dora: bool = False
    lora_init: str = "kaiming"  # or "gaussian"

    @classmethod
    def from_card(cls, card, **overrides):
        if card not in CARDS:
            raise ValueError(f"unknown model card {card!r}; expected one of {', '.join(CARDS)}")
        return cls(**{**CARDS[card], **overrides})

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


def split_heads(qkv, n_head):
    """[B, T, 3d] (q|k|v along the last dimension) -> [B, q|k|v, H, T, hd]."""
    batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    return qkv.view(batch, length, 3, n_head, width // n_head).permute(0, 2, 3, 1, 4)


def merge_heads(y):
    """[B, H, T, hd] -> [B, T, H * hd]."""
    batch, heads, length, head_dim = y.shape
    return y.transpose(1, 2).reshape(batch, length, heads * head_dim)


def causal_attention(qkv, n_head, layer=None):
    """softmax(q k^T / sqrt(hd) + causal mask) v per head: the reference `attend`. An `attend` takes qkv
    [B, T, 3d], the head count and the layer's index, and returns the attention output [B, T, d]."""
    heads = split_heads(qkv, n_head)
    return merge_heads(F.scaled_dot_product_attention(heads[:, 0], heads[:, 1], heads[:, 2], is_causal=True))


class Conv1D(nn.Module):
    """A linear layer in the hub's layout: weight [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return F.linear(x, self.weight.t(), self.bias)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = qkv_layer(config)  # the paper's LoRAQKV unless a variant is asked for
        self.c_proj = linear_layer(config, "o", config.n_embd, config.n_embd, Conv1D)

    def forward(self, x, attend=causal_attention, layer=0):
        return self.c_proj(attend(self.c_attn(x), self.n_head, layer))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = linear_layer(config, "fc", config.n_embd, 4 * config.n_embd, Conv1D)
        self.c_proj = linear_layer(config, "proj", 4 * config.n_embd, config.n_embd, Conv1D)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attend=causal_attention, layer=0):
        x = x + self.attn(self.ln_1(x), attend, layer)
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

    def forward(self, input_ids, positions, attend=causal_attention):
        x = self.wte(input_ids) + self.wpe(positions)
        for layer, block in enumerate(self.h):
            x = block(x, attend, layer)
        return self.ln_f(x)


class GPT2LMModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)

    def hidden_states(self, input_ids, positions=None, attend=causal_attention):
        """Final hidden states [B, T, d]; positions default to 0 .. T-1 in every row."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.transformer(input_ids, positions, attend)

    def forward(self, input_ids):
        """The reference forward: logits [B, T, V] of right-padded rows."""
        return F.linear(self.hidden_states(input_ids), self.transformer.wte.weight)  # tied head


# ---------------------------------------------------------------- building

def build_model(card, lora_dim=0, lora_alpha=128, lora_dropout=0.0, lora_slices="qv", device=None,
                lora_targets=None, lora_scaling="alpha_over_r", dora=False, lora_init="kaiming"):
    """A GPT-2 of `card` (a name in CARDS, or a GPT2Config) with LoRA of rank `lora_dim` on the `lora_slices`
    of c_attn, or on `lora_targets` when given ('q,v,o', 'all', a tuple of names: --lora_targets); only the
    LoRA tensors are trainable when lora_dim > 0 (everything when 0). lora_scaling, dora, lora_init: the
    variants (lora_variants.py). The lora_* arguments always set the config's LoRA fields, also when a
    GPT2Config is given. device: where the weights are made (and randomly initialised): a GPU does it in
    milliseconds."""
    if lora_dim < 0:
        raise InputError(f"lora_dim must be 0 (full fine-tuning) or a positive rank, got {lora_dim}")
    if not 0.0 <= lora_dropout < 1.0:
        raise InputError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
    lora_modules = ()
    try:
        if lora_targets is not None:
            targets = parse_targets(lora_targets)
            lora_slices = tuple(name in targets for name in QKV_TARGETS)
            lora_modules = tuple(name for name in MODULE_TARGETS if name in targets)
        elif isinstance(lora_slices, str):
            lora_slices = parse_slices(lora_slices)
    except ValueError as err:
        raise InputError(str(err)) from None
    if lora_scaling not in LORA_SCALINGS or lora_init not in LORA_INITS:
        raise InputError(f"unknown lora_scaling {lora_scaling!r} or lora_init {lora_init!r}")
    lora = dict(lora_dim=lora_dim, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_slices=tuple(lora_slices),
                lora_modules=lora_modules, lora_scaling=lora_scaling, dora=bool(dora), lora_init=lora_init)
    if isinstance(card, GPT2Config):
        config = dataclasses.replace(card, **lora)
    else:
        try:
            config = GPT2Config.from_card(card, **lora)
        except ValueError as err:
            raise InputError(str(err)) from None
    with torch.device(device or "cpu"):
        model = GPT2LMModel(config)
    mark_only_lora_trainable(model)
    return model


def unwrap(model):
    """The GPT2LMModel inside wrappers (torch.compile's, an engine's)."""
    while not isinstance(model, GPT2LMModel):
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a GPT2LMModel, got {type(model).__name__}")
        model = inner
    return model


def describe_trainable(model):
    """'trainable parameters: 393,216 (LoRA r=4 on q,v)', '... (LoRA r=4 on q,k,v,o, rsLoRA, DoRA)' or
    '... (full fine-tuning)'."""
    model = unwrap(model)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.config
    if config.lora_dim > 0:
        how = f"LoRA r={config.lora_dim} on {describe_variant(config)}"
    else:
        how = "full fine-tuning"
    return f"trainable parameters: {count:,} ({how})"
