"""What our .pt files record beside their tensors, and the checksum that finds a damaged file.

Every checkpoint gpt2_ft.py writes (model.{step}.pt, resume.pt) holds, beside its content, an entry

    "loranlg": {"version": 1, "model_card": "gpt2.md" or None, "config": {n_embd, n_layer, n_head,
                n_positions, vocab_size}, "lora_dim": r, "lora_alpha": a, "lora_targets": "q,v",
                "lora_scaling": "alpha_over_r", "dora": false, "lora_init": "kaiming",
                "crc32": <checksum of everything else in the file>}

torch.load does not check the CRCs of a .pt archive, so a flipped bit inside a tensor would load silently;
the checksum (zlib's CRC-32 over every tensor's bytes, names, types and shapes, and every other value)
finds it. Files without the entry (the original code's, the hub's) are taken as they are.
"""

import json
import os
import zlib

import torch

from .errors import InputError
from .lora_variants import lora_settings
from .model import CARDS, GPT2Config

KEY = "loranlg"
VERSION = 1
CONFIG_FIELDS = ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")
CHECKSUM = "crc32"


def card_of(config):
    """The name of the card `config` is, or None (a model of other sizes)."""
    for name in CARDS:
        card = GPT2Config.from_card(name)
        if all(getattr(card, field) == getattr(config, field) for field in CONFIG_FIELDS):
            return name
    return None


def describe(config):
    """The entry recorded for a model of this config (without its checksum)."""
    return {"version": VERSION, "model_card": card_of(config),
            "config": {field: getattr(config, field) for field in CONFIG_FIELDS},
            "lora_dim": config.lora_dim, "lora_alpha": config.lora_alpha, **lora_settings(config)}


def checksum(obj):
    """CRC-32 (hex) of a nest of dicts, lists, tuples, tensors and plain values, in a fixed order."""
    return f"{_feed(0, obj):08x}"


def _feed(crc, obj):
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"T{data.dtype}{list(obj.shape)}".encode(), crc)
        return zlib.crc32(data.view(torch.uint8).numpy(), crc) if data.numel() else crc
    if isinstance(obj, dict):
        crc = zlib.crc32(f"D{len(obj)}".encode(), crc)
        for key in sorted(obj, key=repr):
            crc = _feed(_feed(crc, key), obj[key])
        return crc
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(f"L{len(obj)}".encode(), crc)
        for item in obj:
            crc = _feed(crc, item)
        return crc
    return zlib.crc32(f"V{obj!r}".encode(), crc)


def sealed(content, config=None):
    """`content` (a dict) with its "loranlg" entry: the model's description when a config is given, and the
    checksum of the whole."""
    entry = describe(config) if config is not None else {"version": VERSION}
    content = {**content, KEY: entry}
    entry[CHECKSUM] = checksum(_without_checksum(content))
    return content


def _without_checksum(content):
    entry = {k: v for k, v in content[KEY].items() if k != CHECKSUM}
    return {**content, KEY: entry}


def verify(content, path):
    """Refuse a file of ours whose checksum does not match its content; files without the entry pass."""
    if not isinstance(content, dict) or not isinstance(content.get(KEY), dict) or CHECKSUM not in content[KEY]:
        return
    if checksum(_without_checksum(content)) != content[KEY][CHECKSUM]:
        raise InputError("the file is damaged: its content does not match the checksum it was saved with (a "
                         "changed byte or a partial copy); copy it again or use another checkpoint", path)


def recorded(path):
    """The "loranlg" entry of one of our .pt files, or None (another kind of file, or one that does not read:
    loading it reports why). Tensors are mapped, not read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"PK":
                return None
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the real load names the problem
        return None
    entry = content.get(KEY) if isinstance(content, dict) else None
    return entry if isinstance(entry, dict) else None


def check_settings(path, config, card):
    """Refuse a file whose recorded model or LoRA settings differ from the command's (--model_card, --lora_dim,
    --lora_alpha); LoRA settings only matter for a file that holds LoRA tensors."""
    entry = recorded(path)
    if entry is None:
        return
    if not isinstance(card, str):  # a config (read from a checkpoint, or resolved from --model_card)
        card = card_of(config)
    card_text = card if isinstance(card, str) else "(a custom config)"
    saved_config = entry.get("config")
    if entry.get("model_card") and isinstance(card, str) and entry["model_card"] != card:
        raise InputError(f"saved with model_card {entry['model_card']}, but --model_card is {card}", path)
    if isinstance(saved_config, dict) and any(saved_config.get(f) != getattr(config, f) for f in CONFIG_FIELDS):
        raise InputError(f"saved for a model of {json.dumps(saved_config)}, which --model_card {card_text} is "
                         "not", path)
    lora_dim = entry.get("lora_dim") or 0
    if lora_dim > 0:
        if lora_dim != config.lora_dim:
            raise InputError(f"saved with lora_dim {lora_dim}, but --lora_dim is {config.lora_dim}", path)
        if float(entry.get("lora_alpha")) != float(config.lora_alpha):
            raise InputError(f"saved with lora_alpha {entry.get('lora_alpha')}, but --lora_alpha is "
                             f"{config.lora_alpha}", path)
