"""The precisions of both commands (--precision) and what the fast paths keep in them.

Training runs fp32 weights under autocast (bf16 / fp16) with an fp32 loss; beam search casts the merged
model to the precision. Scores and the beam arithmetic stay fp32 either way.
"""

import torch
import torch.nn.functional as F

from .data import round_up
from .flags import PRECISION_NAMES

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16)))
FROZEN_MATRICES = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def autocast_dtype(precision):
    """The autocast type of a training precision; None for fp32 (no autocast)."""
    return None if precision == "fp32" else PRECISIONS[precision]


def pad_rows(weight, multiple=64):
    """A copy of `weight` with zero rows appended up to a multiple of `multiple` rows: cuBLAS takes its fast
    kernels only for aligned shapes, and GPT-2's 50,257 tokens are odd."""
    return F.pad(weight, (0, 0, 0, round_up(weight.shape[0], multiple) - weight.shape[0]))


def store_frozen_matrices(model, dtype):
    """Under autocast to `dtype`, keep each frozen weight matrix in `dtype` instead of casting it at every use
    (autocast caches casts only of trainable leaves). Every matrix product sees exactly the values autocast
    would give it; embeddings, layer norms and the residual stream stay fp32. Returns a padded `dtype` copy
    of the tied head for the loss while the embedding is frozen, else None."""
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dim() == 2 and name.endswith(FROZEN_MATRICES):
            p.data = p.data.to(dtype)
    wte = model.transformer.wte.weight
    return None if wte.requires_grad else pad_rows(wte.detach()).to(dtype)
