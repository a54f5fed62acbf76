"""The training objective of SPEC 5: label-smoothed next-token loss over the completion positions.

Per position: (1 - s) * NLL + s * (-mean over the vocabulary of log p).
Batch loss = sum(loss * mask) / (sum(mask) + 1e-4).

Only the masked positions (the completion, about half the tokens) go through the LM head, in fp32: the
numbers are those of the full [B, T, V] logits, without ever materialising them.
"""

import torch
import torch.nn.functional as F
from torch import nn

MASK_EPSILON = 1e-4


def loss_positions(mask):
    """Flat indices (into B*T) of the positions with a non-zero mask. Computed once per batch on the host."""
    return mask.reshape(-1).nonzero().squeeze(1)


def position_losses(logits, targets, label_smooth=0.0):
    """(1 - s) * NLL + s * mean_v(-log p) per row of logits [N, V], in fp32.

    PyTorch's label_smoothing is this same formula: (1 - s) * nll + s * sum_v(-log p_v) / V.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smooth)


def masked_lm_loss(hidden, head_weight, target, mask, positions=None, label_smooth=0.0):
    """The batch loss from the final hidden states [B, T, d] and the (tied) head weight [V, d]."""
    if positions is None:
        positions = loss_positions(mask)
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = F.linear(picked.float(), head_weight.float())
    losses = position_losses(logits, target.reshape(-1).index_select(0, positions), label_smooth)
    weights = mask.reshape(-1).index_select(0, positions).float()
    return (losses * weights).sum() / (mask.float().sum() + MASK_EPSILON)


class LMObjective(nn.Module):
    """GPT-2 plus its loss as one module, so that DistributedDataParallel sees the whole forward pass."""

    def __init__(self, model, precision="fp32"):
        super().__init__()
        self.model = model
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def forward(self, input, target, mask, positions=None, label_smooth=0.0):
        device_type = input.device.type
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            hidden = self.model.hidden_states(input)
        return masked_lm_loss(hidden, self.model.transformer.wte.weight, target, mask, positions, label_smooth)
