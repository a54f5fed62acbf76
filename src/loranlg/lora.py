"""LoRA on GPT-2's fused attention projection c_attn, as the paper's code applies it (SPEC 4).

For each adapted slice s of q|k|v (default q and v), the paper's  h = W0 x + (alpha / r) B A x :

    h_s = x W0_s + b_s + scaling * dropout(x) A_s^T B_s^T,      scaling = alpha / r

The layer keeps the hub's Conv1D layout (weight [in, out] = [d, 3d], q|k|v along the output) so that
checkpoints load without transposes, and the original's LoRA tensors:
    lora_A [n*r, d]   rows s*r .. s*r+r-1 belong to the s-th adapted slice
    lora_B [n*d, r]   rows s*d .. s*d+d-1 belong to the s-th adapted slice
`formula` computes the update slice by slice as written above; `forward` computes the same numbers in one
fused product (`fused`), which tests/test_lora.py checks against the formula.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

SLICE_NAMES = "qkv"


def parse_slices(spec):
    """'qv' -> (True, False, True). Accepts any non-empty subset of 'qkv'."""
    spec = spec.lower()
    if not spec or any(ch not in SLICE_NAMES for ch in spec):
        raise ValueError(f"LoRA slices must be a subset of 'qkv', got {spec!r}")
    return tuple(name in spec for name in SLICE_NAMES)


class LoRAQKV(nn.Module):
    """c_attn: x [.., d] -> [.., 3d], with LoRA of rank r on the enabled slices when r > 0."""

    def __init__(self, d, r=0, alpha=1, dropout=0.0, slices=(True, False, True)):
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
            self.scaling = alpha / r
            self.lora_A = nn.Parameter(torch.empty(n * r, d))
            self.lora_B = nn.Parameter(torch.zeros(n * d, r))
            self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.reset_lora()

    def reset_lora(self):
        # The released code's init (the paper's text says Gaussian): A as nn.Linear's default, B zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self):
        """The merged update in the weight's [in, out] layout: scaling * (B_s A_s)^T in each enabled slice."""
        d = self.d
        delta = torch.zeros_like(self.weight)
        for s, i in enumerate(self.enabled):
            delta[:, i * d:(i + 1) * d] = self.scaling * (self.B(s) @ self.A(s)).t()
        return delta

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

    def A(self, s):
        """A_s [r, d] of the s-th adapted slice."""
        return self.lora_A[s * self.r:(s + 1) * self.r]

    def B(self, s):
        """B_s [d, r] of the s-th adapted slice."""
        return self.lora_B[s * self.d:(s + 1) * self.d]

    def frozen(self, x):
        return F.linear(x, self.weight.t(), self.bias)

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
    return [m for m in model.modules() if isinstance(m, LoRAQKV) and m.r > 0]


def mark_only_lora_trainable(model):
    """Freeze everything but lora_A / lora_B. With no LoRA layers (lora_dim 0) everything stays trainable."""
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
