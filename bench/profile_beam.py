"""Where beam search's time goes, two ways.

    python bench/profile_beam.py --shared DIR [--runs auto,auto,8:torchrun,128] [--format bin]
    python bench/profile_beam.py --data E2E_TEST_ENCODED.jsonl [--batch 128] [--precision bf16]

With --shared (default: $LORANLG_SHARED; it needs vocab/ and data/e2e/test.txt): `bash scripts/beam_e2e.sh`
end to end, as a user runs it, over the 630 distinct E2E test contexts, with gpt2.md random weights in the
hub layout (a 1.4 GB fp32 pytorch_model.bin, or model.safetensors with --format safetensors) and a LoRA file
(r = 4 on q, v) merged into them, bf16, beam 10, eval_len 64 (the recipe); the files are written first (the
operating system's file cache then holds them, as after a download). Each run passes `-- --timing` to
gpt2_beam.py and is one column of a table of seconds: Python's start-up, import, CUDA, the model's build,
reading the weights, merging, casting, the search's parts (the host's seconds, and the GPU's where they
differ), writing the output, the rest of the wall time (bash, a launcher, the process's exit), the end-to-end
wall time, and the output lines differing from the first run's. A run is BATCH[:LAUNCHER]: the batch size
(BEAM_BATCH_SIZE; auto is the script's default) and optionally LAUNCHER (8:torchrun is the default before
issue 24).

With --data: one batch of the search in this process, then the CUDA kernels (largest first) and the
operators' host time, so that launch- or sync-bound steps show.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "bench"))

TIMING_LINE = re.compile(r"^timing: (.+?)\s+([\d.]+)\s+([\d.]+|-)\s+(\d+)$")
SEARCH_LINE = re.compile(r"beam: (\d+) distinct contexts \((\d+) lines\) in ([\d.]+) s")


# ---------------------------------------------------------------- where the time goes, end to end

def write_inputs(work, shared, file_format):
    """DATA_DIR with test.jsonl, the base weights in the hub layout and a LoRA file: the script's settings."""
    import torch
    from safetensors.torch import save_file

    from bench_beam import encode_e2e, write_checkpoints

    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    encode_e2e(os.path.join(shared, "data", "e2e", "test.txt"), os.path.join(shared, "vocab"),
               os.path.join(data_dir, "test.jsonl"))
    flags = write_checkpoints(work, "gpt2.md")
    base, lora = flags[1], flags[3]
    released = os.path.join(work, "gpt2_md_lora_e2e.pt")  # the released file's name
    os.rename(lora, released)
    if file_format == "safetensors":
        state = torch.load(base, map_location="cpu", weights_only=True)
        os.remove(base)
        base = os.path.join(work, "gpt2-medium-model.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, base, metadata={"format": "pt"})
    return dict(DATA_DIR=data_dir, INIT_CHECKPOINT=base, CHECKPOINT=released, PRECISION="bf16", FORCE="1")


def run_script(work, settings, run):
    """One `bash scripts/beam_e2e.sh -- --timing`: (wall seconds, {part: (host, gpu)}, search seconds, note,
    output lines)."""
    batch, _, launcher = run.partition(":")
    work_dir = os.path.join(work, "run-" + run.replace(":", "-"))
    env = dict(os.environ, **settings, WORK_DIR=work_dir, BEAM_BATCH_SIZE=batch, LAUNCHER=launcher)
    cmd = ["bash", os.path.join(REPO, "scripts", "beam_e2e.sh"), "--", "--timing"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} ({run}) failed:\n{done.stderr[-3000:]}")
    text = done.stdout + done.stderr  # beam.sh tees gpt2_beam.py's stderr to its stdout (and beam.log)
    parts = {}
    for line in text.splitlines():
        found = TIMING_LINE.match(line)
        if found and found[1] != "part":
            parts[found[1]] = (float(found[2]), None if found[3] == "-" else float(found[3]))
    search = SEARCH_LINE.search(text)
    note = re.search(r"--batch_size auto: (.*)", text)
    output = [name for name in os.listdir(work_dir) if name.startswith("predict.")][0]
    with open(os.path.join(work_dir, output), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return dict(wall=wall, parts=parts, search=float(search[3]), note=note[1] if note else "", lines=lines)


def cell(host, gpu):
    if gpu is None or abs(gpu - host) < 0.05:
        return f"{host:.2f}"
    return f"{host:.2f} (GPU {gpu:.2f})"


def print_table(runs, results):
    names = []
    for result in results:
        names += [name for name in result["parts"] if name not in names and name != "total"]
    print("| part (seconds) | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for name in names:
        cells = [cell(*r["parts"][name]) if name in r["parts"] else "" for r in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    rows = {
        "outside gpt2_beam.py's main (bash, launcher, exit)":
            [f"{r['wall'] - r['parts']['total'][0]:.2f}" for r in results],
        "**end to end (wall)**": [f"**{r['wall']:.2f}**" for r in results],
        "search + output (gpt2_beam.py's own figure)": [f"{r['search']:.2f}" for r in results],
        "search alone (the search: rows)": [
            f"{sum(h for n, (h, _) in r['parts'].items() if n.startswith('search:')):.2f}" for r in results],
        "output lines differing from the first run's": [
            str(sum(a != b for a, b in zip(results[0]["lines"], r["lines"]))) for r in results],
    }
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    for run, result in zip(runs, results):
        if result["note"]:
            print(f"{run}: --batch_size auto: {result['note']}")


def gpu_name():
    """Asked of nvidia-smi: CUDA in this process would hold GPU memory that the runs' auto then lacks."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True)
    except OSError:
        return "no GPU"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "no GPU"


def where_the_time_goes(opts):
    device = gpu_name()
    runs = opts.runs.split(",")
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        settings = write_inputs(work, opts.shared, opts.format)
        print(f"inputs written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = []
        for run in runs:
            results.append(run_script(work, settings, run))
            print(f"done: {run}: {results[-1]['wall']:.1f} s", file=sys.stderr)
    print(f"\nscripts/beam_e2e.sh over the E2E test file (630 distinct contexts, 4,693 lines), gpt2.md random weights "
          f"({opts.format}, hub layout) + LoRA file, bf16, beam 10, eval_len 64; {device}; columns: "
          "BEAM_BATCH_SIZE[:LAUNCHER]\n")
    print_table([run.replace("auto", "auto (default)", 1) if i == 0 else run for i, run in enumerate(runs)], results)


# ---------------------------------------------------------------- one batch's kernels

def kernel_profile(opts):
    import torch

    from gpt2_beam import distinct_batches, load_decoder, read_contexts
    from loranlg.beam import BeamSettings, beam_search

    device = torch.device(opts.device)
    args = argparse.Namespace(model_card="gpt2.md", lora_dim=0, lora_alpha=128, init_checkpoint=None,
                              lora_checkpoint=None, precision=opts.precision)
    decoder = load_decoder(args, device)  # as gpt2_beam.py builds it (padded head included)
    contexts, _ = read_contexts(opts.data, 512, 64, 50257)
    batch = [list(c) for c in distinct_batches(contexts, opts.batch)[0]]
    settings = BeamSettings(beam=10, eval_len=64, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    beam_search(decoder, batch[:8], settings)  # warm-up
    synchronize()
    start = time.perf_counter()
    beam_search(decoder, batch, settings)
    synchronize()
    peak = f" (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)" if device.type == "cuda" else ""
    print(f"one batch of {len(batch)} contexts: {time.perf_counter() - start:.2f} s{peak}")
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        beam_search(decoder, batch, settings)
        synchronize()
    table = prof.key_averages()
    if device.type == "cuda":
        print(table.table(sort_by="cuda_time_total", row_limit=opts.top, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("LORANLG_SHARED"),
                        help="end to end: the shared data directory (vocab/, data/e2e/test.txt); default "
                             "$LORANLG_SHARED")
    parser.add_argument("--runs", default="auto,auto,8:torchrun,128",
                        help="end to end: BATCH[:LAUNCHER] per column, in order (default auto,auto,8:torchrun,128: "
                             "the default twice, the default before issue 24, batch 128)")
    parser.add_argument("--format", default="bin", choices=("bin", "safetensors"),
                        help="end to end: the base weights' file (default bin: pytorch_model.bin)")
    parser.add_argument("--data", help="kernels: an encoded jsonl with contexts (instead of --shared)")
    parser.add_argument("--batch", type=int, default=128, help="kernels: distinct contexts in the batch (128)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="kernels: (bf16)")
    parser.add_argument("--top", type=int, default=20, help="kernels: rows listed (20)")
    parser.add_argument("--device", default="cuda", help="kernels: (cuda)")
    opts = parser.parse_args()
    if opts.data:
        kernel_profile(opts)
    elif opts.shared:
        where_the_time_goes(opts)
    else:
        parser.error("give --shared (or set LORANLG_SHARED) for the end-to-end table, or --data for the kernels")


if __name__ == "__main__":
    main()
