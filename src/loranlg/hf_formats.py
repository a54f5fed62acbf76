"""The Hugging Face side of our checkpoints: PEFT LoRA adapters out and in, transformers GPT-2 directories of
any size, nanoGPT checkpoints. checkpoint.py reads the original's formats and dispatches here for these.

PEFT's LoRA and ours
--------------------
PEFT adapts a whole module:    delta_h = s_p x A^T B^T,   A [R, in], B [out, R],   s_p = lora_alpha / R
(lora_alpha / sqrt(R) with use_rslora). Ours adapts slices of c_attn's output (SPEC 4, q and v):
    delta_h_s = (alpha / r) x A_s^T B_s^T  on slice s,   A_s [r, d], B_s [d, r]
The two are the same map when (for q, v; c_attn's output is q | k | v):
    A = [A_q; A_v]                         [2r, d]   our lora_A as it is
    B = [[B_q, 0], [0, 0], [0, B_v]]       [3d, 2r]  rows q | k | v; columns q's rank block | v's
    lora_alpha_peft = 2 alpha              so that s_p = 2 alpha / 2r = alpha / r
because x A^T = [x A_q^T, x A_v^T] and each slice's rows of B read only their own rank block of it, while k's
rows are zero: x A^T B^T = [x A_q^T B_q^T, 0, x A_v^T B_v^T]. With n adapted slices of a module the PEFT rank
is n r and lora_alpha n alpha (`slices_to_peft`); tests/test_hf_formats.py checks the logits against
PeftModel. Backwards, an adapter we wrote (its safetensors metadata says so, and its B has exactly that block
structure) becomes our rank-r LoRA again; any other PEFT adapter of rank R (one trained by peft adapts q, k and v
through one shared A) is our LoRA on every slice at rank R: A_s = A, B_s = B's rows of s, alpha = s_p R
(`shared_to_slices`): the same map again. The other modules (attn.c_proj, mlp.c_fc, mlp.c_proj: our o, fc,
proj) are whole-module LoRA on both sides, tensors as they are; DoRA's lora_magnitude_vector [out] is our
lora_magnitude (on c_attn its adapted slices' columns). Our LoRA has one rank r and one alpha: an adapter
whose modules (after the mapping above; rank_pattern / alpha_pattern applied) differ in either is refused,
and so is one on other modules. alpha is s_p r, or s_p sqrt(r) with use_rslora (read as --lora_scaling rs).

transformers' GPT-2 keeps c_attn as a Conv1D (weight [in, out], like ours); PEFT marks it fan_in_fan_out,
which only transposes the base weight when merging: lora_A / lora_B are [R, in] / [out, R] either way.
"""

import functools
import json
import math
import os
import re
import sys

import torch

from .errors import InputError
from .files import atomic_output
from .flags import MODULE_TARGETS
from .lora import SLICE_NAMES, named_lora_layers
from .lora_variants import peft_config

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PEFT_PREFIX = "base_model.model."
LAYOUT_KEY = "loranlg_lora_slices"  # safetensors metadata of an adapter we wrote: "q,v:4" (slices, our rank)
HUB_IDS = {"gpt2.sm": "openai-community/gpt2", "gpt2.md": "openai-community/gpt2-medium",
           "gpt2.lg": "openai-community/gpt2-large"}


# ---------------------------------------------------------------- the mapping, target by target

def slices_to_peft(blocks, n_parts, width):
    """[(part index, A_s [r, in], B_s [width, r]), ...] -> (A [n r, in], B [n_parts width, n r]): one LoRA of the
    whole module that equals the slices' with lora_alpha times n (the module docstring's block structure)."""
    rank = blocks[0][1].shape[0]
    A = torch.cat([a for _, a, _ in blocks])
    B = A.new_zeros(n_parts * width, len(blocks) * rank)
    for s, (part, _, b) in enumerate(blocks):
        B[part * width:(part + 1) * width, s * rank:(s + 1) * rank] = b
    return A, B


def peft_to_slices(A, B, parts, width):
    """The inverse of slices_to_peft for the adapted `parts`: the blocks, or None when B is not zero wherever
    slices_to_peft leaves zeros (then the adapter is read as a shared one)."""
    rank = A.shape[0] // len(parts)
    if rank * len(parts) != A.shape[0]:
        return None
    expected = slices_to_peft([(p, A[s * rank:(s + 1) * rank], B[p * width:(p + 1) * width, s * rank:(s + 1) * rank])
                               for s, p in enumerate(parts)], B.shape[0] // width, width)[1]
    if not torch.equal(expected, B):
        return None
    return [(p, A[s * rank:(s + 1) * rank], B[p * width:(p + 1) * width, s * rank:(s + 1) * rank])
            for s, p in enumerate(parts)]


def shared_to_slices(A, B, n_parts, width):
    """Any PEFT LoRA of the whole module -> every slice adapted at rank R through the same A."""
    return [(p, A, B[p * width:(p + 1) * width]) for p in range(n_parts)]


# ---------------------------------------------------------------- writing a PEFT adapter

def peft_adapter(model):
    """({PEFT key: tensor}, adapter_config settings) of our model's LoRA: each adapted layer as peft's LoRA of
    the whole module (layer.peft_tensors(); on c_attn the slices' B expanded with zero rows for the slices left
    alone, at rank n*r), the settings from lora_variants.peft_config. With c_attn alone (the paper's q,v) the
    rank and alpha are written plainly, r = n*r and lora_alpha = n*alpha, which keeps alpha / r."""
    config = model.config
    state = {}
    for name, layer in named_lora_layers(model).items():
        tensors = layer.peft_tensors()
        prefix = f"{PEFT_PREFIX}{name}"
        state[f"{prefix}.lora_A.weight"] = tensors["lora_A"].detach().float().cpu().contiguous()
        state[f"{prefix}.lora_B.weight"] = tensors["lora_B"].detach().float().cpu().contiguous()
        if tensors["magnitude"] is not None:
            state[f"{prefix}.lora_magnitude_vector"] = tensors["magnitude"].detach().float().cpu().contiguous()
    settings = peft_config(config)
    if settings["target_modules"] == ["c_attn"] and settings["rank_pattern"]:
        settings["r"], settings["lora_alpha"] = settings["rank_pattern"].pop("c_attn"), \
            settings["alpha_pattern"].pop("c_attn")
    return state, settings


def write_peft_adapter(model, directory, base_model=None):
    """adapter_config.json + adapter_model.safetensors: our LoRA as a PEFT LoRA of each whole target module,
    loadable by PeftModel.from_pretrained(GPT2LMHeadModel ..., directory). Written without peft."""
    from safetensors.torch import save as safetensors_bytes
    from .model import unwrap
    model = unwrap(model)
    state, settings = peft_adapter(model)
    if not state:
        raise InputError("the model has no LoRA (lora_dim 0): nothing to write as a PEFT adapter")
    config = model.config
    slices = ",".join(n for n, on in zip(SLICE_NAMES, config.lora_slices) if on)
    alpha = settings["lora_alpha"]
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        **settings, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None, "inference_mode": True,
    }
    os.makedirs(directory, exist_ok=True)
    metadata = {"format": "pt", LAYOUT_KEY: f"{slices}:{config.lora_dim}"}
    with atomic_output(os.path.join(directory, PEFT_WEIGHTS[0]), "wb") as handle:
        handle.write(safetensors_bytes(state, metadata=metadata))
    write_json(os.path.join(directory, PEFT_CONFIG), adapter_config)
    return directory


def default_base_model(card, init_checkpoint):
    """What adapter_config.json names as the base: a transformers directory given as --init_checkpoint (its
    absolute path), the base a PEFT adapter given there names, else the hub's id of a standard card, else None."""
    if init_checkpoint and os.path.isfile(os.path.join(init_checkpoint, PEFT_CONFIG)):
        return read_json(os.path.join(init_checkpoint, PEFT_CONFIG)).get("base_model_name_or_path")
    if init_checkpoint and os.path.isfile(os.path.join(init_checkpoint, HF_CONFIG)):
        return os.path.abspath(init_checkpoint)
    return HUB_IDS.get(card)


# ---------------------------------------------------------------- a transformers model directory

def write_tokenizer(vocab_dir, directory, config):
    """vocab.json + merges.txt + tokenizer_config.json from our vocabulary directory, for AutoTokenizer."""
    import shutil
    from .tokenizer import find_vocab_files
    vocab_json, merges = find_vocab_files(vocab_dir)
    with open(vocab_json, encoding="utf-8") as handle:
        size = len(json.load(handle))
    if size > config.vocab_size:
        raise InputError(f"the vocabulary has {size} tokens but the model only {config.vocab_size}", vocab_dir)
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(vocab_json, os.path.join(directory, "vocab.json"))
    shutil.copyfile(merges, os.path.join(directory, "merges.txt"))
    eot = "<|endoftext|>"
    write_json(os.path.join(directory, "tokenizer_config.json"),
               {"tokenizer_class": "GPT2Tokenizer", "model_max_length": config.n_positions,
                "bos_token": eot, "eos_token": eot, "unk_token": eot, "add_prefix_space": False})


def write_json(path, obj):
    with atomic_output(path) as handle:
        json.dump(obj, handle, indent=2)
        handle.write("\n")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read it as JSON ({err})", path) from None


def hf_config_fields(config, path):
    """A transformers config.json -> our GPT2Config fields; what our GPT-2 cannot compute is an InputError."""
    where = os.path.join(path, HF_CONFIG)
    if config.get("model_type", "gpt2") != "gpt2":
        raise InputError(f"model_type {config.get('model_type')!r}: only GPT-2 models are supported", where)
    problems = []
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function {config['activation_function']!r} (ours is GPT-2's tanh GELU)")
    if config.get("n_inner") not in (None, 4 * config.get("n_embd", 768)):
        problems.append(f"n_inner {config['n_inner']} (ours is 4 * n_embd)")
    if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scaled otherwise than by 1/sqrt(head dim)")
    if problems:
        raise InputError("not representable by our GPT-2: " + "; ".join(problems), where)
    try:
        fields = dict(n_embd=int(config.get("n_embd", 768)), n_layer=int(config.get("n_layer", 12)),
                      n_head=int(config.get("n_head", 12)), n_positions=int(config.get("n_positions", 1024)),
                      vocab_size=int(config.get("vocab_size", 50257)),
                      layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)))
    except (TypeError, ValueError) as err:
        raise InputError(f"a size field is not a number ({err})", where) from None
    if fields["n_embd"] % fields["n_head"]:
        raise InputError(f"n_embd {fields['n_embd']} is not a multiple of n_head {fields['n_head']}", where)
    return fields


def read_hf_weights(path):
    """The tensors of a transformers directory (model.safetensors, sharded or not, or pytorch_model.bin)."""
    from .checkpoint import read_tensors
    for name in HF_WEIGHTS:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if not name.endswith(".index.json"):
            return read_tensors(file)
        shards = sorted(set(read_json(file).get("weight_map", {}).values()))
        state = {}
        for shard in shards:
            state.update(read_tensors(os.path.join(path, shard)))
        return state
    raise InputError(f"a transformers directory without weights (expected one of {', '.join(HF_WEIGHTS)})", path)


# ---------------------------------------------------------------- reading a PEFT adapter

UNSUPPORTED_PEFT = (  # adapter_config.json fields whose non-default values we cannot represent
    ("lora_bias", "a LoRA bias (lora_bias)"), ("modules_to_save", "fully trained modules (modules_to_save)"),
    ("layers_to_transform", "a subset of layers (layers_to_transform)"), ("layer_replication", "layer_replication"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
    ("target_parameters", "LoRA on parameters (target_parameters)"), ("use_qalora", "QALoRA (use_qalora)"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"), ("alora_invocation_tokens", "aLoRA (alora_invocation_tokens)"),
)
GPT2_MODULES = ("attn.c_attn",) + tuple(MODULE_TARGETS.values())  # what a PEFT LoRA of GPT-2 may adapt
TARGET_OF_MODULE = {module: name for name, module in MODULE_TARGETS.items()}  # attn.c_proj -> o
PEFT_KEY = re.compile(r"^(?:transformer\.)?h\.(\d+)\.(.+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.default)?"
                      r"(?:\.weight)?$")
REPRESENTABLE = "this adapter is not representable by our LoRA (on GPT-2's c_attn, c_proj, c_fc): "


def read_peft_adapter(path):
    """A PEFT adapter directory -> (lora shape {rank, alpha, targets, scaling, dora}, {our key: tensor}) in our
    layout: targets as --lora_targets text, scaling as --lora_scaling, dora as --dora."""
    where = os.path.join(path, PEFT_CONFIG)
    config = read_json(where)
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(f"a {config.get('peft_type')} adapter: only LoRA adapters are representable", where)
    problems = [what for key, what in UNSUPPORTED_PEFT if config.get(key) not in (None, False, {}, [], "none")]
    if config.get("bias", "none") != "none":
        problems.append(f"trained biases (bias={config['bias']!r})")
    modules, others = adapter_modules(read_adapter_tensors(path))
    if others:
        problems.append(f"LoRA on other modules than GPT-2's ({', '.join(adapted_modules(others))})")
    if problems:
        raise InputError(REPRESENTABLE + "; ".join(problems), path)
    if not modules:
        raise InputError("no LoRA tensors of c_attn, c_proj or c_fc in this adapter", path)
    check_coverage(modules, bool(config.get("use_dora")), path)
    return peft_state(modules, config, adapter_layout(path), path)


def adapter_modules(raw):
    """PEFT's tensors -> ({(block, module): {"lora_A", "lora_B", "lora_magnitude_vector"}}, other keys)."""
    modules, others = {}, []
    for key, value in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = PEFT_KEY.match(name)
        if match and match.group(2) in GPT2_MODULES:
            modules.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = value.float()
        else:
            others.append(name)
    return modules, others


def check_coverage(modules, dora, path):
    """Every adapted module in every layer from 0 on, each with lora_A, lora_B (and its magnitudes with DoRA)."""
    layers = sorted({i for i, _ in modules})
    names = sorted({m for _, m in modules})
    expected = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if dora else set())
    if layers != list(range(len(layers))) or len(modules) != len(layers) * len(names):
        raise InputError(f"the adapter's LoRA covers layers {layers} of {', '.join(names)}: our LoRA adapts every "
                         "layer from 0 on, each on the same modules", path)
    for (i, module), tensors in modules.items():
        if set(tensors) != expected:
            raise InputError(f"layer {i} {module}: has {', '.join(sorted(tensors))}, expected "
                             f"{', '.join(sorted(expected))}{' (use_dora)' if dora else ''}", path)


def pattern_value(patterns, module, default):
    """peft's rank_pattern / alpha_pattern lookup: the first key that matches the module name's end."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scaling(config, i, module, rank, path):
    """peft's scaling of one adapted module: lora_alpha / r, or / sqrt(r) with use_rslora (patterns applied)."""
    name = f"transformer.h.{i}.{module}"
    r = int(pattern_value(config.get("rank_pattern"), name, config.get("r", 8)))
    if r != rank:
        raise InputError(f"layer {i} {module}: rank {rank} but adapter_config.json says r={r}", path)
    alpha = float(pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", 8)))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def c_attn_blocks(A, B, layout, i, path):
    """c_attn's (A, B) -> [(part, A_s, B_s)] and the slices: the block layout an adapter we wrote records,
    else every slice through the shared A (the module docstring)."""
    parts = len(SLICE_NAMES)
    width = A.shape[1]
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1] or B.shape[0] != parts * width:
        raise InputError(f"layer {i} attn.c_attn: lora_A {list(A.shape)} and lora_B {list(B.shape)} are not a LoRA "
                         f"of a [{width}, {parts} x {width}] c_attn", path)
    if layout is not None:
        blocks = peft_to_slices(A, B, [SLICE_NAMES.index(p) for p in layout[0]], width)
        if blocks is not None and A.shape[0] == layout[1] * len(layout[0]):
            return blocks, layout[0]
    return shared_to_slices(A, B, parts, width), SLICE_NAMES


def peft_state(modules, config, layout, path):
    """Per (layer, module) PEFT tensors -> (lora shape, our lora_A / lora_B / lora_magnitude). Our LoRA has one
    rank and one alpha: every module must come out at the same rank and scaling."""
    state, ranks, scalings, slices = {}, {}, {}, {}
    for (i, module), tensors in sorted(modules.items()):
        A, B, M = tensors["lora_A"], tensors["lora_B"], tensors.get("lora_magnitude_vector")
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise InputError(f"layer {i} {module}: lora_A {list(A.shape)} and lora_B {list(B.shape)} are not a "
                             "LoRA", path)
        if M is not None and list(M.shape) != [B.shape[0]]:
            raise InputError(f"layer {i} {module}: lora_magnitude_vector {list(M.shape)}, expected [{B.shape[0]}]",
                             path)
        scalings.setdefault(module, set()).add(module_scaling(config, i, module, A.shape[0], path))
        key = f"h.{i}.{module}"
        if module == "attn.c_attn":
            blocks, on = c_attn_blocks(A, B, layout, i, path)
            slices.setdefault(on, []).append(i)
            A, B = torch.cat([a for _, a, _ in blocks]), torch.cat([b for _, _, b in blocks])
            if M is not None:
                width = A.shape[1]
                M = torch.cat([M[p * width:(p + 1) * width] for p, _, _ in blocks])
            ranks.setdefault(module, set()).add(blocks[0][1].shape[0])
        else:
            ranks.setdefault(module, set()).add(A.shape[0])
        state[f"{key}.lora_A"], state[f"{key}.lora_B"] = A, B
        if M is not None:
            state[f"{key}.lora_magnitude"] = M
    if len(slices) > 1:
        raise InputError(REPRESENTABLE + "its c_attn LoRA has our q/k/v block layout in some layers only", path)
    rank, scaling = one_rank_and_scaling(ranks, scalings, next(iter(slices), ""), path)
    rs = bool(config.get("use_rslora"))
    targets = [name for name in SLICE_NAMES if name in next(iter(slices), "")]
    targets += [TARGET_OF_MODULE[m] for m in MODULE_TARGETS.values() if m in ranks]
    shape = dict(rank=rank, alpha=scaling * (math.sqrt(rank) if rs else rank), targets=",".join(targets),
                 scaling="rs" if rs else "alpha_over_r", dora=bool(config.get("use_dora")))
    return shape, state


def one_rank_and_scaling(ranks, scalings, c_attn_slices, path):
    """The single rank and scaling of our LoRA, or the InputError that names the modules that differ."""
    def described(module):
        if module != "attn.c_attn":
            return module
        return f"c_attn ({'our q/k/v blocks' if c_attn_slices != SLICE_NAMES else 'q, k, v through one shared A'})"

    found = {m: (sorted(ranks[m]), sorted(scalings[m])) for m in ranks}
    rank_set = {r for m in found for r in found[m][0]}
    scale_set = {s for m in found for s in found[m][1]}
    if len(rank_set) > 1:
        listed = ", ".join(f"{described(m)} {'/'.join(map(str, found[m][0]))}" for m in found)
        raise InputError(REPRESENTABLE + f"its modules come out at different ranks ({listed}); ours has one "
                         "rank (--lora_dim)", path)
    scale = min(scale_set)
    if any(abs(s - scale) > 1e-6 * abs(scale) for s in scale_set):
        listed = ", ".join(f"{described(m)} {'/'.join(f'{s:g}' for s in found[m][1])}" for m in found)
        raise InputError(REPRESENTABLE + f"its modules have different scalings ({listed}); ours has one alpha "
                         "(--lora_alpha)", path)
    return rank_set.pop(), scale


def adapted_modules(keys):
    """PEFT tensor names -> the modules they adapt, once each: 'mlp.c_fc' for every h.{i}.mlp.c_fc.lora_A..."""
    names = set()
    for key in keys:
        key = re.sub(r"\.(lora_\w+?|base_layer)(\.default)?(\.weight|\.bias)?$", "", key)
        key = key[len("transformer."):] if key.startswith("transformer.") else key
        names.add(re.sub(r"^h\.\d+\.", "", key))
    return sorted(names)


def read_adapter_tensors(path):
    from .checkpoint import read_tensors
    for name in PEFT_WEIGHTS:
        if os.path.isfile(os.path.join(path, name)):
            return read_tensors(os.path.join(path, name))
    raise InputError(f"a PEFT adapter directory without {' or '.join(PEFT_WEIGHTS)}", path)


def adapter_layout(path):
    """The slices and rank an adapter we wrote records in its safetensors metadata, or None."""
    file = os.path.join(path, PEFT_WEIGHTS[0])
    if not os.path.isfile(file):
        return None
    from safetensors import safe_open
    with safe_open(file, "pt") as handle:
        recorded = (handle.metadata() or {}).get(LAYOUT_KEY)
    if not recorded or not re.fullmatch(r"[qkv](,[qkv])*:\d+", recorded):
        return None
    slices, rank = recorded.split(":")
    return slices.replace(",", ""), int(rank)


def peft_base(path):
    """The base model a PEFT adapter names, when it is on this machine; otherwise the 'missing base' error."""
    name = read_json(os.path.join(path, PEFT_CONFIG)).get("base_model_name_or_path")
    hint = "pass the base weights as --init_checkpoint and the adapter as --lora_checkpoint"
    if not name:
        raise InputError(f"missing base: the adapter names no base model (base_model_name_or_path); {hint}", path)
    for candidate in (name, os.path.join(path, name)):
        if os.path.exists(candidate):
            return candidate
    raise InputError(f"missing base: the adapter's base model {name!r} is not a file or directory here (nothing is "
                     f"downloaded); {hint}", path)


# ---------------------------------------------------------------- nanoGPT

NANOGPT_LINEAR = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
NANOGPT_BIASES = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def is_nanogpt(raw):
    return isinstance(raw, dict) and isinstance(raw.get("model_args"), dict) and isinstance(raw.get("model"), dict)


def nanogpt_config_fields(args):
    return dict(n_embd=int(args.get("n_embd", 768)), n_layer=int(args.get("n_layer", 12)),
                n_head=int(args.get("n_head", 12)), n_positions=int(args.get("block_size", 1024)),
                vocab_size=int(args.get("vocab_size", 50304)))


def nanogpt_state(raw, path):
    """nanoGPT's {'model_args', 'model'} -> our keys: nn.Linear weights [out, in] transposed to [in, out], the
    `_orig_mod.` of torch.compile dropped, zero biases where it was trained with bias=False."""
    state = {}
    for key, value in raw["model"].items():
        key = key[len("_orig_mod."):] if key.startswith("_orig_mod.") else key
        key = key[len("transformer."):] if key.startswith("transformer.") else key
        state[key] = value.t().contiguous() if NANOGPT_LINEAR.match(key) and value.dim() == 2 else value
    if not raw["model_args"].get("bias", True):
        n_embd = int(raw["model_args"].get("n_embd", 768))
        widths = {"ln_1": n_embd, "attn.c_attn": 3 * n_embd, "attn.c_proj": n_embd, "ln_2": n_embd,
                  "mlp.c_fc": 4 * n_embd, "mlp.c_proj": n_embd}
        for i in range(int(raw["model_args"].get("n_layer", 12))):
            for module in NANOGPT_BIASES:
                state.setdefault(f"h.{i}.{module}.bias", torch.zeros(widths[module]))
        state.setdefault("ln_f.bias", torch.zeros(n_embd))
    print(f"note: {path} is a nanoGPT checkpoint; its MLP used the exact GELU, ours (GPT-2's) the tanh form, so "
          "outputs differ slightly from nanoGPT's", file=sys.stderr)
    return state


# ---------------------------------------------------------------- what a checkpoint says before loading

def directory_kind(path):
    if os.path.isfile(os.path.join(path, PEFT_CONFIG)):
        return "peft"
    if os.path.isfile(os.path.join(path, HF_CONFIG)):
        return "transformers"
    raise InputError(f"found a directory that is neither a transformers model ({HF_CONFIG}) nor a PEFT adapter "
                     f"({PEFT_CONFIG}); pass one of those, or the .bin/.pt/.safetensors file", path)


def read_directory(path, as_lora=False):
    """A transformers directory or a PEFT adapter -> raw {key: tensor} for checkpoint.read_state_dict. A PEFT
    adapter read as base weights (`as_lora` False) brings its base model's weights along."""
    kind = directory_kind(path)
    if kind == "transformers":
        hf_config_fields(read_json(os.path.join(path, HF_CONFIG)), path)
        return read_hf_weights(path)
    _, lora = read_peft_adapter(path)
    if as_lora:
        return lora
    from .checkpoint import read_state_dict
    return {**read_state_dict(peft_base(path)), **lora}


def implied_shape(path):
    """What a checkpoint says about the model it needs, before one is built:
    {"config": our GPT2Config size fields or None, "lora": {rank, alpha, slices} or None (slices alone for
    our own .pt files on q,k,v), "source": where the size comes from}."""
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except OSError:
        return {"config": None, "lora": None, "source": path}  # the reader says it is missing
    return _implied_shape(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _implied_shape(path, mtime, size):
    if os.path.isdir(path):
        if directory_kind(path) == "transformers":
            fields = hf_config_fields(read_json(os.path.join(path, HF_CONFIG)), path)
            return {"config": fields, "lora": None, "source": os.path.join(path, HF_CONFIG)}
        lora, _ = read_peft_adapter(path)
        try:
            base = implied_shape(peft_base(path))
        except InputError as err:  # raised only when the adapter is the base weights (loading.resolve_config)
            return {"config": None, "lora": lora, "source": path, "base_error": err}
        return {"config": base["config"], "lora": lora, "source": base["source"]}
    from .checkpoint import read_tensors
    raw = read_tensors(path)
    if is_nanogpt(raw):
        return {"config": nanogpt_config_fields(raw["model_args"]), "lora": None, "source": path}
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else {}
    lora = None
    for key, value in state.items() if isinstance(state, dict) else ():
        if isinstance(key, str) and key.endswith("c_attn.lora_B") and torch.is_tensor(value) and value.dim() == 2:
            width = next((v.shape[1] for k, v in state.items() if k == key[:-1] + "A" and torch.is_tensor(v)), None)
            if width and value.shape[0] == len(SLICE_NAMES) * width:
                lora = {"slices": SLICE_NAMES}
            break
    return {"config": None, "lora": lora, "source": path}
