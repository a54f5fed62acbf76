"""LoRA on GPT-2's fused attention projection c_attn, as the paper's code applies it (SPEC 4).

The layer keeps the hub's Conv1D layout (weight [in, out] = [d, 3d], q|k|v along the output) so that
checkpoints load without transposes. For the enabled slices (default q and v) it holds
    lora_A [n*r, d]   rows s*r .. s*r+r-1 belong to the s-th enabled slice
    lora_B [n*d, r]   rows s*d .. s*d+d-1 belong to the s-th enabled slice
and adds  scaling * dropout(x) A_s^T B_s^T  to each enabled slice's output, scaling = alpha / r.
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
    """c_attn: x [.., d] -> [.., 3d], with LoRA on the enabled slices when r > 0."""

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
        d, r = self.d, self.r
        delta = torch.zeros_like(self.weight)
        for s, i in enumerate(self.enabled):
            block = self.lora_B[s * d:(s + 1) * d] @ self.lora_A[s * r:(s + 1) * r]  # [out=d, in=d]
            delta[:, i * d:(i + 1) * d] = self.scaling * block.t()
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

    def expanded_B(self):
        """lora_B laid over the 3d outputs, [3d, n*r]: B_s in the rows of its slice and the columns of its
        rank block, zeros elsewhere; then x A^T (expanded B)^T is every slice's update in one product."""
        n, d, r = len(self.enabled), self.d, self.r
        full = self.lora_B.new_zeros(3, d, n, r)
        for s, i in enumerate(self.enabled):
            full[i, :, s] = self.lora_B[s * d:(s + 1) * d]
        return full.view(3 * d, n * r)

    def forward(self, x):
        out = F.linear(x, self.weight.t(), self.bias)
        if self.r > 0 and not self.merged:
            # out + scaling * dropout(x) A^T B^T as one addmm: no split of q|k|v, no stacking back.
            a = F.linear(self.lora_dropout(x), self.lora_A)  # [.., n*r]
            out = torch.addmm(out.flatten(0, -2), a.flatten(0, -2), self.expanded_B().t(),
                              alpha=self.scaling).view(out.shape)
        return out

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
