"""One way to get a model for both commands: built from its card, then its weights read (checkpoint.py)."""

from .checkpoint import describe_shape, load_weights
from .errors import InputError
from .lora import merge_lora
from .model import CARDS, GPT2Config, build_model


def load_model(card, lora_dim=0, lora_alpha=128, lora_dropout=0.0, init_checkpoint=None, lora_checkpoint=None,
               device=None, dtype=None, merge=False):
    """GPT-2 of `card` with LoRA of rank lora_dim, built on `device` (the CPU by default; random weights are
    drawn there from torch's generator: seed it first), base weights from init_checkpoint and LoRA tensors
    from lora_checkpoint (either may be None). merge: fold LoRA into the weights (inference); dtype: then
    cast the model to it. Only the LoRA tensors are trainable when lora_dim > 0.
    card: a card name, a GPT2Config, or None when init_checkpoint gives the size (resolve_config); a PEFT
    adapter gives the LoRA's rank, alpha and slices (resolve_lora)."""
    config = resolve_config(card, init_checkpoint)
    lora_dim, lora_alpha, slices = resolve_lora(lora_dim, lora_alpha, init_checkpoint, lora_checkpoint)
    model = build_model(config, lora_dim, lora_alpha, lora_dropout, slices, device=device)
    load_weights(model, init_checkpoint, lora_checkpoint)
    if merge:
        merge_lora(model)
    return model if dtype is None else model.to(dtype)


def add_model_args(parser, default_card):
    """The flags that say which trained model to read, as gpt2_beam.py and gpt2_export.py take them (the
    original's names): --model_card --init_checkpoint --lora_checkpoint --lora_dim --lora_alpha."""
    card = f"default {default_card}; " if default_card else "required unless "
    parser.add_argument("--model_card", default=None, choices=list(CARDS),
                        help="model size: gpt2.sm / gpt2.md / gpt2.lg (GPT-2 small / medium / large), or our small "
                             f"test cards ({card}a transformers directory or nanoGPT --init_checkpoint gives its "
                             "own size, which a card given as well must match)")
    parser.add_argument("--init_checkpoint", default=None, metavar="PATH",
                        help="base weights: hub GPT-2 .bin/.safetensors, a full checkpoint of gpt2_ft.py or the "
                             "original (which may also hold the LoRA tensors), a transformers model directory of any "
                             "size, a nanoGPT checkpoint, or a PEFT adapter directory whose base_model_name_or_path "
                             "is on this machine; without it the base weights are random (seeded)")
    parser.add_argument("--lora_checkpoint", default=None, metavar="PATH",
                        help="LoRA tensors over the base weights: a model.{step}.pt of gpt2_ft.py, a released LoRA "
                             "file, or a PEFT adapter directory (LoRA on c_attn, any rank)")
    parser.add_argument("--lora_dim", type=int, default=0,
                        help="LoRA rank r of the checkpoint (default 0: no LoRA, or a PEFT adapter's own rank)")
    parser.add_argument("--lora_alpha", type=float, default=128,
                        help="LoRA alpha of the checkpoint; scaling = alpha / r (default 128; a PEFT adapter's own "
                             "when --lora_dim is left out)")


def resolve_config(card, init_checkpoint=None, default=None):
    """The model's size: the config of a transformers directory or nanoGPT file given as init_checkpoint
    (a PEFT adapter's local base model too), else the card (`default` when None). A card that disagrees with
    the checkpoint's own config is an InputError."""
    if isinstance(card, GPT2Config):
        return card
    from .hf_formats import implied_shape
    implied = implied_shape(init_checkpoint) if init_checkpoint is not None else {"config": None}
    if implied.get("base_error") is not None:
        raise implied["base_error"]
    fields = implied["config"]
    if fields is None:
        name = card or default
        if name is None:
            raise InputError("no --model_card, and no --init_checkpoint that gives the model's size (a transformers "
                             "directory, a nanoGPT checkpoint)")
        if name not in CARDS:
            raise InputError(f"unknown model card {name!r}; expected one of {', '.join(CARDS)}")
        return GPT2Config.from_card(name)
    if card is not None:
        if card not in CARDS:
            raise InputError(f"unknown model card {card!r}; expected one of {', '.join(CARDS)}")
        want = CARDS[card]
        if any(want[k] != fields[k] for k in ("n_embd", "n_layer", "n_head")):
            raise InputError(f"--model_card {card} is {describe_shape(want['n_embd'], want['n_layer'])}, n_head="
                             f"{want['n_head']}, but this model is {describe_shape(fields['n_embd'], fields['n_layer'])}"
                             f", n_head={fields['n_head']}: leave --model_card out to take the size from "
                             f"{implied['source']}", init_checkpoint)
    return GPT2Config(**fields)


def resolve_lora(lora_dim, lora_alpha, init_checkpoint=None, lora_checkpoint=None):
    """(lora_dim, lora_alpha, slices) of the model to build: the flags', or a PEFT adapter's own rank, alpha
    and slices (lora_dim 0: taken from it; otherwise they must agree). Our .pt files on q,k,v give slices."""
    from .hf_formats import implied_shape
    for path in (lora_checkpoint, init_checkpoint):
        lora = implied_shape(path)["lora"] if path is not None else None
        if lora is None:
            continue
        if "rank" not in lora:
            return lora_dim, lora_alpha, lora["slices"]
        rank, alpha, slices = lora["rank"], lora["alpha"], lora["slices"]
        alpha = int(alpha) if abs(alpha - round(alpha)) < 1e-9 else alpha
        on = ",".join(slices)
        if lora_dim not in (0, rank):
            raise InputError(f"this adapter is a rank-{rank} LoRA on {on} but --lora_dim is {lora_dim}: leave "
                             f"--lora_dim out, or pass {rank}", path)
        if lora_dim == rank and abs(lora_alpha - alpha) > 1e-6 * max(1.0, abs(alpha)):
            raise InputError(f"this adapter's LoRA on {on} has alpha {alpha} at rank {rank} but --lora_alpha is "
                             f"{lora_alpha}: leave --lora_dim and --lora_alpha out, or pass --lora_alpha {alpha}", path)
        return rank, alpha, slices
    return lora_dim, lora_alpha, "qv"
