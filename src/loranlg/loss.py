"""The training objective of SPEC 5: label-smoothed next-token loss over the completion positions.

Per position: (1 - s) * NLL + s * (-mean over the vocabulary of log p).
Batch loss = sum(loss * mask) / (sum(mask) + 1e-4).

Only the masked positions (the completion, about half the tokens) go through the LM head: the numbers are
those of the full [B, T, V] logits, without ever materialising them. The head runs in fp32, or under bf16 /
fp16 in that type as autocast would run it (the original's fp16 runs did too); the loss is always fp32.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .model import pad_rows

MASK_EPSILON = 1e-4


def position_losses(logits, targets, label_smooth=0.0):
    """(1 - s) * NLL + s * mean_v(-log p) per row of logits [N, V], in fp32.

    PyTorch's label_smoothing is this same formula: (1 - s) * nll + s * sum_v(-log p_v) / V.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smooth)


def masked_lm_loss(hidden, head_weight, target, positions, weights, label_smooth=0.0, head_dtype=torch.float32,
                   vocab_size=None):
    """The batch loss from the final hidden states [B, T, d] and the (tied) head weight [V, d].

    positions: flat indices into B*T of the loss positions, weights: their mask values (collate gives both;
    entries of weight 0 pad them to a fixed count and add nothing). sum(weights) is the original's sum(mask).
    vocab_size: the real vocabulary when head_weight has padding rows."""
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = F.linear(picked.to(head_dtype), head_weight.to(head_dtype))[:, :vocab_size]
    losses = position_losses(logits, target.reshape(-1).index_select(0, positions), label_smooth)
    return (losses * weights).sum() / (weights.sum() + MASK_EPSILON)


class LMObjective(nn.Module):
    """GPT-2 plus its loss as one module, so that DistributedDataParallel sees the whole forward pass."""

    def __init__(self, model, precision="fp32"):
        super().__init__()
        self.model = model
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self._frozen_head = None
        self.loss_fn = masked_lm_loss  # train.compile_objective may swap in a compiled version

    def store_frozen_matrices(self):
        """Under autocast, keep each frozen weight matrix in the autocast type instead of casting it at every
        use (autocast caches casts only of trainable leaves). Every matrix product sees exactly the values
        autocast would give it; embeddings, layer norms and the residual stream stay fp32. The tied head gets
        its own low-precision copy while the embedding is frozen."""
        if self.autocast_dtype is None:
            return
        for name, p in self.model.named_parameters():
            if not p.requires_grad and p.dim() == 2 and name.endswith(("c_attn.weight", "c_proj.weight",
                                                                         "c_fc.weight")):
                p.data = p.data.to(self.autocast_dtype)
        wte = self.model.transformer.wte.weight
        if not wte.requires_grad:  # padded rows: aligned shapes take cuBLAS's fast kernels
            self._frozen_head = pad_rows(wte.detach()).to(self.autocast_dtype)

    def head_weight(self):
        return self._frozen_head if self._frozen_head is not None else self.model.transformer.wte.weight

    def forward(self, input, target, positions, weights, label_smooth=0.0, packing=None):
        """packing: the position_ids / pad_index / pack_index of a packed batch (data.collate_packed)."""
        device_type = input.device.type
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            hidden = self.model.hidden_states(input, packing)
        return self.loss_fn(hidden, self.head_weight(), target, positions, weights, label_smooth,
                              self.autocast_dtype or torch.float32, self.model.config.vocab_size)
