"""GPT-2 + LoRA weights in and out of every checkpoint format of SPEC 3-4.

Read:  hub GPT-2 (`pytorch_model.bin` with legacy keys, `model.safetensors`), keys with or without the
       `transformer.` / `module.transformer.` prefixes, the original's `{"model_state_dict": ...}` files
       (full or LoRA-only), and base weights plus a separate LoRA file.
Write: LoRA-only and full checkpoints in the original's layout, and a merged export in the hub's layout.
Anything that does not fit the model exactly is an InputError that names it; nothing is left at random.
"""

import json
import os
import pickle
import re
import sys

import torch

from . import file_record
from .errors import InputError
from .files import atomic_output
from .flags import MODULE_TARGETS, targets_text
from .lora import SLICE_NAMES, lora_layers, named_lora_layers
from .lora_variants import DoRA, config_targets, lora_settings
from .model import CARDS, unwrap

ORIGINAL_PREFIX = "module.transformer."  # what the original's DDP-wrapped model writes
# Buffers (the causal mask) that hub and original files may hold; they carry nothing.
CONSTANT_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
TIED_HEAD_KEYS = ("lm_head.weight", "lm_head.decoder.weight")
LEGACY_SUFFIXES = {".g": ".weight", ".b": ".bias", ".w": ".weight"}  # very old GPT-2 conversions
SHOWN = 6  # how many offending keys an error lists
# LoRA tensors: the original's lora_A / lora_B, and DoRA's magnitudes (lora_variants.py)
LORA_SUFFIXES = (".lora_A", ".lora_B", ".lora_magnitude")


# ---------------------------------------------------------------- naming a model's size

def card_name(n_embd, n_layer):
    for name, shape in CARDS.items():
        if shape["n_embd"] == n_embd and shape["n_layer"] == n_layer:
            return name
    return None


def describe_shape(n_embd, n_layer):
    name = card_name(n_embd, n_layer)
    shape = f"n_embd={n_embd}, n_layer={n_layer}"
    return f"{name} ({shape})" if name else shape


# ---------------------------------------------------------------- reading files

def read_state_dict(path, as_lora=False):
    """Any supported file -> {key: tensor} with keys relative to the transformer (`h.0.attn.c_attn.weight`),
    plus the tied head under 'lm_head.weight' when the file has one. Directories (transformers models, PEFT
    adapters; `as_lora`: an adapter without its base) and nanoGPT files are read by hf_formats.py."""
    return read_checkpoint(path, as_lora)[0]


def read_checkpoint(path, as_lora=False):
    """(read_state_dict's {key: tensor}, the file's "loranlg" settings entry or {})."""
    raw = read_other_format(path, as_lora)
    file_record.verify(raw, path)
    recorded = {}
    if isinstance(raw, dict) and isinstance(raw.get(file_record.KEY), dict):
        recorded = raw[file_record.KEY]
    if isinstance(raw, dict):
        for wrapper in ("model_state_dict", "state_dict"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw:
        raise InputError("expected a state dict (a mapping of names to tensors), or {'model_state_dict': ...}",
                         path)
    state = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"entry {key!r} is a {type(value).__name__}, not a tensor: not a model state dict",
                             path)
        name = normalize_key(key)
        if name in state:
            raise InputError(f"two entries map to the same weight {name!r} (one of them is {key!r})", path)
        state[name] = value
    return state, recorded


def read_other_format(path, as_lora):
    from . import hf_formats
    if os.path.isdir(path):
        return hf_formats.read_directory(os.fspath(path), as_lora)
    raw = read_tensors(path)
    return hf_formats.nanogpt_state(raw, path) if hf_formats.is_nanogpt(raw) else raw


def normalize_key(key):
    for prefix in ("module.", "transformer."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key in TIED_HEAD_KEYS:
        return "lm_head.weight"
    for old, new in LEGACY_SUFFIXES.items():
        if key.endswith(old):
            return key[:-len(old)] + new
    return key


def read_tensors(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("checkpoint not found", path)
    if os.path.isdir(path):
        raise InputError("expected a checkpoint file, found a directory (pass the .bin/.pt/.safetensors file)",
                         path)
    if is_safetensors(path):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise InputError(f"cannot read this safetensors file: {err}", path) from None
    return torch_load(path)


def is_safetensors(path):
    """A safetensors file starts with an 8-byte header length and then its JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def torch_load(path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    is_zip = magic == b"PK"
    if not (is_zip or magic[:1] == b"\x80"):  # torch.save writes a zip archive, or (before 1.6) a pickle
        raise InputError("not a PyTorch checkpoint or safetensors file", path)
    try:  # the zip format maps lazily: gpt2.lg is not read into memory twice
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        refusal = first_line(err)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"not a PyTorch checkpoint, or truncated ({first_line(err)})", path) from None
    print(f"note: {path} holds objects that torch.load(weights_only=True) refuses ({refusal}); loading it "
          "with full unpickling (only do this with files you trust)", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise InputError(f"not a PyTorch checkpoint, or truncated ({first_line(err)})", path) from None


def first_line(err):
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---------------------------------------------------------------- loading into the model

def load_weights(model, init_checkpoint=None, lora_checkpoint=None):
    """Load base weights (and any LoRA tensors they carry) from `init_checkpoint`, then LoRA tensors from
    `lora_checkpoint`. Every weight of the model that a file is expected to provide must be in it, with its
    shape; anything else raises InputError, and so do LoRA settings a file records (targets, scaling, DoRA)
    that differ from the model's. With neither file the model keeps its current weights.
    DoRA's magnitudes start from the loaded base weights (||W0 + dW||_col) unless a file holds them."""
    model = unwrap(model)
    for layer in lora_layers(model):
        layer.unmerge()  # weights are loaded unmerged; a merged model would mix old and new
    if init_checkpoint is not None:
        loaded_lora = load_init(model, init_checkpoint)
        for name, layer in named_lora_layers(model).items():
            key = name[len("transformer."):] + ".lora_magnitude"
            if isinstance(layer, DoRA) and key not in loaded_lora:
                layer.reset_magnitude()
    if lora_checkpoint is not None:
        load_lora_file(model, lora_checkpoint)


def model_tensors(model):
    """The model's parameters by transformer-relative name: (base, lora)."""
    prefix = "transformer."
    named = {name[len(prefix):]: p for name, p in model.named_parameters()}
    base = {k: p for k, p in named.items() if not is_lora_key(k)}
    lora = {k: p for k, p in named.items() if is_lora_key(k)}
    return base, lora


def is_lora_key(key):
    return key.endswith(LORA_SUFFIXES)


def split_state(state, path, model):
    """-> (base, lora, tied head or None); constant buffers are dropped."""
    head = state.pop("lm_head.weight", None)
    state = {k: v for k, v in state.items() if not CONSTANT_BUFFER.match(k)}
    base = {k: v for k, v in state.items() if not is_lora_key(k)}
    lora = {k: v for k, v in state.items() if is_lora_key(k)}
    check_card(model, base, lora, path)
    return base, lora, head


def check_card(model, base, lora, path):
    """A checkpoint of another model size is named as such, before any per-key complaint."""
    config = model.config
    layers = {int(m.group(1)) for k in [*base, *lora] if (m := re.match(r"h\.(\d+)\.", k))}
    if "wte.weight" in base and base["wte.weight"].dim() == 2:
        n_embd = base["wte.weight"].shape[1]
    else:
        widths = [v.shape[1] for k, v in lora.items() if k.endswith("lora_A") and v.dim() == 2]
        if not widths:
            return  # nothing to tell the size by; the per-key checks speak
        n_embd = widths[0]
    n_layer = max(layers) + 1 if layers else 0
    if (n_embd, n_layer) != (config.n_embd, config.n_layer):
        raise InputError(f"this checkpoint is {describe_shape(n_embd, n_layer)} but the model is "
                         f"{describe_shape(config.n_embd, config.n_layer)}: pick the matching --model_card",
                         path)


def load_init(model, path):
    """-> the LoRA keys it loaded."""
    state, recorded = read_checkpoint(path)
    base, lora, head = split_state(state, path, model)
    want_base, want_lora = model_tensors(model)
    if not base and lora:
        raise InputError("this file holds only LoRA tensors; pass the base GPT-2 weights as the init "
                         "checkpoint and this file as the LoRA checkpoint (--lora_checkpoint)", path)
    check_keys(base, want_base, path, "weights")
    if lora:
        check_lora(model, lora, want_lora, path)
        check_recorded(model, recorded, path)
    check_shapes(base, want_base, path)
    if head is not None:
        check_tied(head, base["wte.weight"], path)
    copy_into(want_base, base)
    copy_into(want_lora, lora)
    return set(lora)


def load_lora_file(model, path):
    state, recorded = read_checkpoint(path, as_lora=True)
    base, lora, _ = split_state(state, path, model)
    want_base, want_lora = model_tensors(model)
    if not lora:
        raise InputError("no LoRA tensors (…attn.c_attn.lora_A / lora_B) in this LoRA checkpoint", path)
    check_lora(model, lora, want_lora, path)
    check_recorded(model, recorded, path)
    if base:  # a full checkpoint of a LoRA run: its frozen weights must be the ones already loaded
        check_keys(base, want_base, path, "weights")
        check_shapes(base, want_base, path)
        differ = [k for k, v in base.items() if not torch.equal(v.to(want_base[k]), want_base[k].detach())]
        if differ:
            raise InputError(f"its base weights differ from the model's ({listing(differ)}): a fully fine-tuned "
                             "checkpoint? pass it as the init checkpoint instead", path)
    copy_into(want_lora, lora)


FLAG_OF_SETTING = {"lora_targets": "--lora_targets", "lora_scaling": "--lora_scaling", "dora": "--dora"}


def check_recorded(model, recorded, path):
    """The LoRA settings the file records (lora_variants.lora_settings; the original's files and older ones
    record none: their tensors are checked alone) against the model's; lora_init only mattered at the start."""
    if model.config.lora_dim == 0:
        return  # check_lora says the model has no LoRA
    ours = lora_settings(model.config)

    def shown(value):
        return ("on" if value else "off") if isinstance(value, bool) else value

    differ = [f"{flag} {shown(recorded[key])} (the model: {shown(ours[key])})"
              for key, flag in FLAG_OF_SETTING.items() if key in recorded and recorded[key] != ours[key]]
    if differ:
        raise InputError("this checkpoint was trained with other LoRA settings: " + "; ".join(differ) +
                         ": pass the flags it was trained with", path)


def module_targets_of_keys(keys):
    """The o / fc / proj targets that LoRA keys adapt (h.{i}.attn.c_proj.lora_A -> 'o'), in flag order."""
    modules = {m.group(1) for key in keys if (m := re.match(r"h\.\d+\.(.+)\.lora_", key))}
    return [name for name, module in MODULE_TARGETS.items() if module in modules]


def check_lora(model, lora, want_lora, path):
    if not want_lora:
        raise InputError(f"holds LoRA tensors ({listing(sorted(lora))}) but the model has no LoRA "
                         "(lora_dim 0): pass the rank they were trained with (--lora_dim)", path)
    config = model.config
    rank = config.lora_dim
    targets = targets_text(config_targets(config))
    file_modules, model_modules = module_targets_of_keys(lora), module_targets_of_keys(want_lora)
    if file_modules != model_modules:
        raise InputError(f"LoRA on {','.join(file_modules) or 'none'} of o, fc, proj in the file, but the model's "
                         f"--lora_targets are {targets}: pass the targets it was trained with", path)
    dora_file = any(k.endswith(".lora_magnitude") for k in lora)
    dora_model = any(k.endswith(".lora_magnitude") for k in want_lora)
    if dora_file != dora_model:
        raise InputError("the file holds DoRA magnitudes (lora_magnitude) but the model is plain LoRA: pass --dora"
                         if dora_file else "the model is DoRA (--dora) but the file holds no magnitudes "
                         "(lora_magnitude): a plain LoRA checkpoint? leave out --dora", path)
    qkv = [m for m in model.transformer.h[0].attn.modules() if hasattr(m, "enabled")]
    slices = len(qkv[0].enabled) if qkv and qkv[0].r > 0 else 0
    matrices = {k: v for k, v in lora.items() if v.dim() == 2}
    for key, value in matrices.items():  # the rank first: it also decides how A's rows split into slices
        if key.endswith("lora_B") and value.shape[1] != rank:
            raise InputError(f"LoRA rank {value.shape[1]} in the file ({key} {list(value.shape)}) but the "
                             f"model has lora_dim {rank}", path)
    for key, value in matrices.items():
        if (".c_attn." in key and key.endswith("lora_A") and value.shape[0] % rank == 0
                and value.shape[0] // rank != slices):
            on = "".join(n for n, flag in zip(SLICE_NAMES, config.lora_slices) if flag)
            raise InputError(f"LoRA on {value.shape[0] // rank} slice(s) of c_attn in the file ({key} "
                             f"{list(value.shape)}) but the model adapts {slices} ({on or 'none'}): pass the "
                             f"--lora_targets it was trained with (the model's: {targets})", path)
    check_keys(lora, want_lora, path, "LoRA tensors")
    check_shapes(lora, want_lora, path)


def check_keys(found, wanted, path, what):
    missing = sorted(set(wanted) - set(found), key=natural)
    unexpected = sorted(set(found) - set(wanted), key=natural)
    problems = []
    if missing:
        problems.append(f"missing {what}: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {what}: {listing(unexpected)}")
    if problems:
        raise InputError("; ".join(problems), path)


def check_shapes(found, wanted, path):
    wrong = [f"{k} {list(found[k].shape)} (model: {list(wanted[k].shape)})"
             for k in sorted(found, key=natural) if found[k].shape != wanted[k].shape]
    if wrong:
        raise InputError(f"wrong shapes: {listing(wrong)}", path)


def check_tied(head, wte, path):
    if head.shape != wte.shape or not torch.equal(head.to(wte.dtype), wte):
        raise InputError("lm_head.weight differs from wte.weight, but GPT-2 ties them; this is not a GPT-2 "
                         "checkpoint of this kind", path)


def copy_into(params, state):
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def listing(keys):
    keys = list(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def natural(key):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


# ---------------------------------------------------------------- writing

def gather(model, merged, keep=lambda name: True, on_cpu=True):
    """Transformer-relative name -> fp32 CPU copy of each parameter that `keep` accepts, with c_attn's
    weight as if the LoRA update were merged (`merged`) or kept apart (not), whatever the model's state.
    on_cpu=False: the fp32 tensors where the model is, for fp32 parameters the parameters' own data (copied
    before the model changes by checkpoint_writer.py)."""
    model = unwrap(model)
    place = (lambda tensor: tensor.to("cpu", copy=True)) if on_cpu else (lambda tensor: tensor)
    out = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep(name[len("transformer."):]):
                out[name[len("transformer."):]] = place(param.detach().float())
        for module_name, layer in named_lora_layers(model).items():
            key = module_name[len("transformer."):] + ".weight"
            if layer.merged != merged and key in out:
                weight = layer.merged_weight() if merged else layer.unmerged_weight()
                out[key] = place(weight.detach().float())
    return out


def lora_state(model, on_cpu=True):
    """The LoRA tensors only, as the original writes them: {'model_state_dict': {'module.transformer.h.{i}
    .attn.c_attn.lora_A': ...}} in fp32 (about 1.5 MB for gpt2.md at r=4). on_cpu: as gather's."""
    state = {ORIGINAL_PREFIX + k: v for k, v in gather(model, False, is_lora_key, on_cpu).items()}
    if not state:
        raise ValueError("the model has no LoRA tensors (lora_dim 0); save it with save_full")
    return {"model_state_dict": state}


def full_state(model, on_cpu=True):
    """The whole model (LoRA unmerged) in the original's layout: {'model_state_dict': {'module.transformer.*'}}."""
    return {"model_state_dict": {ORIGINAL_PREFIX + k: v for k, v in gather(model, False, on_cpu=on_cpu).items()}}


def model_state(model, on_cpu=True):
    """What gpt2_ft.py writes as model.{step}.pt: the LoRA tensors (lora_state), or with no LoRA the whole
    model (full_state)."""
    return lora_state(model, on_cpu) if unwrap(model).config.lora_dim > 0 else full_state(model, on_cpu)


def save_lora(model, path):
    """lora_state written to `path` (sealed, atomically)."""
    write_sealed(lora_state(model), model, path)


def save_full(model, path):
    """full_state written to `path`."""
    write_sealed(full_state(model), model, path)


def save_model(model, path):
    """model_state written to `path`."""
    write_sealed(model_state(model), model, path)


def write_sealed(content, model, path):
    """`content` with its file_record entry (the model's settings, the checksum), written atomically."""
    write_torch(file_record.sealed(content, unwrap(model).config), path)


def write_torch(obj, path):
    with atomic_output(path, "wb") as handle:
        torch.save(obj, handle)


def export_merged(model, path):
    """LoRA merged into the weights, saved as safetensors with the hub's key names (`wte.weight`,
    `h.0.attn.c_attn.weight`, ...; head tied, so absent). transformers' GPT2LMHeadModel loads it. When
    `path` is a directory, it receives model.safetensors and a matching config.json (from_pretrained-ready)."""
    from safetensors.torch import save as safetensors_bytes
    model = unwrap(model)
    directory = os.fspath(path).endswith(os.sep) or os.path.isdir(path)
    file_path = os.path.join(path, "model.safetensors") if directory else path
    payload = safetensors_bytes(gather(model, merged=True, keep=lambda k: not is_lora_key(k)),
                                metadata={"format": "pt"})
    with atomic_output(file_path, "wb") as handle:
        handle.write(payload)
    if directory:
        with atomic_output(os.path.join(path, "config.json")) as handle:
            json.dump(hub_config(model.config), handle, indent=2)
            handle.write("\n")
    return file_path


def hub_config(config):
    """A transformers GPT2Config (as JSON) describing our model: no dropout anywhere, tied head."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
    }
