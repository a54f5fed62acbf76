"""One way to get a model for both commands: built from its card, then its weights read (checkpoint.py)."""

from .checkpoint import load_weights
from .file_record import check_settings
from .lora import merge_lora
from .lora_variants import DEFAULT_SETTINGS
from .model import build_model


def load_model(card, lora_dim=0, lora_alpha=128, lora_dropout=0.0, init_checkpoint=None, lora_checkpoint=None,
               device=None, dtype=None, merge=False, lora_targets="q,v", lora_scaling="alpha_over_r", dora=False,
               lora_init="kaiming"):
    """GPT-2 of `card` with LoRA of rank lora_dim, built on `device` (the CPU by default; random weights are
    drawn there from torch's generator: seed it first), base weights from init_checkpoint and LoRA tensors
    from lora_checkpoint (either may be None). merge: fold LoRA into the weights (inference); dtype: then
    cast the model to it. Only the LoRA tensors are trainable when lora_dim > 0. lora_targets, lora_scaling,
    dora, lora_init: as the flags of the same names (lora_variants.py); a checkpoint recording other ones is
    refused."""
    model = build_model(card, lora_dim, lora_alpha, lora_dropout, device=device, lora_targets=lora_targets,
                        lora_scaling=lora_scaling, dora=dora, lora_init=lora_init)
    for path in (init_checkpoint, lora_checkpoint):
        if path is not None:
            check_settings(path, model.config, card)  # what our own files record must match the flags
    load_weights(model, init_checkpoint, lora_checkpoint)
    if merge:
        merge_lora(model)
    return model if dtype is None else model.to(dtype)


def variant_kwargs(args):
    """load_model's variant arguments from a command's flags (flags.add_lora_variant_args); the paper's defaults
    for those a caller's namespace lacks."""
    return {key: getattr(args, key, default) for key, default in DEFAULT_SETTINGS.items()}
