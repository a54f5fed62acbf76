"""Where the GPU waits inside gpt2_ft.py's own loop: after the warm-up, a few CUDA-graph steps of the real
training loop (bench_train.py's run, graph+compile, bf16) run under the profiler; prints the GPU's busy time
per step against the whole span, and the idle gaps between kernels grouped by the kernels on either side.

    python bench/trace_train.py [--shared ../shared] [--warmup 600] [--traced 40]

The profiler's own host work stretches the span: compare the gaps between each other, not the span with
bench_train.py's ms/step.
"""

import argparse
import json
import os
import sys
import tempfile
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import bench_train  # noqa: E402  (puts src/ on the path)
from loranlg.distributed import setup_distributed  # noqa: E402


class TraceSteps(bench_train.StepHook):
    """While active: the profiler runs over graphed steps warmup + 1 .. warmup + traced."""

    def __init__(self, warmup, traced):
        self.warmup, self.traced, self.calls, self.profiler = warmup, traced, 0, None

    def call(self, original, step, batch):
        self.calls += 1
        if self.calls == self.warmup + 1:
            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.start()
        loss = original(step, batch)
        if self.calls == self.warmup + self.traced:
            torch.cuda.synchronize()
            self.profiler.stop()
        return loss


def gaps_between_kernels(kernels):
    """kernels: (start, end, name) sorted by start (us). Returns (busy us, [(gap us, name before, name after)])."""
    busy, gaps = 0.0, []
    run_start, run_end, last = None, None, None
    for start, end, name in kernels:
        if run_end is not None and start > run_end:
            busy += run_end - run_start
            gaps.append((start - run_end, last, name))
            run_start = None
        if run_start is None:
            run_start, run_end = start, end
        run_end = max(run_end, end)
        last = name
    if run_start is not None:
        busy += run_end - run_start
    return busy, gaps


def print_report(events, steps, top=15):
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    if not kernels:
        sys.exit("the profiler saw no GPU kernels")
    busy, gaps = gaps_between_kernels(kernels)
    span = kernels[-1][1] - kernels[0][0]
    print(f"span {span / steps / 1000:.3f} ms/step, GPU busy {busy / steps / 1000:.3f} ms/step, "
          f"{len(kernels) / steps:.0f} kernels/step")
    by_kind = {}
    for gap, before, after in gaps:
        total = by_kind.setdefault((before[:50], after[:50]), [0.0, 0])
        total[0] += gap
        total[1] += 1
    print("| idle us/step | gaps/step | kernel before | kernel after |")
    print("|---|---|---|---|")
    for (before, after), (gap, count) in sorted(by_kind.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| {gap / steps:.1f} | {count / steps:.1f} | {before} | {after} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("LORANLG_SHARED", os.path.join(bench_train.REPO, "..",
                                                                                          "shared")),
                        help="the shared data directory (vocab/, data/e2e/valid.txt)")
    parser.add_argument("--warmup", type=int, default=600, help="steps before the trace (600: every shape captured)")
    parser.add_argument("--traced", type=int, default=40, help="steps traced (40)")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("trace_train.py needs a CUDA GPU (it traces CUDA-graph steps)")
    ctx = setup_distributed(types.SimpleNamespace(local_rank=None, device=None))
    with tempfile.TemporaryDirectory() as tmp, TraceSteps(opts.warmup, opts.traced) as tracer:
        data, small_valid = os.path.join(tmp, "valid.jsonl"), os.path.join(tmp, "valid8.jsonl")
        records = bench_train.encode_e2e_valid(opts.shared, data)
        with open(small_valid, "w") as out:
            out.writelines(json.dumps(r) + "\n" for r in records[:8])
        # the traced windows are slowed by the profiler: time 200 more steps, so that the median window is not one
        steps = -(-opts.traced // bench_train.LOG_EVERY) * bench_train.LOG_EVERY + 200
        result = bench_train.measure(ctx, data, small_valid, os.path.join(tmp, "work"), "gpt2.md", "bf16", 8,
                                     opts.warmup, steps, "graph+compile")
    print(f"loop {result['ms']:.2f} ms/step (median window), replays {result['replay_ms']:.2f} ms (GPU)")
    print_report(tracer.profiler.events(), opts.traced)


if __name__ == "__main__":
    main()
