"""The training loop of gpt2_ft.py, as the original runs it (SPEC 5).

The step counter counts micro-batches, as the original's train_step: the optimizer updates when
train_step % grad_acc == 0, the schedule steps after every micro-batch, training stops when
train_step == max_step. Checkpoints are model.{train_step}.pt; metrics.jsonl gets one record per update.
The step itself (eager or CUDA graph) is train_step.py's; resume.pt is resume.py's; both files are written in
the background (checkpoint_writer.py); the validation loss is validation.py's.

The hot loop keeps losses on the device; they are read (one all-reduce, one copy) only at log, save and
eval points, where the metrics records of the steps since the last read are written (train_log.py).
"""

import contextlib
import math
import os
import signal
import time

import torch

from . import data, optim
from .checkpoint_writer import CheckpointWriter
from .distributed import DistContext, all_gather_objects, barrier
from .errors import InputError, Interrupted, RunError
from .model import unwrap
from .rank_batches import make_batches
from .resume import RESUME_FILE, last_checkpoint, load_resume, resume_settings, resume_state
from .run_guard import StopRequest
from .train_log import MetricsLog, StepLosses, training_progress
from .train_step import SpeedOptions, make_step
from .validation import validation_loss

METRICS_FILE = "metrics.jsonl"


def load_datasets(args, vocab_size=50257):
    """Read and check both data files (before any model is built). Returns (train_set, valid_set, notes)."""
    notes = []
    sets = []
    train_batch = getattr(args, "global_batch", None) or args.train_batch_size  # what the dataset rounds up to
    for path, batch_size in ((args.train_data, train_batch), (args.valid_data, args.valid_batch_size)):
        examples, truncated = data.read_examples(path, args.seq_len, vocab_size)
        if truncated:
            notes.append(f"{path}: {truncated} of {len(examples)} examples are longer than --seq_len "
                         f"{args.seq_len} and are cut to it (as the original does)")
        sets.append(data.FTDataset(examples, batch_size, args.seq_len))
    return sets[0], sets[1], notes


def default_max_step(args, num_batches, world_size):
    """The original's (max_epoch * num_batches + world_size - 1) // world_size (with --global_batch,
    num_batches counts global batches and world_size is 1)."""
    if args.max_step:
        return args.max_step
    if not args.max_epoch:
        raise InputError("give --max_step or --max_epoch (the run needs an end)")
    return (args.max_epoch * num_batches + world_size - 1) // world_size



def all_finite(tensors):
    """Whether every element of every tensor is finite, with one read of the device."""
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def train(args, ctx, model, train_set, valid_set, model_state, speed=None, stop_after_step=None, log=print):
    """Train `model` (built, loaded, trainable parameters marked, on ctx.device). model_state(model, on_cpu) is
    the content of model.{step}.pt (checkpoint.model_state, lora_state or full_state), None for no model file.
    speed: SpeedOptions (default: from --no_cuda_graph and --compile). stop_after_step simulates an
    interruption (for resume tests). Returns a summary."""
    run = TrainingRun(args, ctx, model, train_set, valid_set, model_state, speed or SpeedOptions.from_args(args),
                      log)
    if run.resume() is not None:
        return {"train_step": run.train_step, "max_step": run.max_step}
    return run.loop(stop_after_step)


class TrainingRun:
    def __init__(self, args, ctx, model, train_set, valid_set, model_state, speed, log):
        self.args, self.ctx, self.model, self.log = args, ctx, model, log
        self.train_set, self.valid_set, self.model_state = train_set, valid_set, model_state
        self.progress = None
        global_batch = getattr(args, "global_batch", None)
        # With --global_batch every rank validates on one process's batches, so that the loss is its number too.
        valid_sampler = data.make_sampler(valid_set, DistContext() if global_batch else ctx, args.random_seed)
        self.valid_batches = data.batch_indices(valid_sampler, args.valid_batch_size, epoch=None, drop_last=False)
        self.step = make_step(model, args, ctx, speed, self.say)
        self.batches = make_batches(train_set, ctx, args.random_seed, args.train_batch_size, global_batch,
                                    self.step.layout, self.step.same_shapes)
        if not self.batches.indices(epoch=1):
            wanted = (f"--global_batch {global_batch}" if global_batch else
                      f"{args.train_batch_size} per rank over {ctx.world_size} rank(s)")
            raise InputError(f"{len(train_set.examples)} training examples give no full batch of {wanted}",
                             args.train_data)
        self.max_step = default_max_step(args, train_set.num_batches, 1 if global_batch else ctx.world_size)
        self.say(f"max_step: {self.max_step} ({train_set.num_batches} batches of {global_batch or args.train_batch_size}"
                 f" an epoch" + (f", {args.train_batch_size} on each of {ctx.world_size} ranks)" if global_batch
                                 else f" over {ctx.world_size} rank(s))"))
        self.schedule = optim.Schedule(self.step.optimizer, args.scheduler, args.warmup_step, self.max_step)
        # Where we are: train_step micro-batches done; `epoch` (from 1) with `batch_in_epoch` of its batches done.
        self.train_step, self.epoch, self.batch_in_epoch, self.finished = 0, 1, 0, False
        self.micro_losses = []  # of the accumulation under way
        self.resume_path = os.path.join(args.work_dir, RESUME_FILE)
        self.last_model = self.resume_step = None  # this run's last model.{step}.pt and resume.pt written
        self.writer = CheckpointWriter()
        self.settings = resume_settings(args, ctx.world_size, self.max_step)

    def say(self, *lines, **kwargs):
        """Print on rank 0, clearing the progress line first."""
        if self.ctx.is_main:
            if self.progress is not None:
                self.progress.clear()
            self.log(*lines, **kwargs)

    def resume(self):
        """With --resume, continue from resume.pt when there is one. Returns a reason to stop, or None."""
        if self.args.resume and os.path.exists(self.resume_path):
            position, self.micro_losses = load_resume(self.resume_path, self.settings, self.model,
                                                      self.step.optimizer, self.schedule, self.step.scaler,
                                                      self.ctx, self.train_set, self.valid_set)
            self.train_step, self.epoch = position["train_step"], position["epoch"]
            self.last_model, self.resume_step = last_checkpoint(self.args.work_dir, self.train_step), self.train_step
            self.batch_in_epoch, self.finished = position["batch_in_epoch"], position["finished"]
            self.say(f"resumed from {self.resume_path} at step {self.train_step} (epoch {self.epoch}, batch "
                     f"{self.batch_in_epoch})")
        elif self.args.resume:
            self.say(f"--resume: no {self.resume_path} yet, starting from the beginning")
        if self.train_step >= self.max_step or self.finished:
            self.say(f"nothing to do: this run already finished at step {self.train_step}")
            return "finished"
        return None

    def loop(self, stop_after_step=None):
        args, ctx = self.args, self.ctx
        self.metrics = MetricsLog(os.path.join(args.work_dir, METRICS_FILE), ctx.is_main,
                                  keep_until_step=self.train_step if self.train_step else None)
        self.progress = training_progress(ctx.is_main, self.max_step, self.train_step)
        self.losses = StepLosses(self.metrics, ctx, args.grad_acc)
        self.best_ppl = self.valid_loss = None
        self.log_due = None  # (train_step, batch number, epoch, lr) of a log line whose losses are being read
        self.model.train()
        try:
            with StopRequest() as request:
                stopped = self.run_steps(stop_after_step, request)
                self.wait_for_writes()  # the last files are written (or their failure raised)
                if request.signum is not None and stopped == "signal":
                    self.stop_on_signal(request.signum)
        except Interrupted:
            raise
        except RunError as err:  # a full disk, a non-finite loss: say what is kept
            self.writer.wait(raise_failure=False)  # what is kept is known once the writes under way end
            raise RunError(f"{err.message}; {self.kept()}", err.path) from None
        finally:
            self.writer.wait(raise_failure=False)
            self.metrics.close()
        graphs = self.step.graphs
        if graphs:
            self.say(f"CUDA graphs: {graphs} batch shapes captured")
        return {"train_step": self.train_step, "max_step": self.max_step, "valid_loss": self.valid_loss,
                "stopped": bool(stopped), "graphs": graphs}

    def run_steps(self, stop_after_step, request):
        """The steps to the end, or to stop_after_step, or to a signal ("signal"); the end's eval and save.
        Returns whether (and why) the run stopped early."""
        args, ctx = self.args, self.ctx
        last_saved = last_evaluated = None
        stopped = False
        while not stopped:
            for number, batch in self.batches.epoch(self.epoch, self.batch_in_epoch):
                self.train_batch(number, batch)
                if self.train_step % args.save_interval == 0:
                    self.save()
                    last_saved = self.train_step
                if self.train_step % args.eval_interval == 0:
                    self.run_eval()
                    last_evaluated = self.train_step
                if self.train_step in (self.max_step, stop_after_step):
                    break
                if request.agreed(ctx, self.train_step, args.log_interval):
                    stopped = "signal"
                    break
            stopped = stopped or (self.train_step in (self.max_step, stop_after_step)
                                  or bool(args.max_epoch and self.epoch >= args.max_epoch))
            if not stopped:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if stopped != "signal":
            stopped = self.train_step == stop_after_step and self.train_step < self.max_step
        self.read_losses()
        self.progress.finish()
        if not stopped:
            if last_evaluated != self.train_step:
                self.run_eval()
            self.say("-" * 100)
            self.say("End of training")
            if last_saved != self.train_step:
                self.save(final=True)
        return stopped

    def stop_on_signal(self, signum):
        """Ctrl-C / SIGTERM: save resume.pt at this step (no model file), say how to go on, exit 128 + signum."""
        name = signal.Signals(signum).name
        if not getattr(self.step, "resumable", True):
            self.wait_for_writes()
            raise Interrupted(f"{name}: training stopped at step {self.train_step} of {self.max_step}; a --deepspeed "
                              f"run does not resume: {self.kept()}", exit_code=128 + signum)
        self.save_resume(final=False)
        self.wait_for_writes()
        command = getattr(self.args, "resume_command", None) or "the same command with --resume"
        raise Interrupted(f"{name}: training stopped at step {self.train_step} of {self.max_step}; its state is "
                          f"saved in {self.resume_path}. Continue with: {command}", exit_code=128 + signum)

    def wait_for_writes(self):
        """Until the files of the last save are written; a failed write (rank 0's) raised on every rank, so that
        no rank goes on to a collective the others have left. Collective: every rank calls it."""
        try:
            self.writer.wait()
            failure = None
        except RunError as err:
            failure = err
        if self.ctx.distributed:
            found = [f for f in all_gather_objects(failure and (failure.message, failure.path), self.ctx) if f]
            if found and failure is None:
                failure = RunError(*found[0])
        if failure is not None:
            raise failure

    def kept(self):
        """What a failed run leaves to go on from."""
        if self.last_model is None:
            return "no checkpoint of this run was written"
        return (f"the last good checkpoint is kept: {self.last_model}"
                + (f" (and {self.resume_path} of step {self.resume_step})" if self.resume_step is not None else ""))

    def train_batch(self, number, batch):
        """One micro-batch through the step; its loss recorded, the schedule stepped, a log line due."""
        self.train_step += 1
        is_update = self.train_step % self.args.grad_acc == 0
        lr = self.step.optimizer.param_groups[0]["lr"]
        loss = self.step(batch, is_update)
        self.print_due_log()  # the previous step's losses: that step is done or nearly, this one is queued
        self.micro_losses.append(loss)
        self.losses.count_micro_batch()
        self.batch_in_epoch = number + 1
        if is_update:
            mean = self.micro_losses[0] if len(self.micro_losses) == 1 else torch.stack(self.micro_losses).mean()
            self.losses.add(self.train_step, self.train_step // self.args.grad_acc, self.epoch, lr, mean)
            self.micro_losses = []
        self.schedule.step()
        self.progress.loss = self.losses.last
        self.progress.advance()
        if self.train_step % self.args.log_interval == 0:  # printed once the next step is queued
            self.losses.start_read()
            self.log_due = (self.train_step, number, self.epoch, self.step.optimizer.param_groups[0]["lr"])

    def print_due_log(self):
        if self.log_due is None:
            return
        step, number, epoch, lr = self.log_due
        self.log_due = None
        self.losses.finish_read()
        ms, avg = self.losses.close_window()
        last = self.losses.last if self.losses.last is not None else float("nan")
        self.say(f"| epoch {epoch:3d} step {step:>8d} | {number + 1:>6d} batches | lr {lr:.3g} | "
                 f"ms/batch {ms:5.2f} | loss {last:5.2f} | avg loss {avg:5.2f} | ppl {math.exp(min(avg, 700.0)):5.2f}")

    def read_losses(self):
        self.print_due_log()
        self.losses.read_now()

    def save(self, final=False):
        """model.{step}.pt and resume.pt (every rank calls it); never weights that are not finite. The files are
        written in the background; a failure of the previous save's is raised here."""
        self.read_losses()
        self.wait_for_writes()
        gathered = getattr(self.step, "full_weights", None)  # DeepSpeed: the fp32 weights, gathered meanwhile
        with gathered() if gathered else contextlib.nullcontext():
            if not all_finite([p for p in self.model.parameters() if p.requires_grad]):
                raise RunError(f"the weights are not finite (nan or inf) after step {self.train_step}: the run "
                               "stopped without saving them (a too high --lr?)")
            files = []
            # DeepSpeed frees gathered weights on its own streams: copied to the host before they go
            content = self.model_state(self.model, on_cpu=gathered is not None) if self.ctx.is_main else None
            if content is not None:
                path = os.path.join(self.args.work_dir, f"model.{self.train_step}.pt")
                self.say(f"saving checkpoint {path}")
                files.append((path, content))
        self.save_resume(final, files)

    def save_resume(self, final, files=()):
        """resume.pt (after `files`, the model file of this step), written in the background."""
        self.read_losses()
        files = list(files)
        if getattr(self.step, "resumable", True):  # DeepSpeed: no resume.pt
            position = {"train_step": self.train_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                        "finished": final}
            content = resume_state(self.settings, position, self.model, self.step.optimizer, self.schedule,
                                   self.step.scaler, self.micro_losses, self.ctx, self.train_set, self.valid_set)
            files += [(self.resume_path, content)] if content is not None else []
        self.writer.save(files, unwrap(self.model).config, self.written(self.train_step))
        barrier(self.ctx)
        self.losses.restart_clock()

    def written(self, step):
        """What the writer calls once a file of the save at `step` is in place (kept() names it)."""
        def note(path):
            if path == self.resume_path:
                self.resume_step = step
            else:
                self.last_model = path
        return note

    def run_eval(self):
        self.read_losses()
        start = time.perf_counter()
        # A forward that is itself collective (DeepSpeed's ZeRO-3 gathers weights) must run as often on every
        # rank: one batch a pack (the ranks have as many batches; packs of several could differ in number).
        pack_tokens = 0 if getattr(self.step, "collective_forward", False) else None
        self.valid_loss, valid_ppl = validation_loss(self.step.objective, self.valid_set, self.valid_batches,
                                                     self.ctx, pack_tokens)
        self.best_ppl = valid_ppl if self.best_ppl is None else min(self.best_ppl, valid_ppl)
        step = self.train_step
        self.metrics.write({"step": step, "epoch": self.epoch, "valid_loss": self.valid_loss,
                            "valid_ppl": valid_ppl})
        self.say("-" * 100)
        self.say(f"| Eval {step // self.args.eval_interval:3d} at step {step:>8d} | time: "
                 f"{time.perf_counter() - start:5.2f}s | valid loss {self.valid_loss:5.2f} | valid ppl "
                 f"{valid_ppl:5.2f} | best ppl {self.best_ppl:5.2f} ")
        self.say("-" * 100)
        self.losses.restart_clock()
