"""The training loop of gpt2_ft.py, as the original runs it (SPEC 5), in one readable pass.

The step counter counts micro-batches, as the original's train_step: the optimizer updates when
train_step % grad_acc == 0, the schedule steps after every micro-batch, training stops when
train_step == max_step. Checkpoints are model.{train_step}.pt; metrics.jsonl gets one record per update.

The hot loop keeps losses on the device; they are read (one all-reduce, one copy) only at log, save and
eval points, where the metrics records of the steps since the last read are written (train_log.py).
"""

import contextlib
import math
import os
import random
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from . import data, optim
from .distributed import all_reduce_mean, barrier, gather_objects
from .errors import InputError
from .files import atomic_output
from .loss import LMObjective, masked_lm_loss
from .train_log import MetricsLog, ProgressBar, StepLosses

RESUME_FILE = "resume.pt"
METRICS_FILE = "metrics.jsonl"
# Settings a resumed run must share with the run that wrote the resume file.
RESUME_KEYS = ("model_card", "lora_dim", "lora_alpha", "train_batch_size", "grad_acc", "world_size", "max_step",
               "scheduler", "warmup_step", "lr", "random_seed", "seq_len")


def load_datasets(args, vocab_size=50257):
    """Read and check both data files (before any model is built). Returns (train_set, valid_set, notes)."""
    notes = []
    sets = []
    for path, batch_size in ((args.train_data, args.train_batch_size), (args.valid_data, args.valid_batch_size)):
        examples, truncated = data.read_examples(path, args.seq_len, vocab_size)
        if truncated:
            notes.append(f"{path}: {truncated} of {len(examples)} examples are longer than --seq_len "
                         f"{args.seq_len} and are cut to it (as the original does)")
        sets.append(data.FTDataset(examples, batch_size, args.seq_len))
    return sets[0], sets[1], notes


def default_max_step(args, num_batches, world_size):
    """The original's (max_epoch * num_batches + world_size - 1) // world_size."""
    if args.max_step:
        return args.max_step
    if not args.max_epoch:
        raise InputError("give --max_step or --max_epoch (the run needs an end)")
    return (args.max_epoch * num_batches + world_size - 1) // world_size


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


def resume_settings(args, ctx, max_step):
    return {key: (ctx.world_size if key == "world_size" else max_step if key == "max_step" else getattr(args, key))
            for key in RESUME_KEYS}


def evaluate(objective, valid_set, valid_batches, ctx):
    """Validation loss (s = 0) averaged per batch, then over the batches of all ranks; and its exp."""
    objective.eval()
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        for _, batch in data.iterate_batches(valid_set, valid_batches, device=ctx.device):
            total += objective(batch["input"], batch["target"], batch["positions"], batch["weights"], 0.0).double()
    objective.train()
    loss = all_reduce_mean(total.item() / max(1, len(valid_batches)), ctx)
    return loss, math.exp(min(loss, 700.0))


def why_no_graphs(args, ctx):
    """Why the CUDA-graph step cannot be used here, or None when it can."""
    if getattr(args, "no_cuda_graph", False):
        return "--no_cuda_graph"
    if ctx.device.type != "cuda":
        return "not on a GPU"
    if ctx.distributed:
        return "several processes: DDP's gradient hooks run eagerly"
    if args.grad_acc != 1:
        return "--grad_acc above 1"
    if args.precision == "fp16":
        return "fp16's loss scaler synchronises with the host"
    return None


def cuda_graphs_usable(args, ctx):
    return why_no_graphs(args, ctx) is None


# How the CUDA-graph step lays batches out: packed (no padding in the matrix products), with few shapes, so
# few graphs to capture. "padded" (one example a row) is kept for comparison (bench/bench_train.py).
GRAPH_LAYOUTS = {
    "packed": {"collate_fn": data.collate_packed, "length_multiple": 16, "tokens_multiple": 64,
               "positions_multiple": 64},
    "padded": {"collate_fn": data.collate, "length_multiple": 16, "positions_multiple": 64},
}
GRAPH_LAYOUT = "packed"
# With the CUDA-graph step, torch.compile also fuses the optimizer's update, and Inductor's combo kernels put
# independent small kernels (the casts of LoRA's tensors, the update's foreach ops) into one launch: on an H100
# a graphed step's compiled kernels fall from 541 to 377 and its replay from 5.4 to 4.9 ms (BENCHMARKS.md,
# seventh session; the optimizer alone, without combo kernels, gained 0.8%).
COMPILE_OPTIMIZER = True
COMPILE_OPTIONS = {"combo_kernels": True}


def compile_options():
    """COMPILE_OPTIONS less those this PyTorch's Inductor does not know (older versions)."""
    try:
        import torch._inductor.config as inductor_config
    except Exception:
        return {}
    return {name: value for name, value in COMPILE_OPTIONS.items() if hasattr(inductor_config, name)}


def graphed_train_step(objective, optimizer, trainable, args):
    """The whole optimizer step as a CUDA graph per padded batch shape (graphed_step.py)."""
    from .graphed_step import GraphedTrainStep

    def step(batch):
        packing = {name: batch[name] for name in data.PACKING_KEYS} if "pad_index" in batch else None
        loss = objective(batch["input"], batch["target"], batch["positions"], batch["weights"], args.label_smooth,
                         packing)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.clip)
        optimizer.step()
        return loss.detach()

    return GraphedTrainStep(step, trainable, protect=trainable + optimizer.state_tensors(), unused=("mask",))


def wants_compile(args, use_graphs):
    """--compile auto: with the CUDA-graph step (where fusing its ~1,300 small kernels pays); on / off."""
    choice = getattr(args, "compile", "off") or "off"
    return choice == "on" or (choice == "auto" and use_graphs)


def compile_objective(objective):
    """torch.compile each transformer block (one compiled graph serves all, with dynamic lengths) and the
    loss (head, cross-entropy, label smoothing in a few fused kernels). Compilation happens at the first
    call; False when this PyTorch cannot compile at all."""
    options = compile_options()
    try:
        for block in objective.model.transformer.h:
            block.compile(dynamic=True, options=options)
        objective.loss_fn = torch.compile(masked_lm_loss, dynamic=True, options=options)
    except Exception:  # e.g. no torch.compile for this Python version
        uncompile_objective(objective)
        return False
    return True


def uncompile_objective(objective):
    for block in objective.model.transformer.h:
        block._compiled_call_impl = None  # what nn.Module.compile set; None runs the module eagerly again
    objective.loss_fn = masked_lm_loss
    torch._dynamo.reset()


def train(args, ctx, model, train_set, valid_set, save_checkpoint, stop_after_step=None, log=print):
    """Train `model` (built, loaded, trainable parameters marked, on ctx.device). save_checkpoint(model, path)
    writes model.{step}.pt. stop_after_step simulates an interruption (for resume tests). Returns a summary."""
    main = ctx.is_main
    say = log if main else (lambda *a, **k: None)
    train_sampler = data.make_sampler(train_set, ctx, args.random_seed)
    valid_sampler = data.make_sampler(valid_set, ctx, args.random_seed)
    valid_batches = data.batch_indices(valid_sampler, args.valid_batch_size, epoch=None, drop_last=False)
    if not data.batch_indices(train_sampler, args.train_batch_size, epoch=1):
        raise InputError(f"{len(train_set.examples)} training examples give no full batch of "
                         f"{args.train_batch_size} per rank over {ctx.world_size} rank(s)", args.train_data)
    max_step = default_max_step(args, train_set.num_batches, ctx.world_size)
    say(f"max_step: {max_step} ({train_set.num_batches} batches of {args.train_batch_size} an epoch over "
        f"{ctx.world_size} rank(s))")

    trainable = [p for p in model.parameters() if p.requires_grad]
    use_graphs = cuda_graphs_usable(args, ctx)
    say(f"CUDA graphs: {'on' if use_graphs else 'off'}" + ("" if use_graphs else f" ({why_no_graphs(args, ctx)})"))
    optimizer = optim.create_optimizer(model, args, capturable=use_graphs)
    schedule = optim.Schedule(optimizer, args.scheduler, args.warmup_step, max_step)
    scaler = torch.amp.GradScaler(ctx.device.type) if args.precision == "fp16" else None
    objective = LMObjective(model, args.precision)
    if ctx.device.type == "cuda":
        objective.store_frozen_matrices()
    compiling = wants_compile(args, use_graphs)
    compiled = compiling and compile_objective(objective)
    if compiled and use_graphs and COMPILE_OPTIMIZER:
        optimizer.compile_update(compile_options())
    if compiling:
        say("torch.compile: " + ("on (the first steps compile: about 30 s on an H100)" if compiled
                                 else "not available in this PyTorch; going on without it"))
    layout = GRAPH_LAYOUTS[GRAPH_LAYOUT] if use_graphs else {}
    graphed = None  # made after a resume has loaded the optimizer state that the graphs capture
    runner = objective
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        runner = DistributedDataParallel(objective, device_ids=device_ids)  # the model has no buffers

    # Where we are: train_step micro-batches done; `epoch` (from 1) with `start_batch` of its batches done.
    train_step, epoch, start_batch, micro_losses, finished = 0, 1, 0, [], False
    resume_path = os.path.join(args.work_dir, RESUME_FILE)
    settings = resume_settings(args, ctx, max_step)
    if args.resume and os.path.exists(resume_path):
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        changed = [f"--{k} {saved['settings'].get(k)} -> {v}" for k, v in settings.items()
                   if saved["settings"].get(k) != v]
        if changed:
            raise InputError("cannot resume with other settings: " + ", ".join(changed), resume_path)
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
        rank_state = saved["ranks"][ctx.rank]
        set_rng_state(rank_state["rng"], ctx, train_set, valid_set)
        micro_losses = [torch.tensor(v, device=ctx.device) for v in rank_state["micro_losses"]]
        train_step, epoch, start_batch = saved["train_step"], saved["epoch"], saved["batch_in_epoch"]
        finished = saved["finished"]
        say(f"resumed from {resume_path} at step {train_step} (epoch {epoch}, batch {start_batch})")
    elif args.resume:
        say(f"--resume: no {resume_path} yet, starting from the beginning")
    if train_step >= max_step or finished:
        say(f"nothing to do: this run already finished at step {train_step}")
        return {"train_step": train_step, "max_step": max_step}

    metrics = MetricsLog(os.path.join(args.work_dir, METRICS_FILE), main,
                         keep_until_step=train_step if train_step else None)
    bar = ProgressBar(main, max_step, train_step)
    losses = StepLosses(metrics, ctx, args.grad_acc)
    best_ppl = None
    valid_loss = None
    log_due = None  # (train_step, batch number, epoch, lr) of a log line whose losses are being read

    def print_due_log():
        nonlocal log_due
        if log_due is None:
            return
        step, number, ep, lr = log_due
        log_due = None
        losses.finish_read()
        ms, avg = losses.close_window()
        bar.clear()
        say(f"| epoch {ep:3d} step {step:>8d} | {number + 1:>6d} batches | "
            f"lr {lr:.3g} | ms/batch {ms:5.2f} | "
            f"loss {losses.last if losses.last is not None else float('nan'):5.2f} | "
            f"avg loss {avg:5.2f} | ppl {math.exp(min(avg, 700.0)):5.2f}")

    def read_losses():
        print_due_log()
        losses.read_now()

    def save(step, batch_in_epoch, final=False):
        path = os.path.join(args.work_dir, f"model.{step}.pt")
        rank_states = gather_objects({"rng": rng_state(ctx, train_set, valid_set),
                                      "micro_losses": [float(x) for x in micro_losses]}, ctx)
        if main:
            bar.clear()
            log(f"saving checkpoint {path}")
            save_checkpoint(model, path)
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            state = {
                "settings": settings, "train_step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "finished": final,
                "trainable": {n: p.detach().cpu() for n, p in named},
                "grads": {n: p.grad.detach().cpu() for n, p in named if p.grad is not None},
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ranks": rank_states,
            }
            with atomic_output(resume_path, "wb") as handle:
                torch.save(state, handle)
        barrier(ctx)

    def run_eval(step):
        nonlocal best_ppl, valid_loss
        start = time.perf_counter()
        valid_loss, valid_ppl = evaluate(objective, valid_set, valid_batches, ctx)
        best_ppl = valid_ppl if best_ppl is None else min(best_ppl, valid_ppl)
        metrics.write({"step": step, "epoch": epoch, "valid_loss": valid_loss, "valid_ppl": valid_ppl})
        bar.clear()
        say("-" * 100)
        say(f"| Eval {step // args.eval_interval:3d} at step {step:>8d} | time: {time.perf_counter() - start:5.2f}s "
            f"| valid loss {valid_loss:5.2f} | valid ppl {valid_ppl:5.2f} | best ppl {best_ppl:5.2f} ")
        say("-" * 100)

    model.train()
    stopped = False
    last_saved = last_evaluated = None
    batch_in_epoch = start_batch
    try:
        while True:
            batches = data.batch_indices(train_sampler, args.train_batch_size, epoch=epoch)
            for number, batch in data.iterate_batches(train_set, batches, start_batch, ctx.device, **layout):
                train_step += 1
                is_update = train_step % args.grad_acc == 0
                sync = contextlib.nullcontext() if is_update or not ctx.distributed else runner.no_sync()
                if use_graphs:
                    if graphed is None:
                        graphed = graphed_train_step(objective, optimizer, trainable, args)
                    try:  # forward, backward and the update in one replay; the loss buffer is reused: copy it
                        loss = graphed(batch).clone()
                    except Exception as err:
                        if not compiled:
                            raise
                        bar.clear()
                        say(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                            "going on without it (--compile off skips it)")
                        uncompile_objective(objective)
                        optimizer.uncompile_update()
                        compiled = False
                        graphed = graphed_train_step(objective, optimizer, trainable, args)
                        loss = graphed(batch).clone()
                else:
                    with sync:
                        loss = runner(batch["input"], batch["target"], batch["positions"], batch["weights"],
                                      args.label_smooth)
                        scaled = loss / args.grad_acc
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                print_due_log()  # the previous step's losses: that step is done or nearly, this one is queued
                micro_losses.append(loss.detach())
                losses.count_micro_batch()
                batch_in_epoch = number + 1
                if is_update and use_graphs:
                    losses.add(train_step, train_step, epoch, optimizer.param_groups[0]["lr"], micro_losses.pop())
                elif is_update:
                    lr = optimizer.param_groups[0]["lr"]
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if args.clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, args.clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.add(train_step, train_step // args.grad_acc, epoch, lr, torch.stack(micro_losses).mean())
                    micro_losses = []
                schedule.step()
                bar.next(losses.last)

                if train_step % args.log_interval == 0:  # printed once the next step is queued
                    losses.start_read()
                    log_due = (train_step, number, epoch, optimizer.param_groups[0]["lr"])
                if train_step % args.save_interval == 0:
                    read_losses()
                    save(train_step, batch_in_epoch)
                    last_saved = train_step
                    losses.restart_clock()
                if train_step % args.eval_interval == 0:
                    read_losses()
                    run_eval(train_step)
                    last_evaluated = train_step
                    losses.restart_clock()
                if train_step == max_step or train_step == stop_after_step:
                    break
            if train_step in (max_step, stop_after_step) or (args.max_epoch and epoch >= args.max_epoch):
                break
            epoch, start_batch, batch_in_epoch = epoch + 1, 0, 0
        stopped = train_step == stop_after_step and train_step < max_step
    except KeyboardInterrupt:
        stopped = True
        bar.clear()
        say("-" * 100)
        say("Exiting from training early")
    read_losses()
    bar.finish()
    if not stopped:
        if last_evaluated != train_step:
            run_eval(train_step)
        say("-" * 100)
        say("End of training")
        if last_saved != train_step:
            save(train_step, batch_in_epoch, final=True)
    metrics.close()
    graphs = len(graphed.captured) if graphed is not None else 0
    if graphs:
        say(f"CUDA graphs: {graphs} batch shapes captured")
    return {"train_step": train_step, "max_step": max_step, "valid_loss": valid_loss, "stopped": stopped,
            "graphs": graphs}
