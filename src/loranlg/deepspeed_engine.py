"""DeepSpeed as the training step of `--deepspeed` runs (docs/training.md, "DeepSpeed"): ZeRO stage 0-3, fp32 or
bf16, around our objective (LMObjective), our AdamW (DeepSpeed's client optimizer) and our schedule (the loop sets
the learning rate of the AdamW's param_groups, which ZeRO keeps). DeepSpeedStep has train_step.EagerStep's
interface; the config comes resolved from deepspeed_config.py.

Under bf16 DeepSpeed holds the model in bf16 and the trainable weights' fp32 master copies in the optimizer, in
pieces across the processes (ZeRO-3 also the model's own weights): full_weights() puts the full fp32 values in
for the length of a save, so that model.{step}.pt is what an fp32 run writes.
"""

import atexit
import contextlib
import logging
import os
import warnings

import torch.distributed as dist

from . import optim
from .deepspeed_config import import_deepspeed, stage
from .errors import RunError
from .loss import LMObjective
from .train_step import batch_loss


class DeepSpeedStep:
    layout = {}  # the batches of data.collate, padded to their longest example
    same_shapes = False
    scaler = None
    graphs = 0
    resumable = False  # no resume.pt: a DeepSpeed run starts again from its last model.{step}.pt

    def __init__(self, model, args, ctx, config):
        """model: the GPT2LMModel on ctx.device; config: deepspeed_config.load's."""
        os.environ.setdefault("DS_ACCELERATOR", ctx.device.type)  # read once, when deepspeed is imported
        deepspeed = import_deepspeed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # not its config dump and per-step lines
        # DeepSpeed's collectives go through torch's older names, which newer torch warns about at every call
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
        start_single_process(ctx)
        self.args, self.stage = args, stage(config)
        self.collective_forward = self.stage == 3  # ZeRO-3 gathers each layer's weights from all ranks in its forward
        self.optimizer = optim.create_optimizer(model, args)
        objective = LMObjective(model, args.precision)
        if self.stage == 3:  # the tied head reads the embedding's weight outside the embedding's forward (recent
            # DeepSpeed also notices by itself; registering it is what its documentation asks)
            deepspeed.zero.register_external_parameter(objective, model.transformer.wte.weight)
        self.engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=self.optimizer, config=config,
                                                    dist_init_required=False)
        self.objective = self.engine  # what validation calls
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.safe_get_full_fp32_param = deepspeed.utils.safe_get_full_fp32_param

    def __call__(self, batch, is_update):
        """Forward and backward of one micro-batch; DeepSpeed updates on the last of an accumulation (its count
        of micro-batches and ours agree from step 0: a DeepSpeed run does not resume)."""
        if self.engine.is_gradient_accumulation_boundary() != is_update:
            raise RunError("DeepSpeed's gradient accumulation boundary and the loop's differ")
        loss = batch_loss(self.engine, batch, self.args.label_smooth)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    @contextlib.contextmanager
    def full_weights(self):
        """Collective (every rank enters it): each trainable parameter holds its full fp32 value (the optimizer's
        master copy) inside the block, its own tensor again after it."""
        kept = [p.data for p in self.trainable]
        try:
            for p in self.trainable:
                full = self.safe_get_full_fp32_param(p)  # None: DeepSpeed holds no copy (fp32 without ZeRO)
                if full is not None:
                    p.data = full.view(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
            yield
        finally:
            for p, data in zip(self.trainable, kept):
                p.data = data


def start_single_process(ctx):
    """deepspeed.initialize wants a process group, also for one process (where ours starts none)."""
    os.environ.setdefault("LOCAL_RANK", str(ctx.local_rank))  # deepspeed.initialize asserts it is set
    if dist.is_initialized():
        return
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=ctx.device if ctx.device.type == "cuda" else None)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def make_deepspeed_step(model, args, ctx, say):
    """The step of a --deepspeed run (train_step.make_step's choice when args.deepspeed_settings is set)."""
    from .deepspeed_config import describe
    config = args.deepspeed_settings
    say(f"DeepSpeed: {describe(config)} ({args.deepspeed_config}); CUDA graphs: off (DeepSpeed's own step)")
    return DeepSpeedStep(model, args, ctx, config)

