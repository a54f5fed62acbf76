"""Training speed of gpt2_ft.py's own loop: GPT-2 medium shapes with random weights, LoRA r=4 on q,v (the E2E
recipe), batch 8, E2E valid.txt encoded as the training data, at fp32 and bf16.

    python bench/bench_train.py [--shared ../shared] [--steps 400] [--warmup 600] [--precisions fp32,bf16]
                                [--variants default,qkvo,dora]     LoRA variants side by side (VARIANTS)
    torchrun --nproc_per_node=2 bench/bench_train.py ...       # the same per GPU, on 2 GPUs

It runs loranlg.train.train itself (the whole step: data, forward, loss, backward, Adam, schedule) and reads
the per-step times of metrics.jsonl after the warmup steps; each row in a process of its own (its peak memory
and compiled code are its own). tokens/s counts real (unpadded) input tokens of
all ranks. SPEC 11: the original takes 285 ms a step (fp32, padded to 512). On a GPU the table opens with
the baseline, transformers' GPT-2 + peft LoRA on the same data at each precision (bench/hf_baseline.py, timed
in the same run), and gives each of our rows' speed-up over it (--baseline).
"""

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import torch  # noqa: E402

import hf_baseline  # noqa: E402  (bench/, beside this script)
from gpt2_ft import build, build_parser, check_args  # noqa: E402
from loranlg.distributed import cleanup, setup_distributed  # noqa: E402
from loranlg.encode import encode_pairs  # noqa: E402
from loranlg.formats import e2e_examples  # noqa: E402
from loranlg.graphed_step import GraphedTrainStep  # noqa: E402
from loranlg.tokenizer import GPT2BPE  # noqa: E402
from loranlg.train import load_datasets, train  # noqa: E402
from loranlg.train_step import SpeedOptions  # noqa: E402


def encode_e2e_valid(shared, out_path):
    """valid.txt -> encoded jsonl, as format_converting_e2e.py + gpt2_encode.py --add_bos --add_eos write it."""
    pairs = [(ex["context"], ex["completion"])
             for ex in e2e_examples(os.path.join(shared, "data", "e2e", "valid.txt"))]
    records = encode_pairs(GPT2BPE(os.path.join(shared, "vocab")), pairs, add_bos=True, add_eos=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return records


LOG_EVERY = 20  # steps per metrics record (and host sync); --warmup and --steps are multiples of it
# mode -> SpeedOptions (the layout is its own axis, --layouts)
MODES = {"eager": SpeedOptions(cuda_graphs=False, compile="off"), "graph": SpeedOptions(compile="off"),
         "graph+compile": SpeedOptions(),  # gpt2_ft.py's default: blocks, loss and optimizer compiled
         # what the default adds, measured against it: the update uncompiled and no combo kernels (the default
         # before the seventh session)
         "graph+compile-optimizer-combo": SpeedOptions(compile_optimizer=False, inductor_options={})}


# --variants: gpt2_ft.py's LoRA variant flags per row (docs/lora-variants.md); default is the paper's q,v.
VARIANTS = {"default": [], "qkvo": ["--lora_targets", "q,k,v,o"], "all": ["--lora_targets", "all"],
            "dora": ["--dora"], "qkvo-dora": ["--lora_targets", "q,k,v,o", "--dora"], "rs": ["--lora_scaling", "rs"],
            "lora_plus": ["--lora_plus_ratio", "16"]}


class StepHook:
    """While active, every CUDA-graph step of the training loop goes through self.call(original, step, batch)."""

    def __enter__(self):
        self.original = GraphedTrainStep.__call__
        GraphedTrainStep.__call__ = lambda step, batch: self.call(self.original, step, batch)
        return self

    def __exit__(self, *exc):
        GraphedTrainStep.__call__ = self.original


class ReplayTimes(StepHook):
    """While active: the GPU time of each CUDA-graph step after the first `warmup` (CUDA events around the
    input copies and the replay), and the peak memory of those steps alone. Against the loop's own ms/step
    it shows how long the GPU waits for the host."""

    def __init__(self, warmup):
        self.warmup, self.calls, self.events = warmup, 0, []
        self.warmup_peak = None

    def call(self, original, step, batch):
        self.calls += 1
        if self.calls <= self.warmup:
            return original(step, batch)
        if self.calls == self.warmup + 1:
            self.warmup_peak = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = original(step, batch)
        end.record()
        self.events.append((start, end))
        return loss

    def summary(self):
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in self.events]
        if not times:
            return {}
        return {"replay_ms": statistics.median(times), "steady_peak": torch.cuda.max_memory_allocated() / 2**30,
                "warmup_peak": self.warmup_peak}


def measure(ctx, data, small_valid, work_dir, card, precision, batch, warmup, steps, mode="graph", layout="packed",
            variant="default"):
    argv = ["--train_data", data, "--valid_data", small_valid, "--model_card", card, "--lora_dim", "4",
            "--lora_alpha", "32", "--lora_dropout", "0.1", "--label_smooth", "0.1", "--train_batch_size", str(batch),
            "--lr", "2e-4", "--weight_decay", "0.01", "--correct_bias", "--adam_beta2", "0.999",
            "--warmup_step", "500", "--random_seed", "110", "--precision", precision,
            "--max_step", str(warmup + steps), "--log_interval", str(LOG_EVERY), "--eval_interval", "1000000",
            "--save_interval", "1000000", "--work_dir", work_dir, *VARIANTS[variant]]
    speed = dataclasses.replace(MODES[mode], graph_layout=layout)
    if ctx.device.type == "cpu":
        argv += ["--device", "cpu"]
    args = build_parser().parse_args(argv)
    check_args(args)
    quiet = lambda *a, **k: None  # noqa: E731
    train_set, valid_set, _ = load_datasets(args)
    model = build(args, ctx, quiet)
    if ctx.device.type == "cuda":
        torch._dynamo.reset()  # compiled code of an earlier run holds its model: free it for a clean peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    timer = ReplayTimes(warmup) if ctx.device.type == "cuda" and mode != "eager" else contextlib.nullcontext()
    start = time.perf_counter()
    with timer:
        summary = train(args, ctx, model, train_set, valid_set, model_state=lambda model, on_cpu: None, speed=speed,
                        log=quiet)
    wall = time.perf_counter() - start
    replays = timer.summary() if isinstance(timer, ReplayTimes) else {}
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else float("nan")
    peak = max(peak, replays.get("warmup_peak") or 0.0)  # the timer reset the peak after the warm-up
    if not ctx.is_main:
        return None
    with open(os.path.join(work_dir, "metrics.jsonl")) as handle:
        times = [r["ms"] for r in map(json.loads, handle) if "ms" in r and r["step"] > warmup]
    tokens_per_example = statistics.mean(len(c) + len(x) for c, x in train_set.examples)
    # Steady state: the median 20-step window (a window where a new batch shape is captured is an outlier).
    ms = statistics.median(times)
    return dict(ms=ms, mean_ms=statistics.mean(times), peak=peak, graphs=summary["graphs"],
                replay_ms=replays.get("replay_ms"), steady_peak=replays.get("steady_peak"),
                tokens=tokens_per_example * batch * ctx.world_size / (ms / 1000),
                startup=wall - (warmup + steps) * ms / 1000)  # compilation, graph captures, evaluation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("LORANLG_SHARED", os.path.join(REPO, "..", "shared")),
                        help="the shared data directory (vocab/, data/e2e/valid.txt)")
    parser.add_argument("--model_card", default="gpt2.md", help="model size (gpt2.md)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step and GPU (8)")
    parser.add_argument("--warmup", type=int, default=600,
                        help="steps not timed (600: one epoch of E2E valid, so that the CUDA graphs of every batch "
                             "shape are captured and the blocks compiled before timing; a multiple of 20)")
    parser.add_argument("--steps", type=int, default=400, help="steps timed (400, a multiple of 20)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated (fp32,bf16)")
    parser.add_argument("--modes", default="eager,graph",
                        help=f"comma-separated, of {', '.join(MODES)} (eager,graph)")
    parser.add_argument("--layouts", default="packed",
                        help="comma-separated batch layouts of the CUDA-graph modes: packed (gpt2_ft.py's), "
                             "padded (one example a row) (packed)")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated LoRA variants, of {', '.join(VARIANTS)}: default is the paper's q,v; "
                             "qkvo: --lora_targets q,k,v,o; dora: --dora on q,v; ... (default)")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when there is one)")
    parser.add_argument("--baseline", choices=("auto", "on", "off"), default="auto",
                        help="also time transformers + peft (bench/hf_baseline.py train) at each precision, same "
                             "data, same run, and give our rows' speed-up over it; auto: on a GPU in one process")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as json lines, not a table (how the rows' own processes answer)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.warmup % LOG_EVERY or opts.steps % LOG_EVERY:
        parser.error(f"--warmup and --steps must be multiples of {LOG_EVERY}")
    unknown = [v for v in opts.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {', '.join(unknown)} (of {', '.join(VARIANTS)})")
    combinations = [(mode, layout, precision, variant) for variant in opts.variants.split(",")
                    for mode in opts.modes.split(",")
                    for layout in (opts.layouts.split(",") if mode != "eager" else ["padded"])
                    for precision in opts.precisions.split(",")]
    if len(combinations) > 1 and "LOCAL_RANK" not in os.environ:
        # One process a row: each row's peak memory and compiled code are its own.
        rows = [row for combination in combinations for row in run_row_process(opts, combination)]
        print_table(opts, rows, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", 1,
                    baseline_rows(opts))
        return
    ctx = setup_distributed(opts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "valid.jsonl")
        small_valid = os.path.join(tmp, "valid8.jsonl")
        if ctx.is_main:
            records = encode_e2e_valid(opts.shared, data)
            with open(small_valid, "w") as out:
                out.writelines(json.dumps(r) + "\n" for r in records[:8])
        if ctx.distributed:
            torch.distributed.barrier()
            paths = [data, small_valid]
            torch.distributed.broadcast_object_list(paths, src=0)  # every rank reads rank 0's files
            data, small_valid = paths
        for mode, layout, precision, variant in combinations:
            work = os.path.join(tmp, f"run-{mode}-{layout}-{precision}-{variant}")
            result = measure(ctx, data, small_valid, work, opts.model_card, precision, opts.batch,
                             opts.warmup, opts.steps, mode, layout, variant)
            rows.append((mode, layout, precision, variant, result))
    if ctx.is_main and opts.json:
        for row in rows:
            print("ROW " + json.dumps(row))
    elif ctx.is_main:
        print_table(opts, rows, torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
                    ctx.world_size, baseline_rows(opts) if not ctx.distributed else {})
    cleanup(ctx)


def run_row_process(opts, combination):
    mode, layout, precision, variant = combination
    cmd = [sys.executable, os.path.abspath(__file__), "--shared", opts.shared, "--model_card", opts.model_card,
           "--batch", str(opts.batch), "--warmup", str(opts.warmup), "--steps", str(opts.steps),
           "--modes", mode, "--layouts", layout, "--precisions", precision, "--variants", variant, "--json"]
    if opts.device:
        cmd += ["--device", opts.device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    print(f"done: {mode} {layout} {precision} {variant}", file=sys.stderr)
    return [tuple(json.loads(line[4:])) for line in done.stdout.splitlines() if line.startswith("ROW ")]


def wants_baseline(opts):
    if opts.baseline != "auto":
        return opts.baseline == "on"
    found = all(importlib.util.find_spec(name) for name in ("transformers", "peft"))
    return found and torch.cuda.is_available() and opts.model_card == "gpt2.md"


def baseline_rows(opts):
    """{precision: hf_baseline.py train's result} on the same E2E valid data (its own process), or {}."""
    if not wants_baseline(opts):
        return {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "valid.jsonl")
        encode_e2e_valid(opts.shared, data)
        for precision in opts.precisions.split(","):
            results[precision] = hf_baseline.run_in_own_process("train", "--data", data, "--precision", precision)
            print(f"done: transformers + peft {precision}", file=sys.stderr)
    return results


def print_table(opts, rows, device_name, world_size, baseline=None):
    """Our rows, after the baseline's (transformers + peft, dynamic padding, AdamW) where it ran; "vs
    baseline" is its ms/step over ours at the same precision."""
    baseline = baseline or {}
    print(f"\ngpt2_ft training step: {opts.model_card}, LoRA r=4 (variant: default = q,v), batch {opts.batch} x "
          f"{world_size} process(es), E2E valid as data, random weights, {device_name}, torch {torch.__version__}")
    print("| mode | variant | batch layout | precision | ms/step (median) | ms/step (mean, captures included) | "
          "GPU ms/step (replays, median) | tokens/s | peak memory (after warm-up) | CUDA graphs | "
          "one-time seconds (compile, captures) | vs baseline (same precision) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for precision, b in baseline.items():
        print(f"| transformers + peft (bench/hf_baseline.py) | q,v | padded | {precision} | {b['ms_per_step']:.2f} | "
              f"| | {b['tokens_per_s']:,.0f} | {b['peak_gib']:.2f} GiB | | | 1.0x |")
    for mode, layout, precision, variant, r in rows:
        replay = f"{r['replay_ms']:.2f}" if r.get("replay_ms") else ""
        steady = f" ({r['steady_peak']:.2f})" if r.get("steady_peak") else ""
        ratio = f"{baseline[precision]['ms_per_step'] / r['ms']:.1f}x" if precision in baseline else ""
        print(f"| {mode} | {variant} | {layout} | {precision} | {r['ms']:.2f} | {r['mean_ms']:.2f} | {replay} | "
              f"{r['tokens']:,.0f} | {r['peak']:.2f} GiB{steady} | {r['graphs']} | {r['startup']:.0f} | {ratio} |")
    print("(original, SPEC 11: 285 ms/step fp32 padded to 512)")


if __name__ == "__main__":
    main()
