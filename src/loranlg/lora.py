"""LoRA on GPT-2's fused attention projection c_attn, as the paper's code applies it (SPEC 4).

For each adapted slice s of q|k|v (default q and v), the paper's  h = W0 x + (alpha / r) B A x :

    h_s = x W0_s + b_s + scaling * dropout(x) A_s^T B_s^T,      scaling = alpha / r

The layer keeps the hub's Conv1D layout (weight [in, out] = [d, 3d], q|k|v along the output) so that
checkpoints load without transposes, and the original's LoRA tensors:
    lora_A [n*r, d]   rows s*r .. s*r+r-1 belong to the s-th adapted slice
    lora_B [n*d, r]   rows s*d .. s*d+d-1 belong to the s-th adapted slice
`formula` computes the update slice by slice as written above; `forward` computes the same numbers in one
fused product (`fused`), which tests/test_lora.py checks against the formula.

This is the paper's path, and the only one its defaults run. The other targets (o, fc, proj) and DoRA live in
lora_variants.py; rsLoRA's scaling and the Gaussian init are only other numbers at construction
(`lora_scaling`, `init_lora_A`), so they run this same code (docs/lora-variants.md).

Every adapted layer (LoRAQKV here, lora_variants' classes) offers the same few things, which checkpoint.py,
the merge and an export use: `weight` [in, out] and `bias`, `r`, `scaling`, `merged`; `delta_weight()` (the
update in the weight's layout), `merged_weight()` (what merging writes), `merge()` / `unmerge()`, `formula(x)`
(the reference forward) and `peft_tensors()` (the same adapter as peft's full-width lora_A / lora_B).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

SLICE_NAMES = "qkv"


def lora_scaling(alpha, r, kind="alpha_over_r"):
    """The update's scale: alpha / r (the paper's), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023: keeps the
    update's size stable as r grows)."""
    if kind == "alpha_over_r":
        return alpha / r
    if kind == "rs":
        return alpha / math.sqrt(r)
    raise ValueError(f"unknown LoRA scaling {kind!r} (alpha_over_r or rs)")


def init_lora_A(lora_A, r, kind="kaiming"):
    """kaiming: uniform as nn.Linear's default, kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)): the
    paper's released code. gaussian: N(0, std 1/r), as peft's init_lora_weights="gaussian" (the paper's text says
    'random Gaussian' without a scale)."""
    if kind == "kaiming":
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
    elif kind == "gaussian":
        nn.init.normal_(lora_A, std=1 / r)
    else:
        raise ValueError(f"unknown LoRA init {kind!r} (kaiming or gaussian)")


def parse_slices(spec):
    """'qv' -> (True, False, True). Accepts any non-empty subset of 'qkv'."""
    spec = spec.lower()
    if not spec or any(ch not in SLICE_NAMES for ch in spec):
        raise ValueError(f"LoRA slices must be a subset of 'qkv', got {spec!r}")
    return tuple(name in spec for name in SLICE_NAMES)


class LoRALayer(nn.Module):
    """What every adapted layer shares (LoRAQKV here, LoRAConv1D and the DoRA layers in lora_variants.py): a
    frozen weight [in, out] (the hub's Conv1D layout) and bias, and the merge of its update into that weight.
    A subclass sets weight, bias, r, scaling and merged, and defines delta_weight()."""

    lora_layer = True  # what lora_layers() looks for

    def add_lora(self, n_in, a_rows, b_rows, r, alpha, dropout, scaling, init):
        """lora_A [a_rows, n_in] drawn per `init`, lora_B [b_rows, r] zero, the scaling, dropout on A's input."""
        self.scaling = lora_scaling(alpha, r, scaling)
        self.init = init
        self.lora_A = nn.Parameter(torch.empty(a_rows, n_in))
        self.lora_B = nn.Parameter(torch.zeros(b_rows, r))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora()

    def reset_lora(self):
        # The released code's init by default (the paper's text says Gaussian): A as nn.Linear's default, B zero.
        init_lora_A(self.lora_A, self.r, self.init)
        nn.init.zeros_(self.lora_B)

    def frozen(self, x):
        return F.linear(x, self.weight.t(), self.bias)

    def merged_weight(self):
        """The weight with the update folded in, W0 + delta_weight(): what merge() writes."""
        return self.weight if self.merged or self.r == 0 else self.weight + self.delta_weight()

    def unmerged_weight(self):
        """W0, whatever the layer's state."""
        return self.weight - self.delta_weight() if self.merged else self.weight

    @torch.no_grad()
    def merge(self):
        if self.r > 0 and not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.r > 0 and self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False


class LoRAQKV(LoRALayer):
    """c_attn: x [.., d] -> [.., 3d], with LoRA of rank r on the enabled slices when r > 0."""

    def __init__(self, d, r=0, alpha=1, dropout=0.0, slices=(True, False, True), scaling="alpha_over_r",
                 init="kaiming"):
        super().__init__()
        self.d, self.r = d, r
        self.weight = nn.Parameter(torch.empty(d, 3 * d))
        self.bias = nn.Parameter(torch.zeros(3 * d))
        nn.init.normal_(self.weight, std=0.02)
        self.slices = tuple(bool(s) for s in slices)
        self.enabled = [i for i, on in enumerate(self.slices) if on]
        self.merged = False
        if r > 0:
            n = len(self.enabled)
            self.add_lora(d, n * r, n * d, r, alpha, dropout, scaling, init)

    def delta_weight(self):
        """The merged update in the weight's [in, out] layout: scaling * (B_s A_s)^T in each enabled slice."""
        d = self.d
        delta = torch.zeros_like(self.weight)
        for s, i in enumerate(self.enabled):
            delta[:, i * d:(i + 1) * d] = self.scaling * (self.B(s) @ self.A(s)).t()
        return delta

    def adapted_columns(self):
        """The output columns LoRA changes: the enabled slices' (q|k|v order)."""
        d = self.d
        return torch.cat([torch.arange(i * d, (i + 1) * d, device=self.weight.device) for i in self.enabled])

    def update(self, x):
        """scaling * x A^T B^T over all 3d outputs (zeros outside the adapted slices); x already dropped out."""
        return self.scaling * F.linear(F.linear(x, self.lora_A), self.expanded_B())

    def peft_tensors(self):
        """This adapter as peft's lora.Linear over the whole c_attn (fan_in_fan_out): lora_A [n*r, d],
        lora_B [3d, n*r] (expanded_B: zero rows on the slices left alone), scaling, magnitude None."""
        return {"lora_A": self.lora_A, "lora_B": self.expanded_B(), "scaling": self.scaling, "magnitude": None}

    def A(self, s):
        """A_s [r, d] of the s-th adapted slice."""
        return self.lora_A[s * self.r:(s + 1) * self.r]

    def B(self, s):
        """B_s [d, r] of the s-th adapted slice."""
        return self.lora_B[s * self.d:(s + 1) * self.d]

    def forward(self, x):
        if self.r == 0 or self.merged:
            return self.frozen(x)
        return self.fused(x)

    def formula(self, x):
        """The reference: x W0 + b, plus scaling * dropout(x) A_s^T B_s^T on each adapted slice s."""
        h = list(self.frozen(x).split(self.d, dim=-1))  # q, k, v
        x = self.lora_dropout(x)
        for s, i in enumerate(self.enabled):
            h[i] = h[i] + self.scaling * (x @ self.A(s).t() @ self.B(s).t())
        return torch.cat(h, dim=-1)

    def fused(self, x):
        """`formula` as one addmm: x A^T (all slices' ranks side by side) times the expanded B^T, which holds
        each B_s in the rows of its slice and zeros elsewhere: no split of q|k|v, no stacking back."""
        out = self.frozen(x)
        a = F.linear(self.lora_dropout(x), self.lora_A)  # [.., n*r]
        return torch.addmm(out.flatten(0, -2), a.flatten(0, -2), self.expanded_B().t(),
                           alpha=self.scaling).view(out.shape)

    def expanded_B(self):
        """lora_B laid over the 3d outputs, [3d, n*r]: B_s in the rows of its slice and the columns of its
        rank block, zeros elsewhere."""
        n, d, r = len(self.enabled), self.d, self.r
        full = self.lora_B.new_zeros(3, d, n, r)
        for s, i in enumerate(self.enabled):
            full[i, :, s] = self.B(s)
        return full.view(3 * d, n * r)

    def extra_repr(self):
        on = "".join(n for n, flag in zip(SLICE_NAMES, self.slices) if flag)
        return f"d={self.d}, r={self.r}, slices={on!r}, merged={self.merged}"


def lora_layers(model):
    """Every layer with LoRA (LoRAQKV, lora_variants' classes) of rank > 0, in module order."""
    return [m for m in model.modules() if getattr(m, "lora_layer", False) and m.r > 0]


def named_lora_layers(model):
    """{module name: layer} of lora_layers, names as the model's (transformer.h.0.attn.c_attn, ...)."""
    return {name: m for name, m in model.named_modules() if getattr(m, "lora_layer", False) and m.r > 0}


def mark_only_lora_trainable(model):
    """Freeze everything but the LoRA tensors (lora_A, lora_B, DoRA's lora_magnitude). With no LoRA layers
    (lora_dim 0) everything stays trainable."""
    if not lora_layers(model):
        for p in model.parameters():
            p.requires_grad_(True)
        return
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_state_dict(model):
    """Only the LoRA tensors, under the model's own key names (transformer.h.{i}.attn.c_attn.lora_A ...)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def merge_lora(model):
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model):
    for layer in lora_layers(model):
        layer.unmerge()


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
