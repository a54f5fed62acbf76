"""LoRA beyond the paper's default (docs/lora-variants.md): other target weights, and DoRA.

The paper's path, LoRA on the q and v slices of c_attn (lora.LoRAQKV), is untouched by anything here; these
classes are built only when a flag asks for them (`qkv_layer`, `linear_layer`, which model.py calls).

LoRAConv1D: LoRA on a whole Conv1D layer (--lora_targets o = attn.c_proj, fc = mlp.c_fc, proj = mlp.c_proj):

    h = x W0 + b + scaling * dropout(x) A^T B^T,     W0 [in, out], A [r, in], B [out, r]

DoRA (Liu et al. 2024, as peft's use_dora computes it), on c_attn's slices or on a whole Conv1D:

    W' = m * (W0 + dW) / ||W0 + dW||_col,      dW = delta_weight() = scaling * (B A)^T   [in, out]
    h  = x W' + b

||.||_col is the L2 norm of each output column over the inputs: dim 0 of our [in, out] Conv1D layout, the
same numbers as peft's norm over dim 1 of its transposed [out, in] view (fan_in_fan_out). The norm is
detached from the gradient (DoRA's section 4.3; peft does the same). m (`lora_magnitude`, one per adapted
output column) starts at ||W0 + dW||_col, so training starts exactly at the pretrained model. With LoRA
dropout p > 0 in training, peft's form is kept:  x W0 + b + (g - 1) * dropout(x) W0 + g * scaling *
dropout(x) A^T B^T  with g = m / ||W0 + dW||_col, which is the formula above when nothing is dropped.
On c_attn only the adapted slices' columns have a magnitude; the others keep g = 1 (W0 itself).

Merging writes W' into the weight (`merged_weight`), so beam search runs the plain layers, as fast as ever.
`peft_tensors()` gives each layer as peft's full-width tensors; `peft_config` the matching LoraConfig
arguments (what an export writes; tests/test_lora_variants.py checks both against peft's own layers).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .flags import MODULE_TARGETS, QKV_TARGETS, targets_text
from .lora import LoRALayer, LoRAQKV

DEFAULT_SETTINGS = {"lora_targets": "q,v", "lora_scaling": "alpha_over_r", "dora": False, "lora_init": "kaiming"}


class LoRAConv1D(LoRALayer):
    """A Conv1D (weight [in, out], the hub's layout and names) with LoRA of rank r on all its outputs."""

    def __init__(self, n_in, n_out, r, alpha=1, dropout=0.0, scaling="alpha_over_r", init="kaiming"):
        super().__init__()
        self.r, self.merged = r, False
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)
        self.add_lora(n_in, r, n_out, r, alpha, dropout, scaling, init)

    def delta_weight(self):
        """scaling * (B A)^T, in the weight's [in, out] layout."""
        return self.scaling * (self.lora_B @ self.lora_A).t()

    def adapted_columns(self):
        return torch.arange(self.weight.shape[1], device=self.weight.device)

    def update(self, x):
        """scaling * x A^T B^T; x already dropped out."""
        return self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x):
        if self.merged:
            return self.frozen(x)
        return self.frozen(x) + self.update(self.lora_dropout(x))

    def formula(self, x):
        """The reference: x W0 + b + scaling * dropout(x) A^T B^T."""
        return x @ self.weight + self.bias + self.scaling * (self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t())

    def peft_tensors(self):
        """As peft's lora.Linear on this Conv1D (fan_in_fan_out): lora_A [r, in], lora_B [out, r]."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B, "scaling": self.scaling, "magnitude": None}

    def extra_repr(self):
        return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, r={self.r}, merged={self.merged}"


class DoRA:
    """DoRA over a LoRA layer (mixed in before LoRAQKV or LoRAConv1D; the module docstring has the math)."""

    def init_magnitude(self):
        self.lora_magnitude = nn.Parameter(torch.empty(len(self.adapted_columns()), dtype=self.weight.dtype,
                                                       device=self.weight.device))
        self.reset_magnitude()
        self.merge_factor = None  # g at merge time: unmerge divides it out again (as peft caches the norm)

    @torch.no_grad()
    def reset_magnitude(self):
        """m = ||W0 + dW||_col on the adapted columns: the layer computes W0 + dW (peft's init). Called again
        once the base weights are loaded (checkpoint.load_weights)."""
        self.lora_magnitude.copy_(self.column_norm()[self.adapted_columns()])

    def column_norm(self):
        """||W0 + dW||_col [out]: each output column's L2 norm over the inputs, detached."""
        with torch.no_grad():
            return torch.linalg.norm(self.unmerged_weight() + self.delta_weight(), dim=0)

    def dora_factor(self):
        """g [out]: m / ||W0 + dW||_col on the adapted columns, 1 on the others."""
        g = self.lora_magnitude / self.column_norm()[self.adapted_columns()]
        return self.spread(g)

    def spread(self, g):
        """g of the adapted columns laid over all outputs, 1 elsewhere."""
        if len(g) == self.weight.shape[1]:
            return g
        return torch.ones(self.weight.shape[1], dtype=g.dtype, device=g.device).index_copy(
            0, self.adapted_columns(), g)

    def forward(self, x):
        if self.merged:
            return self.frozen(x)
        g = self.dora_factor()
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            return g * (F.linear(x, self.weight.t()) + self.update(x)) + self.bias
        dropped = self.lora_dropout(x)
        return self.frozen(x) + (g - 1) * F.linear(dropped, self.weight.t()) + g * self.update(dropped)

    def formula(self, x):
        """The reference (no dropout): x W' + b with W' = m * (W0 + dW) / ||W0 + dW||_col."""
        return x @ self.merged_weight() + self.bias

    def merged_weight(self):
        if self.merged:
            return self.weight
        return (self.weight + self.delta_weight()) * self.dora_factor()

    def unmerged_weight(self):
        if not self.merged:
            return self.weight
        return self.weight / self.merge_factor - self.delta_weight()

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            factor = self.dora_factor()
            self.weight.copy_(self.merged_weight())
            self.merge_factor, self.merged = factor, True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.copy_(self.unmerged_weight())
            self.merge_factor, self.merged = None, False

    def peft_tensors(self):
        """The LoRA tensors, and peft's lora_magnitude_vector [out]: m on the adapted columns, ||W0||_col (so
        g = 1) on the others."""
        tensors = super().peft_tensors()
        norm = self.column_norm()
        tensors["magnitude"] = norm.index_copy(0, self.adapted_columns(), self.lora_magnitude.detach())
        return tensors


class DoRAQKV(DoRA, LoRAQKV):
    """DoRA on the adapted slices of c_attn: lora_magnitude [n*d], the s-th adapted slice's columns at s*d..."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_magnitude()


class DoRAConv1D(DoRA, LoRAConv1D):
    """DoRA on a whole Conv1D: lora_magnitude [out]."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_magnitude()


# ---------------------------------------------------------------- building (model.py) and recording

def qkv_layer(config):
    """c_attn for a GPT2Config: the paper's LoRAQKV (or DoRAQKV with config.dora); no LoRA when no slice of
    q, k, v is a target."""
    r = config.lora_dim if any(config.lora_slices) else 0
    kind = DoRAQKV if r > 0 and config.dora else LoRAQKV
    return kind(config.n_embd, r, config.lora_alpha, config.lora_dropout, config.lora_slices, config.lora_scaling,
                config.lora_init)


def linear_layer(config, target, n_in, n_out, plain):
    """The Conv1D of `target` (o, fc, proj): LoRAConv1D / DoRAConv1D when it is adapted, else plain(n_in, n_out)."""
    if config.lora_dim == 0 or target not in config.lora_modules:
        return plain(n_in, n_out)
    kind = DoRAConv1D if config.dora else LoRAConv1D
    return kind(n_in, n_out, config.lora_dim, config.lora_alpha, config.lora_dropout, config.lora_scaling,
                config.lora_init)


def config_targets(config):
    """('q', 'v', 'o', ...) adapted by a GPT2Config, in flags.TARGET_NAMES order."""
    qkv = tuple(name for name, on in zip(QKV_TARGETS, config.lora_slices) if on)
    return qkv + tuple(name for name in MODULE_TARGETS if name in config.lora_modules)


def lora_settings(config):
    """The LoRA settings a checkpoint records (under its "loranlg" entry) and loading checks against the flags:
    lora_targets (comma text), lora_scaling, dora, lora_init. LoRA+ changes only training: not recorded."""
    return {"lora_targets": targets_text(config_targets(config)), "lora_scaling": config.lora_scaling,
            "dora": bool(config.dora), "lora_init": config.lora_init}


def describe_variant(config):
    """'q,v' / 'q,k,v,o, rsLoRA, DoRA, gaussian init': what describe_trainable prints after the rank."""
    parts = [targets_text(config_targets(config))]
    if config.lora_scaling == "rs":
        parts.append("rsLoRA")
    if config.dora:
        parts.append("DoRA")
    if config.lora_init != "kaiming":
        parts.append(f"{config.lora_init} init")
    return ", ".join(parts)


def peft_config(config):
    """peft LoraConfig arguments that express this model's adapter exactly, with each layer's peft_tensors():
    target_modules (c_attn for any of q, k, v: peft adapts the whole fused layer, our lora_B expanded with zero
    rows), rank r (n*r on c_attn through rank_pattern), lora_alpha chosen so that peft's scaling (alpha / r, or
    alpha / sqrt(r) with use_rslora) equals ours, use_dora, fan_in_fan_out (GPT-2's Conv1D)."""
    r, alpha = config.lora_dim, config.lora_alpha
    n = sum(config.lora_slices)
    targets = (["c_attn"] if n else []) + [MODULE_TARGETS[name] for name in MODULE_TARGETS
                                           if name in config.lora_modules]
    rs = config.lora_scaling == "rs"
    out = {"r": r, "lora_alpha": alpha, "target_modules": targets, "lora_dropout": config.lora_dropout,
           "fan_in_fan_out": True, "use_rslora": rs, "use_dora": bool(config.dora), "bias": "none",
           "rank_pattern": {}, "alpha_pattern": {}}
    if n > 1:  # c_attn's peft rank is n*r; its alpha keeps our scaling
        out["rank_pattern"]["c_attn"] = n * r
        out["alpha_pattern"]["c_attn"] = alpha * (math.sqrt(n) if rs else n)
    return out
