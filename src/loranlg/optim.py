"""The original's optimizer and learning-rate schedules (SPEC 5).

Adam with decoupled weight decay, per step and parameter:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    step = lr, times sqrt(1 - b2^t) / (1 - b1^t) with correct_bias
    p -= step * m / (sqrt(v) + eps);  then p -= lr * wd * p
The schedules step once per micro-batch; the rate of update t is base_lr * factor(number of scheduler
steps so far), so with warmup the first update runs at lr 0.
"""

import math
from collections import defaultdict

import torch

from .flags import FIXED_RATE_SCHEDULES


class AdamW(torch.optim.Optimizer):
    """capturable=True keeps the step count and the learning rate in device tensors, so that step() runs
    inside a CUDA graph (graphed_step.py); the arithmetic is the same."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, correct_bias=True,
                 capturable=False):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.capturable = capturable
        self._compiled_update = None
        if capturable:
            self._init_device_state()

    def _init_device_state(self):
        for group in self.param_groups:
            device = group["params"][0].device
            group["lr_tensor"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            for p in group["params"]:
                state = self.state[p]
                state.setdefault("step", torch.zeros((), dtype=torch.float32, device=device))
                state.setdefault("exp_avg", torch.zeros_like(p))
                state.setdefault("exp_avg_sq", torch.zeros_like(p))

    def set_lr(self, group, lr):
        group["lr"] = lr
        if "lr_tensor" in group:
            group["lr_tensor"].fill_(lr)

    def compile_update(self, options=None):
        """torch.compile the capturable update: its ~30 small foreach and scalar kernels become a few fused
        ones (inside the CUDA-graph step launches cost more than the arithmetic). Same arithmetic, up to the
        rounding of fused multiply-adds. options: Inductor's (train_step.SpeedOptions)."""
        if self.capturable:
            self._compiled_update = torch.compile(adam_update, options=options)

    def uncompile_update(self):
        self._compiled_update = None

    def state_tensors(self):
        """Every tensor step() writes besides the parameters (what a graph warm-up must restore)."""
        return [t for state in self.state.values() for t in state.values() if torch.is_tensor(t)]

    def load_state_dict(self, state_dict):
        """Also across modes: a resume file of an eager run continues under CUDA graphs and vice versa."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            # torch keeps a loaded "step" tensor where it was saved (the CPU); a graph needs it on the device
            steps = int(state["step"])
            state["step"] = (torch.tensor(float(steps), device=state["exp_avg"].device) if self.capturable
                             else steps)
        if self.capturable:
            self._init_device_state()

    @torch.no_grad()
    def step(self, closure=None):
        if self.capturable:
            update = self._compiled_update or adam_update
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:  # the parameters of a group always step together here: one device step count
                    update(params, *self._tensors(params), [self.state[p]["step"] for p in params],
                           group["lr_tensor"], *self._settings(group))
            return
        for group in self.param_groups:
            by_step = defaultdict(list)  # parameters at the same step share one set of foreach kernels
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                by_step[state["step"]].append(p)
            for step, params in by_step.items():
                adam_update(params, *self._tensors(params), step, group["lr"], *self._settings(group))

    def _tensors(self, params):
        return ([p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                [self.state[p]["exp_avg_sq"] for p in params])

    @staticmethod
    def _settings(group):
        beta1, beta2 = group["betas"]
        return beta1, beta2, group["eps"], group["weight_decay"], group["correct_bias"]


def adam_update(params, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, correct_bias):
    """One update of the module docstring's formula, in place. step and lr are numbers (the eager optimizer)
    or device tensors (capturable: step a list of per-parameter counts, incremented here, read with no host
    synchronisation; every tensor comes in as an argument, so that one compiled version serves every step)."""
    on_device = torch.is_tensor(lr)
    if on_device:
        torch._foreach_add_(step, 1.0)
        step = step[0]
    torch._foreach_mul_(exp_avg, beta1)
    torch._foreach_add_(exp_avg, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_add_(denom, eps)
    step_size = lr
    if correct_bias and on_device:
        step_size = lr * torch.sqrt(1.0 - torch.pow(beta2, step)) / (1.0 - torch.pow(beta1, step))
    elif correct_bias:
        step_size = lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    if on_device:  # p -= step_size * m / denom, with step_size a tensor
        update = torch._foreach_div(exp_avg, denom)
        torch._foreach_mul_(update, -step_size)
        torch._foreach_add_(params, update)
    else:
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)
    if weight_decay > 0.0 and on_device:
        torch._foreach_add_(params, torch._foreach_mul(params, -lr * weight_decay))
    elif weight_decay > 0.0:
        torch._foreach_add_(params, params, alpha=-lr * weight_decay)


def parameter_groups(model, no_decay_bias=False, lora_plus_ratio=1.0, lr=None):
    """The trainable parameters; with no_decay_bias, biases (names with 'bias') get no weight decay.
    LoRA+ (Hayou et al. 2024; peft's create_loraplus_optimizer): with lora_plus_ratio K != 1, each group's
    lora_B tensors (and DoRA's 1-D magnitudes, as peft groups 1-D tensors with B) go into a group of their
    own at K * lr; the rest of the recipe (schedule, decay, Adam) is the same for every group."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    parts = [({}, named)]
    if no_decay_bias:
        no_decay = ("bias", "layer_norm.weight")  # the original's list
        exempt = [any(nd in n for nd in no_decay) for n, _ in named]
        parts = [({}, [np for np, ex in zip(named, exempt) if not ex]),
                 ({"weight_decay": 0.0}, [np for np, ex in zip(named, exempt) if ex])]
    if lora_plus_ratio == 1.0:  # the recipe's groups, as they always were
        return [{"params": [p for _, p in members], **settings} for settings, members in parts]
    groups = []
    for settings, members in parts:
        fast = [p for n, p in members if is_lora_plus_fast(n, p)]
        rest = [p for n, p in members if not is_lora_plus_fast(n, p)]
        groups += [{"params": rest, **settings}] if rest else []
        groups += [{"params": fast, "lr": lr * lora_plus_ratio, **settings}] if fast else []
    return groups


def is_lora_plus_fast(name, param):
    """What LoRA+ trains at the higher rate: lora_B, and DoRA's magnitudes (1-D LoRA tensors)."""
    return name.endswith("lora_B") or ("lora_" in name and param.dim() == 1)


def lr_factor(kind, t, warmup, max_step):
    """The multiplier of --lr after t scheduler steps."""
    if kind in FIXED_RATE_SCHEDULES:
        return 1.0
    if kind == "cosine":
        # The original's cosine scheduler starts at its min_lr (0) even without warmup, then follows
        # t / warmup and 0.5 * (1 + cos(pi * t / T)) (over the whole run, not the post-warmup part).
        if t == 0:
            return 0.0
        if t < warmup:
            return t / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(t, max_step) / max_step))
    if t < warmup:
        return t / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (max_step - t) / max(1, max_step - warmup))
    raise ValueError(f"unknown schedule {kind!r}")


class Schedule:
    """Sets every group's lr to base_lr * lr_factor(t); step() once per micro-batch."""

    def __init__(self, optimizer, kind, warmup, max_step):
        self.optimizer, self.kind, self.warmup, self.max_step = optimizer, kind, warmup, max_step
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.t = 0
        self._apply()

    def _apply(self):
        factor = lr_factor(self.kind, self.t, self.warmup, self.max_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            if "lr_tensor" in group:
                self.optimizer.set_lr(group, base * factor)
            else:
                group["lr"] = base * factor

    def step(self):
        self.t += 1
        self._apply()

    def state_dict(self):
        return {"t": self.t, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.t = state["t"]
        self.base_lrs = list(state["base_lrs"])
        self._apply()


def create_optimizer(model, args, capturable=False):
    groups = parameter_groups(model, args.no_decay_bias, getattr(args, "lora_plus_ratio", 1.0), args.lr)
    return AdamW(groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                 eps=args.adam_epislon, weight_decay=args.weight_decay, correct_bias=args.correct_bias,
                 capturable=capturable)
