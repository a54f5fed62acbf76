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

from .packed_attention import PackedAttention
from .precision import autocast_dtype

MASK_EPSILON = 1e-4


def position_losses(logits, targets, label_smooth=0.0):
    """(1 - s) * NLL + s * mean_v(-log p) per row of logits [N, V], in fp32.

    PyTorch's label_smoothing is this same formula: (1 - s) * nll + s * sum_v(-log p_v) / V.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smooth)


def masked_position_losses(hidden, head_weight, target, positions, label_smooth=0.0, head_dtype=torch.float32,
                           vocab_size=None):
    """position_losses at the loss positions, from the final hidden states [B, T, d] and the (tied) head
    weight [V, d]. positions: flat indices into B*T (collate gives them); vocab_size: the real vocabulary
    when head_weight has padding rows."""
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = F.linear(picked.to(head_dtype), head_weight.to(head_dtype))[:, :vocab_size]
    return position_losses(logits, target.reshape(-1).index_select(0, positions), label_smooth)


def masked_lm_loss(hidden, head_weight, target, positions, weights, label_smooth=0.0, head_dtype=torch.float32,
                   vocab_size=None):
    """The batch loss. weights: the loss positions' mask values (collate gives them; entries of weight 0 pad
    the positions to a fixed count and add nothing). sum(weights) is the original's sum(mask)."""
    losses = masked_position_losses(hidden, head_weight, target, positions, label_smooth, head_dtype, vocab_size)
    return (losses * weights).sum() / (weights.sum() + MASK_EPSILON)


class LMObjective(nn.Module):
    """GPT-2 plus its loss as one module: what a training step runs (and torch.compile and the CUDA graph see).

    frozen_head: a low-precision copy of the frozen tied head (precision.store_frozen_matrices), or None
    to use the embedding itself."""

    def __init__(self, model, precision="fp32", frozen_head=None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype(precision)
        self.frozen_head = frozen_head
        self.loss_fn = masked_lm_loss  # train_step.compile_objective may swap in a compiled version

    def head_weight(self):
        return self.frozen_head if self.frozen_head is not None else self.model.transformer.wte.weight

    def forward(self, input, target, positions, weights, label_smooth=0.0, packing=None, per_position=False):
        """The batch loss. packing: the position_ids / pad_index / pack_index / ... of a packed batch
        (data.collate_packed). per_position: the loss of each loss position instead, unweighted (validation.py
        sums them per batch; a forward, so that a wrapper's hooks see it: DeepSpeed's ZeRO-3 gathers weights)."""
        hidden = self.hidden_states(input, packing)
        if per_position:
            return masked_position_losses(hidden, self.head_weight(), target, positions, label_smooth,
                                          self.autocast_dtype or torch.float32, self.model.config.vocab_size)
        return self.loss_fn(hidden, self.head_weight(), target, positions, weights, label_smooth,
                            self.autocast_dtype or torch.float32, self.model.config.vocab_size)

    def hidden_states(self, input, packing=None):
        with torch.autocast(device_type=input.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            if packing is None:
                return self.model.hidden_states(input)
            return self.model.hidden_states(input, packing["position_ids"], PackedAttention(packing))
