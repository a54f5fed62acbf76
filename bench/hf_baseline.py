"""The baseline our GPU figures are compared with: transformers' GPT-2 + peft LoRA, the way most people
would write it today (dynamic padding, AdamW, bf16 autocast, model.generate for beam search).

    python bench/hf_baseline.py train --data E2E_ENCODED.jsonl [--precision bf16] [--steps 50]
    python bench/hf_baseline.py beam  --data E2E_TEST_ENCODED.jsonl [--precision bf16] [--batch 16]

It needs a GPU, transformers and peft; weights are random (GPT-2 medium shapes), like ours in bench_*.py.
bench_train.py and bench_beam.py run it in their own run and put its row in their table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def run_in_own_process(*args):
    """`python hf_baseline.py *args` in a process of its own (its memory and compiled state apart from ours):
    its result line as a dict; the run stops with the baseline's error if it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_examples(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def hf_model(precision, lora):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_embd=1024, n_layer=24, n_head=16, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    dtype = torch.bfloat16 if precision == "bf16" and not lora else torch.float32
    return model.to("cuda", dtype)


def train_batches(examples, batch_size):
    for start in range(0, len(examples) - batch_size + 1, batch_size):
        chunk = examples[start:start + batch_size]
        seqs = [ex["context"] + ex["completion"] for ex in chunk]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for row, (ex, seq) in enumerate(zip(chunk, seqs)):
            ids[row, :len(seq)] = torch.tensor(seq)
            start_label = len(ex["context"])
            labels[row, start_label:len(seq)] = torch.tensor(seq[start_label:])
        yield ids.cuda(), labels.cuda(), sum(map(len, seqs))  # the last: real tokens, as bench_train.py counts


def bench_train(args):
    model = hf_model(args.precision, lora=True)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    batches = list(train_batches(read_examples(args.data), 8))
    times, tokens = [], 0
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        ids, labels, real_tokens = batches[step % len(batches)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append((time.perf_counter() - t0) * 1000)
            tokens += real_tokens
    ms = statistics.median(times)
    print(json.dumps({"impl": "transformers+peft", "precision": args.precision, "ms_per_step": round(ms, 2),
                      "tokens_per_s": round(tokens / (sum(times) / 1000)),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))


def bench_beam(args):
    model = hf_model(args.precision, lora=False).eval()
    examples = read_examples(args.data)
    contexts = list(dict.fromkeys(tuple(ex["context"]) for ex in examples))
    if args.contexts:
        contexts = contexts[:args.contexts]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(contexts), args.batch):
            chunk = contexts[start:start + args.batch]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), 50256, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, ctx in enumerate(chunk):  # left padding, as generate() wants
                ids[row, width - len(ctx):] = torch.tensor(ctx)
                mask[row, width - len(ctx):] = 1
            model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), num_beams=args.beam,
                           max_new_tokens=args.eval_len, no_repeat_ngram_size=4, length_penalty=0.8,
                           eos_token_id=[50256, 628], pad_token_id=0, do_sample=False, early_stopping=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(json.dumps({"impl": "transformers generate", "precision": args.precision, "contexts": len(contexts),
                      "seconds": round(seconds, 2), "contexts_per_s": round(len(contexts) / seconds, 2)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["train", "beam"], help="which baseline to time")
    parser.add_argument("--data", required=True, help="encoded E2E jsonl ({'context': ids, 'completion': ids})")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                        help="train: bf16 autocast over fp32 weights; beam: bf16 weights")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    parser.add_argument("--batch", type=int, default=16, help="contexts per generate() call")
    parser.add_argument("--beam", type=int, default=10, help="beams a context (the E2E recipe's 10)")
    parser.add_argument("--eval_len", type=int, default=64, help="tokens generated at most (the recipe's 64)")
    parser.add_argument("--contexts", type=int, default=0, help="time only the first N distinct contexts (0: all)")
    args = parser.parse_args()
    (bench_train if args.what == "train" else bench_beam)(args)


if __name__ == "__main__":
    main()
