"""The DeepSpeed config of a `--deepspeed` run (docs/training.md, "DeepSpeed"): read, checked against gpt2_ft.py's
flags, its "auto" (or absent) values filled from them. Free of torch and of deepspeed, so that it answers (and is
tested) where deepspeed is not installed.

What the flags own, the config may only repeat: the batch per process (train_micro_batch_size_per_gpu =
--train_batch_size), the accumulation (gradient_accumulation_steps = --grad_acc), DeepSpeed's global batch
(train_batch_size = --train_batch_size x --grad_acc x processes), the clipping (gradient_clipping = --clip; absent,
DeepSpeed would clip at 1.0), the precision (bf16.enabled = --precision bf16). The optimizer and the schedule are
always ours (an "optimizer" or "scheduler" section is refused); ZeRO takes ours as an untested optimizer
(zero_allow_untested_optimizer). The config's own business: zero_optimization (stage 0-3 and its buckets),
data_types, communication settings.
"""

import copy
import importlib.util
import json

from .errors import InputError

INSTALL = "python3 -m pip install deepspeed (DS_BUILD_OPS=0: no compiled ops are needed)"
SAMPLES = "scripts/ds_zero1_bf16.json, ds_zero2_bf16.json, ds_zero3_bf16.json"
# Sections the flags own: DeepSpeed's would replace our AdamW (--lr, --weight_decay, ...) and schedule (--scheduler).
OWN_SECTIONS = {"optimizer": "gpt2_ft.py's AdamW (--lr, --weight_decay, --adam_beta1, ...)",
                "scheduler": "gpt2_ft.py's schedule (--scheduler, --warmup_step, --max_step)"}
# Sections not supported here, and why.
UNSUPPORTED = {"fp16": "fp16 is not supported with --deepspeed (use bf16)",
               "bfloat16": 'spell the section "bf16"',
               "torch_autocast": "gpt2_ft.py autocasts itself (--precision)",
               "amp": "use bf16"}
OFFLOADS = ("offload_optimizer", "offload_param")


def check_installed():
    """InputError unless the deepspeed package can be found (cheap: nothing is imported)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise InputError(f"--deepspeed needs the deepspeed package, which is not installed: {INSTALL}")


def import_deepspeed():
    """The deepspeed module; an InputError that says how to install it when it cannot be imported."""
    try:
        import deepspeed
    except ImportError as err:
        raise InputError(f"--deepspeed needs the deepspeed package, which cannot be imported ({err}): "
                         f"{INSTALL}") from None
    return deepspeed


def read_config(path):
    """The JSON object in `path`; InputError naming the file (and line) otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise InputError(f"cannot read the DeepSpeed config ({err.strerror or err})", path) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg} (column {err.colno})", path, err.lineno) from None
    if not isinstance(config, dict):
        raise InputError("a DeepSpeed config is a JSON object ({...})", path)
    return config


def flag_values(args, world_size):
    """Config key -> (what sets it, its value) for the keys our flags own."""
    micro, acc = args.train_batch_size, args.grad_acc
    return {
        "train_micro_batch_size_per_gpu": ("--train_batch_size", micro),
        "gradient_accumulation_steps": ("--grad_acc", acc),
        "train_batch_size": (f"--train_batch_size {micro} x --grad_acc {acc} x {world_size} process(es)",
                             micro * acc * world_size),
        "gradient_clipping": ("--clip", float(args.clip)),
    }


def resolve(config, args, world_size, path):
    """A copy of `config` (read_config's) with our flags' values in: InputError naming `path` and the key when the
    config says otherwise, or holds a section or value gpt2_ft.py does not support here."""
    config = copy.deepcopy(config)
    for key, reason in OWN_SECTIONS.items():
        if key in config:
            raise InputError(f'the "{key}" section is not used, the run takes {reason}; remove it', path)
    for key, reason in UNSUPPORTED.items():
        section = config.get(key)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = False
        elif is_enabled(section):
            raise InputError(f'"{key}": {reason}', path)
    for key, (flag, value) in flag_values(args, world_size).items():
        given = config.get(key, "auto")
        if given == "auto":
            config[key] = value
        elif not is_number(given) or float(given) != value:
            raise InputError(f"{key} is {json.dumps(given)} but {flag} gives {value:g} (make them equal, or "
                             f'write "auto")', path)
    resolve_precision(config, args, path)
    resolve_zero(config, path)
    left = auto_keys(config)
    if left:
        raise InputError(f'"auto" is only understood for the keys gpt2_ft.py fills; found at {", ".join(left)}', path)
    return config


def resolve_precision(config, args, path):
    section = config.setdefault("bf16", {})
    if not isinstance(section, dict):
        raise InputError(f'"bf16" is an object ({{"enabled": ...}}), got {json.dumps(section)}', path)
    wanted = args.precision == "bf16"
    enabled = section.get("enabled", "auto")
    if enabled == "auto":
        section["enabled"] = wanted
    elif enabled is not wanted:
        raise InputError(f"bf16.enabled is {json.dumps(enabled)} but --precision is {args.precision} (make them "
                         'agree, or write "auto")', path)


def resolve_zero(config, path):
    zero = config.setdefault("zero_optimization", {})
    if not isinstance(zero, dict):
        raise InputError(f'"zero_optimization" is an object ({{"stage": ...}}), got {json.dumps(zero)}', path)
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise InputError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {json.dumps(stage)}", path)
    if stage == 0 and config["bf16"]["enabled"]:
        raise InputError("bf16 needs zero_optimization.stage 1, 2 or 3 (its fp32 master weights); stage 0 would "
                         "update bf16 weights", path)
    for key in OFFLOADS:
        if is_enabled(zero.get(key), on_key="device", off_value="none"):
            raise InputError(f"zero_optimization.{key}: offloading is not supported with gpt2_ft.py's optimizer; "
                             "remove it", path)
    untested = config.get("zero_allow_untested_optimizer", "auto")
    if untested == "auto":
        config["zero_allow_untested_optimizer"] = True
    elif untested is not True:
        raise InputError("zero_allow_untested_optimizer must be true: ZeRO runs gpt2_ft.py's AdamW, which "
                         "DeepSpeed does not know", path)


def stage(config):
    return config["zero_optimization"].get("stage", 0)


def is_enabled(section, on_key="enabled", off_value=False):
    """Whether a section is switched on, as DeepSpeed reads it: {"enabled": true} ({on_key: anything but
    off_value}); an absent key is off."""
    if not isinstance(section, dict):
        return section not in (None, False, off_value)
    return section.get(on_key, off_value) not in (off_value, None, False)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def auto_keys(config, prefix=""):
    """The dotted keys of config whose value is still "auto"."""
    found = []
    for key, value in config.items():
        if value == "auto":
            found.append(prefix + key)
        elif isinstance(value, dict):
            found += auto_keys(value, f"{prefix}{key}.")
    return found


def load(args, world_size):
    """The resolved config of --deepspeed_config (InputError on a problem of the file or a flag)."""
    return resolve(read_config(args.deepspeed_config), args, world_size, args.deepspeed_config)


def describe(config):
    """'ZeRO-2, bf16' for the run's first lines."""
    return f"ZeRO-{stage(config)}, " + ("bf16" if config["bf16"]["enabled"] else "fp32")


def settings_from_args(args, world_size):
    """gpt2_ft.py's check of --deepspeed / --deepspeed_config: the resolved config, or None without --deepspeed.
    The config is checked first, so that its problems show also where deepspeed is not installed."""
    if not args.deepspeed:
        if args.deepspeed_config:
            raise InputError("--deepspeed_config is read only with --deepspeed (DeepSpeed's convention: give both)")
        return None
    if not args.deepspeed_config:
        raise InputError(f"--deepspeed needs --deepspeed_config FILE (samples: {SAMPLES})")
    if args.resume:
        raise InputError("--resume does not work with --deepspeed: a DeepSpeed run writes no resume.pt; start a new "
                         "run from its last model.{step}.pt (--lora_checkpoint, or --init_checkpoint after full "
                         "fine-tuning)")
    if args.precision not in ("fp32", "bf16"):
        raise InputError(f"--deepspeed runs fp32 or bf16, not --precision {args.precision}")
    config = load(args, world_size)
    check_installed()
    return config
