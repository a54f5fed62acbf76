"""One way to get a model for both commands: built from its card, then its weights read (checkpoint.py)."""

import contextlib

import torch
from torch.overrides import TorchFunctionMode

from .checkpoint import describe_shape, load_weights
from .errors import InputError
from .file_record import check_settings
from .flags import parse_targets
from .lora import lora_layers, merge_lora
from .lora_variants import DEFAULT_SETTINGS
from .model import CARDS, GPT2Config, build_model


def load_model(card, lora_dim=0, lora_alpha=128, lora_dropout=0.0, init_checkpoint=None, lora_checkpoint=None,
               device=None, dtype=None, merge=False, lora_targets="q,v", lora_scaling="alpha_over_r", dora=False,
               lora_init="kaiming", mark=lambda name: None):
    """GPT-2 of `card` with LoRA of rank lora_dim, built on `device` (the CPU by default; random weights are
    drawn there from torch's generator: seed it first), base weights from init_checkpoint and LoRA tensors
    from lora_checkpoint (either may be None). merge: fold LoRA into the weights (inference; the base weights
    of init_checkpoint are then read into memory no random weights were drawn into: NoRandomInit); dtype: then
    cast the model to it. Only the LoRA tensors are trainable when lora_dim > 0. mark(name): called after each part
    (timing.Timeline.phase).
    card: a card name, a GPT2Config, or None when init_checkpoint gives the size (resolve_config); a PEFT
    adapter gives the LoRA's rank, alpha and slices (resolve_lora). lora_targets, lora_scaling, dora,
    lora_init: as the flags of the same names (lora_variants.py); a checkpoint recording other ones is refused."""
    config = resolve_config(card, init_checkpoint)
    lora_dim, lora_alpha, from_file = resolve_lora(lora_dim, lora_alpha, init_checkpoint, lora_checkpoint)
    lora_targets, lora_scaling, dora = resolve_variant(from_file, lora_targets, lora_scaling, dora)
    without_init = merge and init_checkpoint is not None
    with NoRandomInit() if without_init else contextlib.nullcontext():
        model = build_model(config, lora_dim, lora_alpha, lora_dropout, device=device, lora_targets=lora_targets,
                            lora_scaling=lora_scaling, dora=dora, lora_init=lora_init)
    if without_init:
        for layer in lora_layers(model):  # in case no file holds them: B zero, so merging adds nothing
            layer.reset_lora()
    mark("build model")
    for path in (init_checkpoint, lora_checkpoint):
        if path is not None:
            check_settings(path, model.config, card)  # what our own files record must match the flags
    load_weights(model, init_checkpoint, lora_checkpoint)
    mark("read weights into the model")
    if merge:
        merge_lora(model)
        mark("merge LoRA")
    return model if dtype is None else model.to(dtype)


class NoRandomInit(TorchFunctionMode):
    """Inside, random fills leave a tensor as torch.empty made it: a merged model whose base
    weights all come from a checkpoint (load_weights refuses a file that lacks one) is built without drawing
    weights the file overwrites (seconds on a CPU for gpt2.md). The meta device would do it too, but its
    random fills import torch._dynamo (seconds)."""

    SKIPPED = {torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
               torch.Tensor.normal_, torch.Tensor.uniform_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:  # the tensor filled in place, however it was passed
            return args[0] if args else (kwargs.get("tensor") if "tensor" in kwargs else kwargs["self"])
        return func(*args, **(kwargs or {}))


def variant_kwargs(args):
    """load_model's variant arguments from a command's flags (flags.add_lora_variant_args); the paper's defaults
    for those a caller's namespace lacks."""
    return {key: getattr(args, key, default) for key, default in DEFAULT_SETTINGS.items()}


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
    """(lora_dim, lora_alpha, settings) of the model to build: the flags' (settings None: the variant flags
    decide), or a PEFT adapter's own rank and alpha (lora_dim 0: taken from it; otherwise they must agree) with
    its settings {lora_targets, lora_scaling, dora, source}; our .pt files with LoRA on all of q,k,v give
    {lora_targets: "q,k,v"}."""
    from .hf_formats import implied_shape
    for path in (lora_checkpoint, init_checkpoint):
        lora = implied_shape(path)["lora"] if path is not None else None
        if lora is None:
            continue
        if "rank" not in lora:  # our .pt with LoRA on all of q,k,v (e.g. a converted adapter)
            return lora_dim, lora_alpha, {"lora_targets": ",".join(lora["slices"]), "source": None}
        rank, alpha, on = lora["rank"], lora["alpha"], lora["targets"]
        alpha = int(alpha) if abs(alpha - round(alpha)) < 1e-9 else alpha
        if lora_dim not in (0, rank):
            raise InputError(f"this adapter is a rank-{rank} LoRA on {on} but --lora_dim is {lora_dim}: leave "
                             f"--lora_dim out, or pass {rank}", path)
        if lora_dim == rank and abs(lora_alpha - alpha) > 1e-6 * max(1.0, abs(alpha)):
            raise InputError(f"this adapter's LoRA on {on} has alpha {alpha} at rank {rank} but --lora_alpha is "
                             f"{lora_alpha}: leave --lora_dim and --lora_alpha out, or pass --lora_alpha {alpha}", path)
        return rank, alpha, {"lora_targets": on, "lora_scaling": lora["scaling"], "dora": lora["dora"],
                             "source": path}
    return lora_dim, lora_alpha, None


VARIANT_FLAGS = {"lora_targets": "--lora_targets", "lora_scaling": "--lora_scaling", "dora": "--dora"}


def resolve_variant(from_file, lora_targets, lora_scaling, dora):
    """(lora_targets, lora_scaling, dora): a flag left at its default takes the adapter's setting; a flag
    set otherwise than a PEFT adapter says is an InputError (our .pt files: loading checks their tensors)."""
    flags = {"lora_targets": lora_targets, "lora_scaling": lora_scaling, "dora": dora}
    for key, value in (from_file or {}).items():
        if key == "source":
            continue
        flag = flags[key]
        if flag is None or normalized(key, flag) == normalized(key, DEFAULT_SETTINGS[key]):
            flags[key] = value
        elif from_file["source"] is not None and normalized(key, flag) != normalized(key, value):
            shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
            raise InputError(f"this adapter's LoRA has {VARIANT_FLAGS[key]} {shown} but the flag says "
                             f"{normalized(key, flag)}: leave {VARIANT_FLAGS[key]} out", from_file["source"])
    return flags["lora_targets"], flags["lora_scaling"], flags["dora"]


def normalized(key, value):
    if key == "lora_targets":
        return ",".join(parse_targets(value))
    return ("on" if value else "off") if key == "dora" else value
