"""work_dir/resume.pt: everything an interrupted run needs to go on as if it had not stopped.

The file holds the settings that must not change, the position (micro-batch step, epoch, batch within the
epoch), the trainable weights and their accumulated gradients, the optimizer, schedule and fp16 scaler
states, and per rank its random generators and the losses of an unfinished accumulation.
"""

import os
import random
import re

import torch

from . import file_record
from .checkpoint import first_line
from .distributed import all_gather_objects, gather_objects
from .errors import InputError
from .lora_variants import DEFAULT_SETTINGS

RESUME_FILE = "resume.pt"
# Settings a resumed run must share with the run that wrote the resume file.
RESUME_KEYS = ("model_card", "lora_dim", "lora_alpha", "train_batch_size", "grad_acc", "world_size", "max_step",
               "scheduler", "warmup_step", "lr", "random_seed", "seq_len", "lora_targets", "lora_scaling", "dora",
               "lora_init", "lora_plus_ratio", "global_batch")
# What a resume file written before a key existed ran with (the paper's recipe).
RESUME_DEFAULTS = {**DEFAULT_SETTINGS, "lora_plus_ratio": 1.0, "global_batch": None}


def resume_settings(args, world_size, max_step):
    return {key: (world_size if key == "world_size" else max_step if key == "max_step"
                  else getattr(args, key, RESUME_DEFAULTS.get(key))) for key in RESUME_KEYS}


def rng_state(ctx, train_set, valid_set):
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "train_fill": train_set.fill_rng.getstate(), "valid_fill": valid_set.fill_rng.getstate()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def set_rng_state(state, ctx, train_set, valid_set):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    train_set.fill_rng.setstate(state["train_fill"])
    valid_set.fill_rng.setstate(state["valid_fill"])
    if ctx.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], ctx.device)


def resume_state(settings, position, model, optimizer, schedule, scaler, micro_losses, ctx, train_set, valid_set):
    """resume.pt's content on rank 0, None elsewhere. Collective: every rank calls it (each gives its random
    generators). position: train_step, epoch, batch_in_epoch, finished. The tensors are the live ones (the
    weights, their gradients, the optimizer's state), not copies: checkpoint_writer.py copies them before
    the next step changes them and writes the file."""
    ranks = gather_objects({"rng": rng_state(ctx, train_set, valid_set),
                            "micro_losses": [float(x) for x in micro_losses]}, ctx)
    if not ctx.is_main:
        return None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return {
        "settings": settings, **position,
        "trainable": {n: p.detach() for n, p in named},
        "grads": {n: p.grad.detach() for n, p in named if p.grad is not None},
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ranks": ranks,
    }


def read_resume(path):
    """resume.pt's content; a damaged file (truncated, changed) is an error naming the last good model file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        file_record.verify(saved, path)
    except Exception as err:  # noqa: BLE001 - whatever torch.load says about a damaged file
        reason = err.message if isinstance(err, InputError) else first_line(err)
        last = last_checkpoint(os.path.dirname(path))
        after = (f"the last good checkpoint is {last}: train on from its weights as a new run (--lora_checkpoint, "
                 "or --init_checkpoint after full fine-tuning), or" if last else "no model.{step}.pt to fall back on:")
        raise InputError(f"cannot resume, the file is damaged ({reason}); {after} delete it to start again from "
                         "step 0", path) from None
    return saved


def last_checkpoint(work_dir, up_to=None):
    """The model.{step}.pt of work_dir with the highest step (at most up_to) that reads and passes its checksum,
    or None."""
    steps = []
    for name in os.listdir(work_dir) if os.path.isdir(work_dir) else ():
        match = re.fullmatch(r"model\.(\d+)\.pt", name)
        if match and (up_to is None or int(match.group(1)) <= up_to):
            steps.append(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        path = os.path.join(work_dir, f"model.{step}.pt")
        try:
            file_record.verify(torch.load(path, map_location="cpu", weights_only=True), path)
        except Exception:  # noqa: BLE001 - damaged too: look further back
            continue
        return path
    return None


def load_resume(path, settings, model, optimizer, schedule, scaler, ctx, train_set, valid_set):
    """Restore what resume_state gave (TrainingRun.save_resume writes it); returns (position, micro_losses on
    ctx.device). Refuses a file of other settings, and a damaged one."""
    saved = read_resume(path)
    recorded = {**RESUME_DEFAULTS, **saved["settings"]}
    changed = [f"--{k} {recorded.get(k)} -> {v}" for k, v in settings.items() if recorded.get(k) != v]
    if changed:
        raise InputError("cannot resume with other settings: " + ", ".join(changed), path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(saved["trainable"][name])
                grad = saved["grads"].get(name)
                p.grad = None if grad is None else grad.to(p.device)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    rank = saved["ranks"][ctx.rank]
    set_rng_state(rank["rng"], ctx, train_set, valid_set)
    position = {key: saved[key] for key in ("train_step", "epoch", "batch_in_epoch", "finished")}
    return position, [torch.tensor(v, device=ctx.device) for v in rank["micro_losses"]]


def check_every_rank_sees(path, ctx):
    """With --resume over several processes: refuse (on every rank alike) when some ranks see the resume file and
    others do not, as on nodes with a work_dir each: the ranks would start from different steps."""
    seen = all_gather_objects(os.path.exists(path), ctx)
    if all(seen) or not any(seen):
        return
    ranks = ", ".join(str(rank) for rank, there in enumerate(seen) if there != seen[0])
    if seen[0]:
        raise InputError(f"--resume: rank(s) {ranks} (another node) do not see this file, which rank 0 resumes from: "
                         "copy node 0's resume.pt into every node's work_dir, or give the nodes one shared work_dir",
                         path)
    raise InputError(f"--resume: rank(s) {ranks} (another node) see this file but rank 0 does not: remove it there, "
                     "or copy it into node 0's work_dir", path)
