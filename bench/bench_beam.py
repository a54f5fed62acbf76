"""GPU benchmark of gpt2_beam.py over the whole E2E test file, end to end.

    python bench/bench_beam.py --test_txt ../shared/data/e2e/test.txt --vocab ../shared/vocab
    python bench/bench_beam.py --data data/e2e/test.jsonl           # an encoded jsonl instead

Each row runs `python src/gpt2_beam.py` as a user would (process start, CUDA init, model build, loading the
weights, reading the data, beam search, writing the output): gpt2.md with random weights (they rarely emit
EOS, so every context runs all eval_len steps: the worst case), beam 10, eval_len 64, the E2E recipe's other
flags. The weights are read from files as scripts/beam_e2e.sh reads them (`--weights file`, default): the
base model as the hub's fp32 pytorch_model.bin (1.4 GB for gpt2.md) and a LoRA checkpoint (r = 4 on q, v)
merged into it; written once before the timed rows (the operating system's file cache then holds them, as
it would after the download or the training run). It prints one
table: wall seconds end to end, the beam search's own seconds and distinct contexts per second, and how many
output lines differ from the first row's of the same precision (the batch size may not change the output;
bf16 may, at near-ties between batch sizes). On a GPU the table opens with the baseline,
transformers' generate over the same contexts with the same beam settings (bench/hf_baseline.py, timed in the
same run, without its model load), and gives each of our rows' speed-up over it (--baseline).
"""

import argparse
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))



def encode_e2e(test_txt, vocab, out_path):
    """Raw E2E `MR||text` lines -> encoded jsonl, as format_converting_e2e.py + gpt2_encode.py --add_bos
    --add_eos write it."""
    from loranlg.encode import encode_pairs
    from loranlg.formats import e2e_examples
    from loranlg.tokenizer import GPT2BPE

    pairs = [(ex["context"], ex["completion"]) for ex in e2e_examples(test_txt)]
    records = encode_pairs(GPT2BPE(vocab), pairs, add_bos=True, add_eos=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return len(records)


def write_checkpoints(work_dir, card, end_at=None):
    """Random base weights under the hub's key names (`wte.weight`, `h.0.attn.c_attn.weight`, ...) and a
    LoRA checkpoint of rank 4 with nonzero B (so that merging changes the weights); returns gpt2_beam.py's
    flags that load them. end_at: from this position on, every position embedding also points at the
    embedding of "\n\n" (628, an EOS id of the recipe), so that hypotheses end there or soon after, as a
    trained model's do, instead of running eval_len steps."""
    import torch
    from loranlg.checkpoint import save_lora
    from loranlg.model import build_model

    torch.manual_seed(0)
    model = build_model(card, lora_dim=4, lora_alpha=32)
    if end_at is not None:
        with torch.no_grad():
            eos = model.transformer.wte.weight[628]
            model.transformer.wpe.weight[end_at:] += 1000 * eos / eos.norm()  # dwarfs 24 random layers
    base = os.path.join(work_dir, "pytorch_model.bin")
    torch.save({k: v for k, v in model.transformer.state_dict().items() if "lora_" not in k}, base)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.01)
    lora = os.path.join(work_dir, "lora.pt")
    save_lora(model, lora)
    return ["--init_checkpoint", base, "--lora_checkpoint", lora, "--lora_dim", "4", "--lora_alpha", "32"]


def run_once(data, work_dir, batch_size, precision, args):
    output_file = f"beam_b{batch_size}_{precision}.jsonl"
    cmd = [sys.executable, str(REPO / "src" / "gpt2_beam.py"), "--data", data, "--work_dir", work_dir,
           "--output_file", output_file, "--model_card", args.model_card,
           "--batch_size", str(batch_size), "--precision", precision, "--beam", str(args.beam),
           "--eval_len", str(args.eval_len), "--seq_len", "512", "--length_penalty", "0.8",
           "--no_repeat_ngram_size", "4", "--repetition_penalty", "1.0", "--eos_token_id", "628"]
    cmd += args.weight_args
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"gpt2_beam.py failed:\n{done.stderr[-3000:]}")
    found = re.search(r"beam: (\d+) distinct contexts \((\d+) lines\) in ([\d.]+) s", done.stderr)
    contexts, lines, seconds = int(found[1]), int(found[2]), float(found[3])
    output = pathlib.Path(work_dir) / output_file
    return dict(wall=wall, beam=seconds, contexts=contexts, lines=lines,
                predictions=output.read_text().splitlines())


def run_baseline(data, precision, args):
    """hf_baseline.py beam's result over the same contexts, beams and length (its own process)."""
    import hf_baseline  # bench/, beside this script

    result = hf_baseline.run_in_own_process("beam", "--data", data, "--precision", precision, "--beam", args.beam,
                                            "--eval_len", args.eval_len)
    print(f"done: transformers generate {precision}", file=sys.stderr)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test_txt", help="raw E2E test.txt (MR||text a line); needs --vocab")
    parser.add_argument("--vocab", help="GPT-2 vocabulary directory (encoder.json + vocab.bpe)")
    parser.add_argument("--data", help="an encoded jsonl instead of --test_txt")
    parser.add_argument("--model_card", default="gpt2.md")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--eval_len", type=int, default=64)
    parser.add_argument("--batch_sizes", default="32,128",
                        help="comma-separated distinct contexts per batch (128 in fp32 needs about 55 GB)")
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--weights", default="file", choices=("file", "random"),
                        help="file: load base + LoRA checkpoints written before the timed rows (default); random: "
                             "gpt2_beam.py's seeded random weights, no file read")
    parser.add_argument("--end_at", type=int, default=None, metavar="POSITION",
                        help="with --weights file: weights whose hypotheses end from this position on (E2E test "
                             "contexts have 21-47 tokens: 60 ends most after 15-40 steps), so that contexts finish "
                             "early and leave the batch as with a trained model (default: never)")
    parser.add_argument("--baseline", choices=("auto", "on", "off"), default="auto",
                        help="also time transformers' generate (bench/hf_baseline.py beam, 16 contexts a call) at each "
                             "precision, same contexts, same run, and give our rows' speed-up over it (beam search "
                             "alone: its time leaves out the model load); auto: on a GPU, gpt2.md, without --end_at "
                             "(its random weights never end early)")
    args = parser.parse_args()
    if args.end_at is not None and args.weights != "file":
        parser.error("--end_at changes the weights written to files: it needs --weights file")
    if args.end_at is not None and args.baseline == "on":
        parser.error("the baseline's weights do not end early: --baseline on and --end_at do not go together")
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no GPU!)"
    if args.baseline == "auto":
        found = importlib.util.find_spec("transformers") is not None
        args.baseline = "on" if (found and torch.cuda.is_available() and args.model_card == "gpt2.md"
                                 and args.end_at is None) else "off"

    with tempfile.TemporaryDirectory() as work_dir:
        data = args.data
        if data is None:
            if not (args.test_txt and args.vocab):
                parser.error("give --data, or --test_txt and --vocab")
            data = os.path.join(work_dir, "test.jsonl")
            encode_e2e(args.test_txt, args.vocab, data)
        args.weight_args = (write_checkpoints(work_dir, args.model_card, args.end_at) if args.weights == "file"
                            else [])
        baseline = {}
        for precision in args.precisions.split(",") if args.baseline == "on" else []:
            if precision in ("fp32", "bf16"):  # what hf_baseline.py runs
                baseline[precision] = run_baseline(data, precision, args)
        rows = []
        for precision in args.precisions.split(","):
            for batch_size in map(int, args.batch_sizes.split(",")):
                rows.append((precision, batch_size, run_once(data, work_dir, batch_size, precision, args)))
                print(f"done: {precision} batch {batch_size}", file=sys.stderr)

    first = {}
    weights = "random weights read from a .bin + LoRA file" if args.weights == "file" else "random weights (no file)"
    if args.weights == "file" and args.end_at is not None:
        weights += f", hypotheses ending from position {args.end_at} on"
    print(f"\n{args.model_card}, {weights}, beam {args.beam}, eval_len {args.eval_len}, "
          f"{rows[0][-1]['lines']} lines / {rows[0][-1]['contexts']} distinct contexts; {device}\n")
    print("| implementation | precision | --batch_size | end to end (s) | "
          "beam search (s) | contexts/s | vs baseline (beam search alone) | lines differing |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, b in baseline.items():
        print(f"| transformers generate (bench/hf_baseline.py) | {precision} | 16 | (not counted) | "
              f"{b['seconds']:.1f} | {b['contexts_per_s']:.1f} | 1.0x | |")
    for precision, batch_size, r in rows:
        reference = first.setdefault(precision, r["predictions"])
        differing = sum(a != b for a, b in zip(reference, r["predictions"]))
        ratio = f"{baseline[precision]['seconds'] / r['beam']:.1f}x" if precision in baseline else ""
        print(f"| ours (gpt2_beam.py) | {precision} | {batch_size} | "
              f"{r['wall']:.1f} | {r['beam']:.1f} | {r['contexts'] / r['beam']:.1f} | {ratio} | {differing} |")


if __name__ == "__main__":
    main()
