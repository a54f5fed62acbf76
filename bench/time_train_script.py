"""Wall time of `bash scripts/train_e2e.sh` at the paper recipe's size, and where it goes.

    python bench/time_train_script.py [--shared DIR] [--precision bf16] [--copies 9] [--work DIR] [--keep]
                                      [-- flags for train_e2e.sh, e.g. -- -- --max_step 2000 for gpt2_ft.py]
    python bench/time_train_script.py --table WORK_DIR/run      the table of an earlier run again

The E2E train split is not in the shared data: the training file is E2E valid.txt encoded (4,672 lines),
repeated --copies times (9: 42,048 lines, 26,280 steps in 5 epochs, as the measurement of issue 24); the
validation file is valid.txt itself. The base weights are random, in the hub's layout and file format
(pytorch_model.bin, as scripts/download_pretrained_checkpoints.sh leaves it), written before the timed run.
The script then runs as a user runs it (torchrun, the recipe's flags, train.log, train.done), each line of its
output stamped with the seconds since the start (WORK/timed.log), and prints:

  start-up          until the run's "CUDA graphs:" / "torch.compile:" lines (imports, data, weights)
  first 100 steps   until the step-100 log line (compilation, CUDA-graph captures)
  steps 101..N      metrics.jsonl's per-update ms summed (the loop's time less saves and validations)
  validations       the "| Eval ... | time: X s" lines summed
  saves and rest    the rest of the loop (checkpoint saves, log lines)
  end               from "End of training" to the script's exit (last save, writes, process exit)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

STEP_LINE = re.compile(r"^\| epoch +\d+ step +(\d+) \|")
EVAL_LINE = re.compile(r"^\| Eval +\d+ at step +\d+ \| time: +([\d.]+)s")
READY_LINE = re.compile(r"^(CUDA graphs: (on|off)|torch\.compile: )")
LOGGED_STEPS = 100  # the first log line (--log_interval 100 of the recipe)


def default_shared():
    for path in (os.environ.get("LORANLG_SHARED"), os.path.join(REPO, ".gpu_shared"), os.path.join(REPO, "shared"),
                 os.path.join(REPO, "..", "shared")):
        if path and os.path.isfile(os.path.join(path, "data", "e2e", "valid.txt")):
            return path
    return os.path.join(REPO, "..", "shared")


def write_data(shared, data_dir, copies):
    """data_dir/valid.jsonl (E2E valid.txt encoded as gpt2_encode.py --add_bos --add_eos writes it) and
    data_dir/train.jsonl (it, `copies` times). Returns the training lines."""
    from loranlg.encode import encode_pairs
    from loranlg.formats import e2e_examples
    from loranlg.tokenizer import GPT2BPE

    pairs = [(ex["context"], ex["completion"]) for ex in e2e_examples(os.path.join(shared, "data", "e2e", "valid.txt"))]
    lines = [json.dumps(r) + "\n" for r in encode_pairs(GPT2BPE(os.path.join(shared, "vocab")), pairs,
                                                        add_bos=True, add_eos=True)]
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "valid.jsonl"), "w", encoding="utf-8") as out:
        out.writelines(lines)
    with open(os.path.join(data_dir, "train.jsonl"), "w", encoding="utf-8") as out:
        out.writelines(lines * copies)
    return len(lines) * copies


def write_hub_weights(path, card="gpt2.md"):
    """Random GPT-2 weights under the hub's key names (`wte.weight`, `h.0.attn.c_attn.weight`, ...)."""
    import torch
    from loranlg.model import build_model

    torch.manual_seed(0)
    model = build_model(card, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.save({k: v.cpu() for k, v in model.transformer.state_dict().items()}, path)


def run_timed(command, log_path, env):
    """Run `command`, its stdout and stderr stamped line by line with the seconds since the start (written to
    log_path as they come). Returns (exit status, [(seconds, line)]) with the exit's time as the last entry."""
    stamped = []
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO) as process:
        for line in process.stdout:
            seconds = time.monotonic() - start
            stamped.append((seconds, line.rstrip("\n")))
            log.write(f"{seconds:10.3f} | {line}")
            log.flush()
        status = process.wait()
        stamped.append((time.monotonic() - start, "(exit)"))
        log.write(f"{stamped[-1][0]:10.3f} | (exit {status})\n")
    return status, stamped


def read_stamped(path):
    stamped = []
    with open(path, encoding="utf-8") as log:
        for line in log:
            seconds, _, text = line.rstrip("\n").partition(" | ")
            stamped.append((float(seconds), "(exit)" if text.startswith("(exit") else text))
    return stamped


def first(stamped, pattern, after=0.0):
    return next((t for t, line in stamped if t >= after and re.search(pattern, line)), None)


def last(stamped, pattern):
    return next((t for t, line in reversed(stamped) if re.search(pattern, line)), None)


def where_the_time_goes(stamped, metrics_path):
    """[(row, seconds, note)] from the stamped output and metrics.jsonl."""
    total = stamped[-1][0]
    first_step_line = first(stamped, STEP_LINE.pattern)
    ready = max((t for t, line in stamped if READY_LINE.search(line) and t <= (first_step_line or total)),
                default=None)
    logged = next((t for t, line in stamped if (m := STEP_LINE.search(line)) and int(m[1]) == LOGGED_STEPS), None)
    end = last(stamped, r"^End of training")
    if None in (ready, logged, end):
        sys.exit("the run's output lacks the start, the step-100 line or 'End of training' (see the timed log)")
    with open(metrics_path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    updates = [r for r in records if "ms" in r]
    steps = sum(r["ms"] for r in updates if r["step"] > LOGGED_STEPS) / 1000
    step_count = sum(1 for r in updates if r["step"] > LOGGED_STEPS)
    evals = [float(m[1]) for _, line in stamped if (m := EVAL_LINE.search(line))]
    saves = sum(1 for t, line in stamped if line.startswith("saving checkpoint ") and t < end)
    loaded = first(stamped, r"^trainable parameters: ")
    read = first(stamped, r"^rank 0 of ")
    rows = [("start-up", ready, "until the run's 'CUDA graphs:' / 'torch.compile:' lines")]
    if read is not None and loaded is not None and read <= loaded <= ready:
        rows += [("  imports, data read", read, "until 'rank 0 of N ...'"),
                 ("  model built, weights loaded", loaded - read, "until 'trainable parameters: ...'"),
                 ("  to the device, step set up", ready - loaded, "")]
    rows += [(f"first {LOGGED_STEPS} steps", logged - ready, "compilation, CUDA-graph captures"),
             (f"steps {LOGGED_STEPS + 1}..", steps,
              f"{step_count} steps, {1000 * steps / max(1, step_count):.2f} ms a step (metrics.jsonl)"),
             (f"validations ({len(evals)})", sum(evals), ", ".join(f"{e:.1f}" for e in evals) + " s"),
             (f"saves ({saves}) and the rest of the loop", (end - logged) - steps - sum(evals),
              "the loop less steps and validations"),
             ("end", total - end, "from 'End of training': the last save, its writing, process exit")]
    return rows, total


def print_table(rows, total, title):
    print(title)
    print(f"| {'where':<42} | {'seconds':>8} | {'share':>6} | note |")
    print(f"|{'-' * 44}|{'-' * 9}:|{'-' * 7}:|------|")
    for name, seconds, note in rows:
        print(f"| {name:<42} | {seconds:8.1f} | {100 * seconds / total:5.1f}% | {note} |")
    print(f"| {'total: the script, start to exit':<42} | {total:8.1f} | 100.0% | |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=default_shared(),
                        help="the shared data directory: vocab/ and data/e2e/valid.txt ($LORANLG_SHARED, "
                             ".gpu_shared, shared or ../shared, the first that exists)")
    parser.add_argument("--precision", default="bf16", help="train_e2e.sh --precision (bf16)")
    parser.add_argument("--copies", type=int, default=9,
                        help="valid.txt's examples repeated this many times as the training file (9: 42,048 lines)")
    parser.add_argument("--work", default=None, help="where data, weights and the run go (default: a temporary "
                                                      "directory, removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--table", metavar="RUN_DIR",
                        help="print the table of an earlier run (its timed.log beside RUN_DIR) and stop")
    parser.add_argument("--model_card", default="gpt2.md",
                        help="the size (gpt2.md; gpt2.tiny tries the script out on the CPU, with -- -- --device cpu)")
    argv, extra = sys.argv[1:], []
    if "--" in argv:  # the rest is train_e2e.sh's (its own `--` passes flags on to gpt2_ft.py)
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    opts = parser.parse_args(argv)
    if opts.table:
        run_dir = os.path.abspath(opts.table)
        rows, total = where_the_time_goes(read_stamped(os.path.join(os.path.dirname(run_dir), "timed.log")),
                                          os.path.join(run_dir, "metrics.jsonl"))
        print_table(rows, total, f"scripts/train_e2e.sh, {run_dir}")
        return
    work = opts.work or tempfile.mkdtemp(prefix="time-train-script-")
    os.makedirs(work, exist_ok=True)
    try:
        lines = write_data(opts.shared, os.path.join(work, "data"), opts.copies)
        weights = os.path.join(work, "pytorch_model.bin")
        write_hub_weights(weights, opts.model_card)
        command = ["bash", "scripts/train_e2e.sh", "--data_dir", os.path.join(work, "data"), "--init_checkpoint",
                   weights, "--model_card", opts.model_card, "--work_dir", os.path.join(work, "run"),
                   "--precision", opts.precision, "--force", *extra]
        print("running: " + " ".join(command), file=sys.stderr)
        status, stamped = run_timed(command, os.path.join(work, "timed.log"), dict(os.environ, PYTHONUNBUFFERED="1"))
        if status != 0:
            print("\n".join(line for _, line in stamped[-20:]), file=sys.stderr)
            sys.exit(f"train_e2e.sh failed (exit {status}); the whole output is in {work}/timed.log")
        rows, total = where_the_time_goes(stamped, os.path.join(work, "run", "metrics.jsonl"))
        import torch
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print_table(rows, total, f"scripts/train_e2e.sh on {device}, {opts.model_card} (random weights), {lines:,} training "
                                 f"lines, --precision {opts.precision}")
    finally:
        if opts.work is None and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif opts.work is None:
            print(f"kept: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
