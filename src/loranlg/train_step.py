"""The training step: one micro-batch in, its loss out, the optimizer updated at the end of each accumulation.

Two implementations behind one call, chosen once per run (make_step):
  EagerStep     forward and backward every micro-batch; the gradients averaged over the ranks, clipping, fp16
                loss scaling and the update on the last of each accumulation. Any setting.
  GraphedStep   on GPUs with --grad_acc 1, one process or many: the whole step (forward, loss, backward, the
                ranks' gradient all-reduce, clipping, Adam) replayed as one CUDA graph per batch shape
                (graphed_step.py), by default with the blocks, the loss and the update compiled by
                torch.compile. Same numbers as the eager step (tests/test_gpu.py). If compilation fails at the
                first capture, the run says so and goes on with the uncompiled graph.
Several processes share the gradients by hand (grad_sync.py), not through DistributedDataParallel, so that the
graph can hold the collective. A batch may carry "loss_scale", its rank's share of a global batch's loss
(rank_batches.py).
What may be chosen is SpeedOptions; bench/ passes its own.
"""

from dataclasses import dataclass, field

import torch

from . import data, optim
from .grad_sync import average_gradients, broadcast_parameters
from .graphed_step import GraphedTrainStep
from .loss import LMObjective, masked_lm_loss
from .precision import autocast_dtype, store_frozen_matrices

# How the CUDA-graph step lays batches out: packed (no padding in the matrix products), with few shapes, so
# few graphs to capture. "padded" (one example a row) is kept for comparison (bench/bench_train.py).
GRAPH_LAYOUTS = {
    "packed": {"collate_fn": data.collate_packed, "length_multiple": 16, "tokens_multiple": 64,
               "positions_multiple": 64},
    "padded": {"collate_fn": data.collate, "length_multiple": 16, "positions_multiple": 64},
}


@dataclass(frozen=True)
class SpeedOptions:
    """cuda_graphs: the CUDA-graph step where it can run (--no_cuda_graph: False).
    compile: "auto" (with the CUDA-graph step, where fusing its ~1,300 small kernels pays), "on", "off".
    compile_optimizer: with the CUDA-graph step, compile the optimizer's update too.
    inductor_options: Inductor's options for everything compiled. Combo kernels put independent small kernels
      (the casts of LoRA's tensors, the update's foreach ops) into one launch: on an H100 a graphed step's
      compiled kernels fall from 541 to 377 and its replay from 5.4 to 4.9 ms (BENCHMARKS.md, seventh session).
    graph_layout: a key of GRAPH_LAYOUTS.
    capture: False runs the CUDA-graph step's function as it is, uncaptured, on any device: how the CPU tests
      check its numbers (the packed layout, the ranks' gradient all-reduce) against the eager step."""
    cuda_graphs: bool = True
    compile: str = "auto"
    compile_optimizer: bool = True
    inductor_options: dict = field(default_factory=lambda: {"combo_kernels": True})
    graph_layout: str = "packed"
    capture: bool = True

    @classmethod
    def from_args(cls, args):
        return cls(cuda_graphs=not getattr(args, "no_cuda_graph", False),
                   compile=getattr(args, "compile", "off") or "off")

    def compile_options(self):
        """inductor_options less those this PyTorch's Inductor does not know (older versions)."""
        try:
            import torch._inductor.config as inductor_config
        except Exception:
            return {}
        return {name: value for name, value in self.inductor_options.items() if hasattr(inductor_config, name)}


def why_no_graphs(args, ctx, speed):
    """Why the CUDA-graph step cannot be used here, or None when it can."""
    if not speed.cuda_graphs:
        return "--no_cuda_graph"
    if ctx.device.type != "cuda" and speed.capture:
        return "not on a GPU"
    if args.grad_acc != 1:
        return "--grad_acc above 1"
    if args.precision == "fp16":
        return "fp16's loss scaler synchronises with the host"
    return None


def compile_objective(objective, options):
    """torch.compile each transformer block (one compiled graph serves all, with dynamic lengths) and the
    loss (head, cross-entropy, label smoothing in a few fused kernels). Compilation happens at the first
    call; False when this PyTorch cannot compile at all."""
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


def make_step(model, args, ctx, speed, say):
    """The step for this run, with its objective and optimizer (step.objective, step.optimizer, step.scaler);
    `say` prints a line on rank 0. Make it before loading a resume file into the optimizer: graphs need a
    capturable optimizer, and are captured at the first call, after the load."""
    if getattr(args, "deepspeed_settings", None) is not None:  # --deepspeed: DeepSpeed's engine takes the step
        from .deepspeed_engine import make_deepspeed_step
        return make_deepspeed_step(model, args, ctx, say)
    reason = why_no_graphs(args, ctx, speed)
    say(f"CUDA graphs: {'on' if reason is None else 'off'}" + ("" if reason is None else f" ({reason})"))
    if ctx.distributed:
        broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    optimizer = optim.create_optimizer(model, args, capturable=reason is None)
    frozen_head = None
    if ctx.device.type == "cuda" and autocast_dtype(args.precision) is not None:
        frozen_head = store_frozen_matrices(model, autocast_dtype(args.precision))
    objective = LMObjective(model, args.precision, frozen_head)
    compiling = speed.compile == "on" or (speed.compile == "auto" and reason is None)
    compiled = compiling and compile_objective(objective, speed.compile_options())
    if compiled and reason is None and speed.compile_optimizer:
        optimizer.compile_update(speed.compile_options())
    if compiling:
        say("torch.compile: " + ("on (the first steps compile: about 30 s on an H100)" if compiled
                                 else "not available in this PyTorch; going on without it"))
    if reason is None:
        return GraphedStep(objective, optimizer, args, ctx, compiled, GRAPH_LAYOUTS[speed.graph_layout], say,
                           speed.capture)
    return EagerStep(objective, optimizer, args, ctx)


def batch_loss(objective, batch, label_smooth, packing=None):
    """The objective's loss on a batch, times the batch's loss_scale when it has one (rank_batches.py)."""
    loss = objective(batch["input"], batch["target"], batch["positions"], batch["weights"], label_smooth, packing)
    return loss * batch["loss_scale"][0] if "loss_scale" in batch else loss


class EagerStep:
    layout = {}  # the batches of data.collate, padded to their longest example
    same_shapes = False  # the ranks' batches may differ in shape

    def __init__(self, objective, optimizer, args, ctx):
        self.objective, self.optimizer, self.args = objective, optimizer, args
        self.trainable = [p for p in objective.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(ctx.device.type) if args.precision == "fp16" else None
        self.world_size = ctx.world_size

    def __call__(self, batch, is_update):
        """Forward and backward of one micro-batch; on the last of an accumulation also the update."""
        args = self.args
        loss = batch_loss(self.objective, batch, args.label_smooth)
        scaled = loss / args.grad_acc
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if is_update:
            if self.world_size > 1:
                average_gradients(self.trainable, self.world_size)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.trainable, args.clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @property
    def graphs(self):
        return 0


class GraphedStep:
    scaler = None
    same_shapes = True  # every rank captures and replays the same graphs

    def __init__(self, objective, optimizer, args, ctx, compiled, layout, say, capture=True):
        self.objective, self.optimizer, self.args = objective, optimizer, args
        self.compiled, self.layout, self.say = compiled, layout, say
        self.world_size = ctx.world_size
        self.trainable = [p for p in objective.parameters() if p.requires_grad]
        self.graphed = None  # captured at the first call, after any resume has loaded the optimizer state
        self.uncaptured = None if capture else self.step_fn()  # SpeedOptions.capture False: run it as it is

    def __call__(self, batch, is_update=True):
        """The whole update on one batch (grad_acc is 1); the loss, copied out of the graph's buffer."""
        if self.uncaptured is not None:
            for param in self.trainable:
                param.grad = None  # as a captured step starts: its backward writes fresh gradients
            return self.uncaptured(batch)
        if self.graphed is None:
            self.graphed = self.capture()
        try:
            return self.graphed(batch).clone()
        except Exception as err:
            if not self.compiled:
                raise
            self.say(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                     "going on without it (--compile off skips it)")
            uncompile_objective(self.objective)
            self.optimizer.uncompile_update()
            self.compiled = False
            self.graphed = self.capture()
            return self.graphed(batch).clone()

    def step_fn(self):
        """The function a graph captures: batch (its tensors on the device) -> loss, one whole update."""
        args, objective, optimizer, trainable, world_size = (self.args, self.objective, self.optimizer,
                                                             self.trainable, self.world_size)

        def step(batch):
            packing = {name: batch[name] for name in data.PACKING_KEYS} if "pad_index" in batch else None
            loss = batch_loss(objective, batch, args.label_smooth, packing)
            loss.backward()
            if world_size > 1:
                average_gradients(trainable, world_size)
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, args.clip)
            optimizer.step()
            return loss.detach()

        return step

    def capture(self):
        trainable = self.trainable
        return GraphedTrainStep(self.step_fn(), trainable, protect=trainable + self.optimizer.state_tensors(),
                                unused=("mask",))

    @property
    def graphs(self):
        """Batch shapes captured so far."""
        return len(self.graphed.captured) if self.graphed is not None else 0
