"""Where one CUDA-graph training step spends its time: replay-only milliseconds on a fixed batch (the GPU's
share, no data loading) and the CUDA kernels of a few replays, largest first.

    python bench/profile_train.py --data E2E_ENCODED.jsonl [--compile [--plain_optimizer]] [--precision bf16]
                                  [--sdpa flash] [--inductor NAME=VALUE] [--eager_shapes]

The batch is 8 examples drawn at random (--seed), as the training sampler draws them: its padded length is
a typical one (E2E averages 77 tokens padded, 84 with the graph's buckets of 16).
"""

import argparse
import ast
import json
import os
import random
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import torch  # noqa: E402

from loranlg import data  # noqa: E402
from loranlg.distributed import DistContext  # noqa: E402
from loranlg.model import build_model  # noqa: E402
from loranlg.train_step import GRAPH_LAYOUTS, SpeedOptions, make_step  # noqa: E402


def packed_layout():
    return {k: v for k, v in GRAPH_LAYOUTS["packed"].items() if k != "collate_fn"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="encoded jsonl (context / completion ids)")
    parser.add_argument("--model_card", default="gpt2.md", help="model size (gpt2.md)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="(bf16)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile as gpt2_ft.py does: the blocks, the loss and the optimizer's update, "
                             "with SpeedOptions' Inductor options")
    parser.add_argument("--plain_optimizer", action="store_true", help="with --compile, leave the update uncompiled")
    parser.add_argument("--eager_shapes", action="store_true",
                        help="also profile eager steps (no graph, no compile) and list operators by input shape")
    parser.add_argument("--sdpa", default="default", choices=["default", "flash", "efficient", "cudnn"],
                        help="the only scaled_dot_product_attention backend allowed (default: PyTorch's choice)")
    parser.add_argument("--inductor", action="append", default=[], metavar="NAME=VALUE",
                        help="Inductor option NAME (a Python literal) for every compiled part, added to "
                             "SpeedOptions' (e.g. combo_kernels=False); repeatable")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (8)")
    parser.add_argument("--replays", type=int, default=100, help="timed replays (100)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed (25)")
    parser.add_argument("--seed", type=int, default=0, help="which random batch (0)")
    opts = parser.parse_args()
    inductor = dict(SpeedOptions().inductor_options)
    for setting in opts.inductor:
        name, _, value = setting.partition("=")
        try:
            inductor[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--inductor {setting!r}: expected NAME=VALUE with a Python literal, e.g. combo_kernels=True")
    speed = SpeedOptions(compile="auto" if opts.compile else "off", compile_optimizer=not opts.plain_optimizer,
                         inductor_options=inductor)
    if not torch.cuda.is_available():
        parser.error("profile_train.py needs a CUDA GPU (it profiles CUDA-graph steps)")

    if opts.sdpa != "default":
        torch.backends.cuda.enable_cudnn_sdp(opts.sdpa == "cudnn")
        torch.backends.cuda.enable_flash_sdp(opts.sdpa == "flash")
        torch.backends.cuda.enable_mem_efficient_sdp(opts.sdpa == "efficient")
    torch.manual_seed(0)
    model = build_model(opts.model_card, 4, 32, 0.1).cuda()
    examples = [(r["context"], r["completion"]) for r in map(json.loads, open(opts.data))]
    dataset = data.FTDataset(examples, opts.batch, 512)
    picked = random.Random(opts.seed).sample(range(len(examples)), opts.batch)
    batch = data.collate_packed([dataset[i] for i in picked], 512, **packed_layout())
    batch = {k: v.cuda() for k, v in batch.items()}
    print(f"batch {tuple(batch['input'].shape)}, {int(batch['mask'].sum())} loss positions "
          f"(padded to {len(batch['positions'])})")
    args = types.SimpleNamespace(no_decay_bias=False, lr=2e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6,
                                 weight_decay=0.01, correct_bias=True, clip=0.0, label_smooth=0.1, grad_acc=1,
                                 precision=opts.precision)
    ctx = DistContext(device=torch.device("cuda", torch.cuda.current_device()))
    quiet = lambda *a, **k: None  # noqa: E731
    if opts.eager_shapes:
        eager = make_step(model, args, ctx, SpeedOptions(compile="off"), quiet)
        profile_eager_by_shape(eager.objective, eager.optimizer, batch, args, opts.top)
    started = time.perf_counter()
    graphed = make_step(model, args, ctx, speed, print)
    graphed(batch)  # compiles (with --compile) and captures
    step = graphed.graphed  # replays alone from here on
    torch.cuda.synchronize()
    if opts.compile:
        print(f"compile and capture: {time.perf_counter() - started:.0f} s (options {speed.compile_options()})")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(opts.replays):
        step(batch)
    end.record()
    torch.cuda.synchronize()
    print(f"replay only: {start.elapsed_time(end) / opts.replays:.3f} ms/step "
          f"(compile={opts.compile}, {opts.precision}), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step(batch)
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=opts.top, max_name_column_width=70))
    print_categories(averages, replays=5)


def profile_eager_by_shape(objective, optimizer, batch, args, top):
    """The operators of three eager steps with their GPU time, grouped by input shapes (which matrix
    products cost what)."""
    from torch.profiler import ProfilerActivity, profile
    packing = {name: batch[name] for name in data.PACKING_KEYS}

    def eager_step():
        loss = objective(batch["input"], batch["target"], batch["positions"], batch["weights"], args.label_smooth,
                         packing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    eager_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(3):
            eager_step()
        torch.cuda.synchronize()
    averages = prof.key_averages(group_by_input_shape=True)
    print(averages.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=40,
                         max_shapes_column_width=80))


CATEGORIES = [("matrix products", ("gemm", "cutlass", "sm90_xmma", "sm80_xmma", "nvjet", "cublas")),
              ("attention", ("flash", "fmha", "attention", "cudnn")),
              ("triton (compiled)", ("triton",)),
              ("reductions", ("reduce", "softmax", "norm")),
              ("copies", ("copy", "cat", "index", "gather", "scatter"))]


def print_categories(averages, replays):
    """GPU time per kind of kernel (names matched loosely), per step."""
    totals, counts = {}, {}
    for event in averages:
        if event.device_type != torch.autograd.DeviceType.CUDA or event.self_device_time_total <= 0:
            continue
        name = event.key.lower()
        kind = next((label for label, keys in CATEGORIES if any(k in name for k in keys)), "other elementwise")
        totals[kind] = totals.get(kind, 0.0) + event.self_device_time_total
        counts[kind] = counts.get(kind, 0) + event.count
    print("| kernels | ms/step | launches/step |")
    print("|---|---|---|")
    for kind in sorted(totals, key=totals.get, reverse=True):
        print(f"| {kind} | {totals[kind] / 1000 / replays:.3f} | {counts[kind] / replays:.0f} |")


if __name__ == "__main__":
    main()
